/**
 * What the protobuf serializer tests (`test/otel/traceSerializer.test.ts`,
 * `logSerializer.test.ts`) share: a byte comparison that points at the first
 * difference, and fast-check arbitraries for what an exporter may be handed,
 * including what the SDK would not produce.
 */
import type { Attributes, HrTime } from '@opentelemetry/api';
import fc from 'fast-check';

/** Where two byte arrays first differ, -1 when they are equal (a diff of megabytes is of no use). */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : length;
}

export const optional = <T>(arbitrary: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(arbitrary, { nil: undefined });
/** Any UTF-16 code unit, lone surrogates included; mostly Latin-1 and around the surrogates. */
const codeUnit = fc
  .oneof(fc.integer({ min: 0x20, max: 0x17f }), fc.integer({ min: 0xd7f0, max: 0xe010 }), fc.integer({ min: 0, max: 0xffff }))
  .map((code) => String.fromCharCode(code));
export const text = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 20 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
  { weight: 1, arbitrary: fc.string({ unit: codeUnit, maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 10 }) },
  { weight: 1, arbitrary: fc.string({ minLength: 100, maxLength: 400 }) },
  // Long and mostly ASCII: the length may need one more byte than the characters suggest.
  { weight: 1, arbitrary: fc.string({ unit: fc.oneof({ weight: 8, arbitrary: fc.string({ minLength: 1, maxLength: 1 }) }, { weight: 1, arbitrary: codeUnit }), minLength: 60, maxLength: 200 }) },
);
const number = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.maxSafeInteger(),
  fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n).map(Number),
  fc.constantFrom(0, -0, -1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, -(2 ** 32), 2 ** 53, 2 ** 63, -(2 ** 63), 2 ** 64, -(2 ** 64), 0.5, NaN, Infinity),
);
export const { anyValue } = fc.letrec<{ anyValue: unknown }>((tie) => ({
  anyValue: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    text,
    fc.boolean(),
    number,
    fc.uint8Array({ maxLength: 20 }),
    fc.constantFrom(null, undefined),
    fc.array(tie('anyValue'), { maxLength: 4 }),
    fc.dictionary(text, tie('anyValue'), { maxKeys: 4 }),
  ),
}));
export const attributes = fc.dictionary(text, anyValue, { maxKeys: 8 }) as fc.Arbitrary<Attributes>;
/** Mostly valid hex (either case), sometimes anything: odd lengths, invalid characters, empty. */
export const hexId = (length: number): fc.Arbitrary<string> => fc.oneof(
  { weight: 6, arbitrary: fc.stringMatching(new RegExp(`^[0-9a-fA-F]{${length}}$`)) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: length + 3 }) },
);
export const count = fc.oneof({ weight: 6, arbitrary: fc.nat({ max: 300 }) }, { weight: 1, arbitrary: fc.constantFrom(undefined, NaN, -1, 1.5, 2 ** 32) });
export const hrTime = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.integer({ min: 0, max: 2 ** 33 }), fc.integer({ min: 0, max: 999_999_999 })) },
  { weight: 1, arbitrary: fc.tuple(fc.double({ min: 0, max: 2 ** 34, noNaN: true }), fc.double({ min: 0, max: 2e9, noNaN: true })) },
) as fc.Arbitrary<HrTime>;
export const resource = fc.record({ attributes: optional(attributes), schemaUrl: optional(text) });
export const scope = fc.record(
  { name: text, version: text, schemaUrl: text, attributes, droppedAttributesCount: count },
  { requiredKeys: ['name'] },
);
