/**
 * What the tests comparing the kit's SDK replacements with the SDK's own
 * (`test/otel/tracer.test.ts`, `logger.test.ts`) share: the diagnostics the
 * SDK logs, and fast-check arbitraries for the values, limits, times and
 * exceptions a caller may hand either.
 */
import { DiagLogLevel, diag, type Attributes, type HrTime, type TimeInput } from '@opentelemetry/api';
import fc from 'fast-check';
import { anyValue, attributes, optional, text } from './protobufFixtures';

/** Diagnostics as the SDK logs them: level and message (an `Error` argument's stack differs by caller). Collected from `collectDiagnostics()` on. */
export const diagnostics: string[] = [];

/** Sends every diagnostic to {@link diagnostics} for the test file's duration. */
export function collectDiagnostics(): void {
  beforeAll(() => {
    const record = (level: string) => (message: string, ...args: unknown[]) =>
      diagnostics.push(`${level} ${message} ${args.map((arg) => (arg instanceof Error ? `Error(${arg.message})` : Array.isArray(arg) ? 'a time' : JSON.stringify(arg))).join(' ')}`);
    diag.setLogger({ error: record('error'), warn: record('warn'), info: record('info'), debug: record('debug'), verbose: record('verbose') }, { logLevel: DiagLogLevel.ALL, suppressOverrideMessage: true });
  });
  afterAll(() => diag.disable());
}

/** Absolute times (an epoch in ms, a Date, an HrTime) and times relative to `performance.now()`. */
export const timeInput: fc.Arbitrary<TimeInput> = fc.oneof(
  fc.integer({ min: 1_600_000_000_000, max: 1_900_000_000_000 }),
  fc.integer({ min: 1_600_000_000_000, max: 1_900_000_000_000 }).map((ms) => new Date(ms)),
  fc.tuple(fc.integer({ min: 1_600_000_000, max: 1_900_000_000 }), fc.integer({ min: 0, max: 999_999_999 })) as fc.Arbitrary<HrTime>,
  fc.double({ min: 0, max: 1, noNaN: true }),
);
/** Mostly plain values (the common case the kit stores directly), sometimes anything. */
export const value = fc.oneof({ weight: 4, arbitrary: fc.oneof(text, fc.integer(), fc.double(), fc.boolean()) }, { weight: 2, arbitrary: anyValue }, { weight: 1, arbitrary: fc.constantFrom(undefined, null, Symbol('s'), () => 1, 10n, new Date(0)) });
export const key = fc.oneof({ weight: 6, arbitrary: fc.constantFrom('a', 'b', 'c', 'http.route', 'url.path') }, { weight: 2, arbitrary: text });
export const plainAttributes = fc.dictionary(key, value, { maxKeys: 6 }) as fc.Arbitrary<Attributes>;
export const someAttributes = fc.oneof(plainAttributes, attributes);
export const limit = fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 2, arbitrary: fc.nat({ max: 4 }) }, { weight: 1, arbitrary: fc.constantFrom(-1, Infinity) });
export const exception = fc.oneof(
  text,
  fc.record({ name: optional(text), message: optional(text), stack: optional(text), code: optional(fc.oneof(text, fc.integer())) }),
  fc.constantFrom(undefined, null, 0, ''),
);

/** Times implied by the clock (no explicit start, or a time relative to `performance.now()`) differ by the moments the two runs took. */
export class ClockTime {
  constructor(readonly ms: number) {}
}

export function clockTime(time: HrTime, exact: boolean): unknown {
  return exact ? time : new ClockTime(time[0] * 1e3 + time[1] / 1e6);
}

/**
 * Replaces the clock times of two views by one marker when they are within
 * a second of each other: both read the clock, at moments a slow or busy
 * host can set more than 100 ms apart (102.8 ms once in CI); a wrong clock
 * (seconds for milliseconds, the monotonic clock alone) is off by far more.
 */
export function settleClockTimes(a: unknown, b: unknown): void {
  if (typeof a !== 'object' || a === null || typeof b !== 'object' || b === null) return;
  for (const key of Object.keys(a)) {
    const x = (a as Record<string, unknown>)[key];
    const y = (b as Record<string, unknown>)[key];
    if (x instanceof ClockTime && y instanceof ClockTime) {
      if (Math.abs(x.ms - y.ms) <= 1000) (a as Record<string, unknown>)[key] = (b as Record<string, unknown>)[key] = 'clock';
    } else {
      settleClockTimes(x, y);
    }
  }
}

