/**
 * The kit's OTLP/protobuf trace serializer against the library's
 * `ProtobufTraceSerializer`: the same spans give the same bytes, for spans
 * made by the SDK and for generated span-like objects, odd values included.
 */
import path from 'node:path';
import fc from 'fast-check';
import * as protobuf from 'protobufjs';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Attributes, type HrTime, type SpanContext, type TraceState as ApiTraceState } from '@opentelemetry/api';
import { TraceState } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { EncodeAheadExporter } from '../../otel/otlpTraceExporter';
import { FastProtobufTraceSerializer } from '../../otel/traceSerializer';
import { attributes, count, firstDifference, hexId, hrTime, optional, resource, scope, text } from '../helpers/protobufFixtures';

const REMOTE_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const REMOTE_SPAN = '00f067aa0ba902b7';
const HUGE = 2_200_000;

function library(spans: ReadableSpan[]): Uint8Array {
  const bytes = ProtobufTraceSerializer.serializeRequest(spans);
  if (bytes === undefined) throw new Error('the library serialized nothing');
  return bytes;
}

function expectSameBytes(spans: ReadableSpan[]): Uint8Array {
  const expected = library(spans);
  const actual = FastProtobufTraceSerializer.serializeRequest(spans);
  expect({ length: actual.length, firstDifference: firstDifference(actual, expected) }).toEqual({ length: expected.length, firstDifference: -1 });
  return actual;
}

function provider(resource: Resource): { provider: TracerProvider; exporter: InMemorySpanExporter } {
  const exporter = new InMemorySpanExporter();
  return { provider: new TracerProvider({ resource, spanProcessors: [new SimpleSpanProcessor({ exporter })] }), exporter };
}

const HTTP_ATTRIBUTES: Attributes = {
  'http.request.method': 'GET',
  'url.scheme': 'http',
  'url.path': '/items/42',
  'server.address': 'shop.example',
  'server.port': 8080,
  'client.address': '203.0.113.9',
  'network.peer.address': '10.0.0.7',
  'network.peer.port': 51234,
  'network.protocol.version': '1.1',
  'user_agent.original': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
  'http.response.status_code': 200,
  'http.route': '/items/:id',
};

/** A span whose scope carries attributes, which the SDK's tracers cannot give (the serializer reads them). */
function withScope(span: ReadableSpan, scope: object): ReadableSpan {
  return Object.create(span, { instrumentationScope: { value: scope } }) as ReadableSpan;
}

/** Real spans from two providers (two resources, one with a schema URL) and several scopes, interleaved. */
function realSpans(): ReadableSpan[] {
  const checkout = provider(resourceFromAttributes({ 'service.name': 'checkout', 'service.version': '1.4.2', 'host.name': 'node-1' }, { schemaUrl: 'https://opentelemetry.io/schemas/1.27.0' }));
  const billing = provider(resourceFromAttributes({ 'service.name': 'billing', 'deployment.environment.name': 'production' }));
  const http = checkout.provider.getTracer('kit-http', '1.0.0', { schemaUrl: 'https://opentelemetry.io/schemas/1.26.0' });
  const koa = checkout.provider.getTracer('@opentelemetry/instrumentation-koa');
  const billingHttp = billing.provider.getTracer('kit-http', '1.0.0');

  const server = http.startSpan('GET /items/:id', { kind: SpanKind.SERVER, attributes: HTTP_ATTRIBUTES }, ROOT_CONTEXT);
  server.end();

  const remoteParent: SpanContext = {
    traceId: REMOTE_TRACE,
    spanId: REMOTE_SPAN,
    traceFlags: TraceFlags.SAMPLED,
    isRemote: true,
    traceState: new TraceState('vendor=opaque-value,other=1'),
  };
  const child = http.startSpan('POST /orders', { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'POST' } }, trace.setSpanContext(ROOT_CONTEXT, remoteParent));
  child.addEvent('cache miss', { 'cache.key': 'order:42', 'cache.hits': 0, 'cache.ratio': 0.25, 'cache.warm': false });
  child.addEvent('retrying');
  child.recordException(new Error('upstream refused'));
  child.setStatus({ code: SpanStatusCode.ERROR, message: 'upstream refused' });
  child.end();

  const serverContext = trace.setSpan(ROOT_CONTEXT, server);
  const linked = koa.startSpan('middleware - handler', {
    links: [
      { context: remoteParent, attributes: { 'link.reason': 'batch', 'link.index': 3 } },
      { context: { traceId: REMOTE_TRACE.toUpperCase(), spanId: REMOTE_SPAN.toUpperCase(), traceFlags: TraceFlags.NONE } },
    ],
  }, serverContext);
  linked.addLink({ context: server.spanContext(), attributes: { added: 'later' } });
  linked.setStatus({ code: SpanStatusCode.OK });
  linked.end();

  const values = koa.startSpan('valeurs réglées ✓ 東京 🚀', {
    kind: SpanKind.INTERNAL,
    attributes: {
      'ville': 'Zürich',
      'ключ': 'значение',
      'emoji': '🚀🎉',
      'max.safe': Number.MAX_SAFE_INTEGER,
      'big.int': 2 ** 62,
      'beyond.int64': 2 ** 63,
      'huge.double': 1e300,
      'negative': -1,
      'negative.big': -(2 ** 40),
      'min.int64': -(2 ** 63),
      'float': 3.14159,
      'negative.float': -0.5,
      'nan': NaN,
      'infinity': -Infinity,
      'negative.zero': -0,
      'true': true,
      'false': false,
      'strings': ['a', '', 'ü'],
      'numbers': [1, -2, 2.5],
      'booleans': [true, false],
      'mixed': ['x', 1, null, { k: 'v' }],
      'empty.array': [],
      'nested': { a: { b: [1, { c: 'd' }] }, 'é': 'ê', n: null },
      'empty.object': {},
      'bytes': new Uint8Array([0, 1, 127, 128, 255]),
      'empty.bytes': new Uint8Array(0),
      'empty.string': '',
      'null': null,
    },
  }, serverContext);
  values.end();

  const bare = koa.startSpan('no attributes', {}, serverContext);
  bare.end();

  for (const kind of [SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER]) {
    const span = billingHttp.startSpan(`kind ${kind}`, { kind, attributes: { 'peer.service': 'ledger' } }, ROOT_CONTEXT);
    span.end();
  }

  const [serverSpan, childSpan, linkedSpan, valuesSpan, bareSpan] = checkout.exporter.getFinishedSpans();
  const [clientSpan, producerSpan, consumerSpan] = billing.exporter.getFinishedSpans();
  const scoped = withScope(bareSpan!, { name: 'scoped', version: '2.0.0', schemaUrl: 'https://example.test/schema', attributes: { 'scope.attr': 'x', 'scope.n': 7 }, droppedAttributesCount: 2 });
  // Interleaved: resources and scopes come back in first-seen order, grouped by identity.
  return [clientSpan!, serverSpan!, producerSpan!, linkedSpan!, childSpan!, scoped, valuesSpan!, consumerSpan!, bareSpan!];
}

function serverSpans(count: number): ReadableSpan[] {
  const { provider: tracerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'bench', 'service.instance.id': 'worker-0' }));
  const tracer = tracerProvider.getTracer('kit-http', '1.0.0');
  for (let i = 0; i < count; i++) {
    const span = tracer.startSpan('GET /items/:id', { kind: SpanKind.SERVER, attributes: { ...HTTP_ATTRIBUTES, 'url.path': `/items/${i}` } }, ROOT_CONTEXT);
    span.end();
  }
  return exporter.getFinishedSpans();
}

describe('FastProtobufTraceSerializer, real spans', () => {
  test('server, remote-parent, event, link, error, non-ASCII and value-type spans in several resources and scopes', () => {
    expectSameBytes(realSpans());
  });

  test('each kind of span alone', () => {
    for (const span of realSpans()) expectSameBytes([span]);
  });

  test('an empty batch', () => {
    expect(FastProtobufTraceSerializer.serializeRequest([])).toHaveLength(0);
    expectSameBytes([]);
  });

  test('a batch of 512 server spans', () => {
    const bytes = expectSameBytes(serverSpans(512));
    expect(bytes.length).toBeGreaterThan(16384);
  });

  test('huge attributes: lengths of 1 to 4 bytes, the scratch buffer grows, and later batches are still right', () => {
    const { provider: tracerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'huge' }));
    const span = tracerProvider.getTracer('huge').startSpan('huge', {
      attributes: {
        small: 'x',
        medium: 'm'.repeat(300),
        large: 'l'.repeat(40_000),
        ascii: 'a'.repeat(HUGE),
        accents: 'é'.repeat(HUGE / 2 + 1),
        array: ['y'.repeat(HUGE), 'z'],
      },
    }, ROOT_CONTEXT);
    span.end();
    const bytes = expectSameBytes([...exporter.getFinishedSpans(), ...serverSpans(3)]);
    expect(bytes.length).toBeGreaterThan(3 * HUGE);
    expectSameBytes(realSpans());
    expectSameBytes(serverSpans(512));
  });

  test('a result is not changed by the next call', () => {
    const first = FastProtobufTraceSerializer.serializeRequest(realSpans());
    const snapshot = Buffer.from(first);
    const second = FastProtobufTraceSerializer.serializeRequest(serverSpans(64));
    expect(Buffer.from(first).equals(snapshot)).toBe(true);
    expect(second.buffer).not.toBe(first.buffer);
    expect(first.byteLength).toBe(first.buffer.byteLength);
  });

  test('the output is a valid ExportTraceServiceRequest', () => {
    const schema = protobuf.loadSync(path.join(__dirname, '../helpers/otlp-trace.proto'));
    const ExportRequest = schema.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest');
    const decoded = ExportRequest.toObject(ExportRequest.decode(FastProtobufTraceSerializer.serializeRequest(realSpans())), { longs: String, bytes: String, enums: Number, defaults: false });
    const hex = (base64: string): string => Buffer.from(base64, 'base64').toString('hex');
    const resources = decoded.resourceSpans as Array<{ resource: { attributes: Array<{ key: string }> }; schemaUrl?: string; scopeSpans: Array<{ scope: { name: string; version?: string }; schemaUrl?: string; spans: Array<Record<string, unknown>> }> }>;

    expect(resources.map((r) => r.resource.attributes.find((a) => a.key === 'service.name'))).toEqual([
      { key: 'service.name', value: { stringValue: 'billing' } },
      { key: 'service.name', value: { stringValue: 'checkout' } },
    ]);
    expect(resources.map((r) => r.schemaUrl)).toEqual([undefined, 'https://opentelemetry.io/schemas/1.27.0']);
    const checkout = resources[1]!;
    expect(checkout.scopeSpans.map((s) => [s.scope.name, s.spans.length, s.schemaUrl])).toEqual([
      ['kit-http', 2, 'https://opentelemetry.io/schemas/1.26.0'],
      ['@opentelemetry/instrumentation-koa', 3, undefined],
      ['scoped', 1, 'https://example.test/schema'],
    ]);
    const [server, child] = checkout.scopeSpans[0]!.spans;
    expect(server).toMatchObject({ name: 'GET /items/:id', kind: 2, flags: 0x101, status: {} });
    expect(child).toMatchObject({ traceState: 'vendor=opaque-value,other=1', flags: 0x301, status: { code: 2, message: 'upstream refused' } });
    expect(hex(child!.traceId as string)).toBe(REMOTE_TRACE);
    expect(hex(child!.parentSpanId as string)).toBe(REMOTE_SPAN);
    expect((child!.events as Array<{ name: string }>).map((e) => e.name)).toEqual(['cache miss', 'retrying', 'exception']);
    const linked = checkout.scopeSpans[1]!.spans[0]!;
    const links = linked.links as Array<{ traceId: string; spanId: string; flags: number; attributes?: unknown[] }>;
    expect(links.map((l) => [hex(l.traceId), hex(l.spanId), l.flags, l.attributes?.length])).toEqual([
      [REMOTE_TRACE, REMOTE_SPAN, 0x301, 2],
      [REMOTE_TRACE, REMOTE_SPAN, 0x100, undefined],
      [hex(server!.traceId as string), hex(server!.spanId as string), 0x101, 1],
    ]);
    const values = checkout.scopeSpans[1]!.spans[1]!;
    const attribute = (key: string): unknown => (values.attributes as Array<{ key: string; value: unknown }>).find((a) => a.key === key)?.value;
    expect(values.name).toBe('valeurs réglées ✓ 東京 🚀');
    expect(attribute('ville')).toEqual({ stringValue: 'Zürich' });
    expect(attribute('min.int64')).toEqual({ intValue: '-9223372036854775808' });
    expect(attribute('big.int')).toEqual({ intValue: (2n ** 62n).toString() });
    expect(attribute('beyond.int64')).toEqual({ doubleValue: 2 ** 63 });
    expect(attribute('float')).toEqual({ doubleValue: 3.14159 });
    expect(attribute('bytes')).toEqual({ bytesValue: Buffer.from([0, 1, 127, 128, 255]).toString('base64') });
    expect(attribute('nested')).toEqual({
      kvlistValue: {
        values: [
          { key: 'a', value: { kvlistValue: { values: [{ key: 'b', value: { arrayValue: { values: [{ intValue: '1' }, { kvlistValue: { values: [{ key: 'c', value: { stringValue: 'd' } }] } }] } } }] } } },
          { key: 'é', value: { stringValue: 'ê' } },
          { key: 'n', value: {} },
        ],
      },
    });
    expect(checkout.scopeSpans[2]!.scope).toEqual({ name: 'scoped', version: '2.0.0', attributes: [{ key: 'scope.attr', value: { stringValue: 'x' } }, { key: 'scope.n', value: { intValue: '7' } }], droppedAttributesCount: 2 });
  });

  test('deserializeResponse is the library\'s', () => {
    const response = Buffer.from([0x0a, 0x05, 0x08, 0x03, 0x12, 0x01, 0x78]);
    expect(FastProtobufTraceSerializer.deserializeResponse(response)).toEqual(ProtobufTraceSerializer.deserializeResponse(response));
    expect(FastProtobufTraceSerializer.deserializeResponse(response)).toEqual({ partialSuccess: { rejectedSpans: 3, errorMessage: 'x' } });
  });
});

// ---------------------------------------------------------------------------------------------
// Span-like objects: what an exporter may be handed, including what the SDK would not produce.

interface SpanShape {
  name: string;
  kind: number | null | undefined;
  context: ContextShape;
  parent: ContextShape | undefined;
  startTime: HrTime;
  endTime: HrTime;
  attributes: Attributes | undefined;
  events: Array<{ time: HrTime; name: string; attributes?: Attributes; droppedAttributesCount?: number }>;
  links: Array<{ context: ContextShape; attributes?: Attributes; droppedAttributesCount?: number }>;
  status: { code: number; message?: string };
  droppedAttributesCount: number;
  droppedEventsCount: number;
  droppedLinksCount: number;
}
interface ContextShape {
  traceId: string;
  spanId: string;
  traceFlags: number;
  isRemote?: boolean;
  traceState?: string;
}

function toSpanContext(shape: ContextShape): SpanContext {
  const { traceState, ...context } = shape;
  return traceState === undefined ? context : { ...context, traceState: { serialize: () => traceState } as ApiTraceState };
}

function toReadableSpan(shape: SpanShape, resource: object, instrumentationScope: object): ReadableSpan {
  const context = toSpanContext(shape.context);
  return {
    name: shape.name,
    kind: shape.kind,
    spanContext: () => context,
    parentSpanContext: shape.parent && toSpanContext(shape.parent),
    startTime: shape.startTime,
    endTime: shape.endTime,
    attributes: shape.attributes,
    events: shape.events,
    links: shape.links.map((link) => ({ ...link, context: toSpanContext(link.context) })),
    status: shape.status,
    droppedAttributesCount: shape.droppedAttributesCount,
    droppedEventsCount: shape.droppedEventsCount,
    droppedLinksCount: shape.droppedLinksCount,
    resource,
    instrumentationScope,
    duration: [0, 0],
    ended: true,
  } as unknown as ReadableSpan;
}

const spanContext: fc.Arbitrary<ContextShape> = fc.record(
  {
    traceId: hexId(32),
    spanId: hexId(16),
    traceFlags: fc.oneof(fc.constantFrom(0, 1), fc.integer({ min: 0, max: 4096 })),
    isRemote: fc.boolean(),
    traceState: fc.oneof(fc.constant(''), fc.string({ maxLength: 30 }), text),
  },
  { requiredKeys: ['traceId', 'spanId', 'traceFlags'] },
);
const span: fc.Arbitrary<SpanShape> = fc.record({
  name: text,
  kind: fc.oneof(fc.integer({ min: 0, max: 4 }), fc.constantFrom(null, undefined, -1, 200)),
  context: spanContext,
  parent: optional(fc.oneof(spanContext, spanContext.map((context) => ({ ...context, spanId: '' })))),
  startTime: hrTime,
  endTime: hrTime,
  attributes: fc.oneof({ weight: 6, arbitrary: attributes }, { weight: 1, arbitrary: fc.constant(undefined) }),
  events: fc.array(
    fc.record({ time: hrTime, name: text, attributes, droppedAttributesCount: count }, { requiredKeys: ['time', 'name'] }),
    { maxLength: 3 },
  ),
  links: fc.array(fc.record({ context: spanContext, attributes, droppedAttributesCount: count }, { requiredKeys: ['context'] }), { maxLength: 3 }),
  status: fc.record({ code: fc.oneof(fc.constantFrom(0, 1, 2), fc.nat()), message: text }, { requiredKeys: ['code'] }),
  droppedAttributesCount: count as fc.Arbitrary<number>,
  droppedEventsCount: count as fc.Arbitrary<number>,
  droppedLinksCount: count as fc.Arbitrary<number>,
});
/** Spans drawing their resource and scope from small pools, so that grouping by identity is exercised. */
const batch = fc
  .record({
    resources: fc.array(resource, { minLength: 1, maxLength: 3 }),
    scopes: fc.array(scope, { minLength: 1, maxLength: 3 }),
    spans: fc.array(fc.tuple(fc.nat(), fc.nat(), span), { maxLength: 6 }),
  })
  .map(({ resources, scopes, spans }) => spans.map(([r, s, shape]) => toReadableSpan(shape, resources[r % resources.length]!, scopes[s % scopes.length]!)));

describe('FastProtobufTraceSerializer, generated spans', () => {
  test('the same bytes as the library', () => {
    fc.assert(
      fc.property(batch, (spans) => {
        const expected = library(spans);
        const actual = FastProtobufTraceSerializer.serializeRequest(spans);
        return firstDifference(actual, expected) === -1;
      }),
      { numRuns: 400 },
    );
  });

  test('odd ids, counts, kinds and strings as the library writes them', () => {
    const base: SpanShape = {
      name: 'odd',
      kind: undefined,
      context: { traceId: 'ABCDEF0123456789abcdef0123456789', spanId: 'xyz!GHij', traceFlags: 0x1ff, isRemote: true, traceState: 'a=b' },
      parent: { traceId: '', spanId: '0123456', traceFlags: 0 },
      startTime: [1_700_000_000, 123_456_789],
      endTime: [2 ** 33, 999_999_999],
      attributes: { lone: '\ud800', pair: '\ud83d\ude80', tail: 'x\udc00', [String.fromCharCode(0xdbff)]: [-(2 ** 63), 2 ** 63 - 1024, -1] },
      events: [{ time: [0, 0], name: '' }],
      links: [{ context: { traceId: '', spanId: 'ffff', traceFlags: -1 } }],
      status: { code: undefined as unknown as number, message: '' },
      droppedAttributesCount: undefined as unknown as number,
      droppedEventsCount: NaN,
      droppedLinksCount: -5,
    };
    const res = { attributes: undefined };
    const sc = { name: '', version: '' };
    expectSameBytes([toReadableSpan(base, res, sc)]);
    expectSameBytes([toReadableSpan({ ...base, kind: null, parent: { ...base.parent!, spanId: '' } }, res, sc)]);
    expectSameBytes([toReadableSpan({ ...base, kind: 1.5, droppedEventsCount: 2 ** 53 + 2 }, res, sc)]);
    // Strings whose UTF-8 length needs a longer varint than their character count.
    const strings = { ['é'.repeat(64)]: 'é'.repeat(64), a: `${'a'.repeat(120)}éèê`, b: `${'b'.repeat(16_380)}ü`, c: '\udfff'.repeat(50) };
    expectSameBytes([toReadableSpan({ ...base, name: 'ø'.repeat(70), attributes: strings }, res, sc)]);
  });
});

/** The bytes encoded ahead, as the exporter's serializeRequest hands them over. */
async function encodedAhead(spans: ReadableSpan[]): Promise<Uint8Array> {
  await FastProtobufTraceSerializer.encodeAhead(spans);
  return FastProtobufTraceSerializer.serializeRequest(spans);
}

async function expectSameBytesAhead(spans: ReadableSpan[]): Promise<void> {
  const expected = library(spans);
  const actual = await encodedAhead(spans);
  expect({ length: actual.length, firstDifference: firstDifference(actual, expected) }).toEqual({ length: expected.length, firstDifference: -1 });
}

describe('FastProtobufTraceSerializer, encoded ahead in slices', () => {
  test('the same bytes as the library: real spans, one span, 512 spans, huge spans', async () => {
    await expectSameBytesAhead(realSpans());
    await expectSameBytesAhead([]);
    await expectSameBytesAhead(serverSpans(1));
    await expectSameBytesAhead(serverSpans(512));
    // Several groups of more than a slice each, interleaved.
    const many = [...serverSpans(150), ...realSpans(), ...serverSpans(70), ...realSpans()];
    await expectSameBytesAhead(many);
    const { provider: tracerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'huge' }));
    tracerProvider.getTracer('huge').startSpan('huge', { attributes: { ascii: 'a'.repeat(HUGE), accents: 'é'.repeat(HUGE / 2 + 1) } }, ROOT_CONTEXT).end();
    await expectSameBytesAhead([...serverSpans(100), ...exporter.getFinishedSpans(), ...serverSpans(3)]);
  });

  test('generated batches of several slices: the same bytes as the library', async () => {
    await fc.assert(
      fc.asyncProperty(batch, fc.integer({ min: 1, max: 40 }), async (spans, times) => {
        const repeated = Array.from({ length: times }, () => spans).flat();
        return firstDifference(await encodedAhead(repeated), library(repeated)) === -1;
      }),
      { numRuns: 60 },
    );
  });

  test('the event loop turns between slices, and batches encoded at the same time do not mix', async () => {
    // Spans that take a few ms each to encode: a slice each, or close to it.
    const { provider: tracerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'slow' }));
    for (let i = 0; i < 6; i++) tracerProvider.getTracer('slow').startSpan(`slow ${i}`, { attributes: { long: `${i}${'é'.repeat(HUGE)}` } }, ROOT_CONTEXT).end();
    const slow = [...serverSpans(40), ...exporter.getFinishedSpans(), ...serverSpans(40)];
    const others = [...realSpans(), ...serverSpans(300)];
    let turns = 0;
    let counting = true;
    const count = (): void => {
      turns += 1;
      if (counting) setImmediate(count);
    };
    setImmediate(count);
    const [bytes, otherBytes] = await Promise.all([encodedAhead(slow), encodedAhead(others)]);
    counting = false;
    expect(turns).toBeGreaterThanOrEqual(3);
    expect(firstDifference(bytes, library(slow))).toBe(-1);
    expect(firstDifference(otherBytes, library(others))).toBe(-1);
  });

  test('the bytes encoded ahead are handed over once; the same batch is encoded again at its next export', async () => {
    const spans = serverSpans(100);
    await FastProtobufTraceSerializer.encodeAhead(spans);
    const first = FastProtobufTraceSerializer.serializeRequest(spans);
    const second = FastProtobufTraceSerializer.serializeRequest(spans);
    expect(second).not.toBe(first);
    expect(firstDifference(second, first)).toBe(-1);
    // Another array of the same spans is not the batch encoded ahead.
    await FastProtobufTraceSerializer.encodeAhead(spans);
    expect(FastProtobufTraceSerializer.serializeRequest([...spans])).not.toBe(FastProtobufTraceSerializer.serializeRequest(spans));
  });
});

describe('EncodeAheadExporter', () => {
  function exportThrough(inner: ConstructorParameters<typeof EncodeAheadExporter<ReadableSpan>>[0], spans: ReadableSpan[]): Promise<ExportResult> {
    const exporter = new EncodeAheadExporter(inner, FastProtobufTraceSerializer);
    return new Promise((resolve) => exporter.export(spans, resolve));
  }

  test('hands the library exporter the same batch, whose serialization is then the bytes encoded ahead', async () => {
    const spans = serverSpans(130);
    let sent: Uint8Array | undefined;
    const result = await exportThrough(
      {
        export: (items, callback) => {
          expect(items).toBe(spans);
          sent = FastProtobufTraceSerializer.serializeRequest(items);
          callback({ code: ExportResultCode.SUCCESS });
        },
        shutdown: () => Promise.resolve(),
      },
      spans,
    );
    expect(result.code).toBe(ExportResultCode.SUCCESS);
    expect(firstDifference(sent!, library(spans))).toBe(-1);
  });

  test('an exporter that throws fails the export instead of rejecting a promise nobody holds', async () => {
    const result = await exportThrough(
      {
        export: () => {
          throw new Error('cannot serialize');
        },
        shutdown: () => Promise.resolve(),
      },
      serverSpans(2),
    );
    expect(result).toEqual({ code: ExportResultCode.FAILED, error: new Error('cannot serialize') });
  });

  test('spans the encoder cannot write go to the library exporter all the same, which fails as before', async () => {
    const broken = { ...serverSpans(1)[0]!, spanContext: (): SpanContext => { throw new Error('no context'); } } as ReadableSpan;
    let exported = 0;
    const result = await exportThrough(
      {
        export: (items, callback) => {
          exported += 1;
          try {
            FastProtobufTraceSerializer.serializeRequest(items);
            callback({ code: ExportResultCode.SUCCESS });
          } catch (error) {
            callback({ code: ExportResultCode.FAILED, error: error as Error });
          }
        },
        shutdown: () => Promise.resolve(),
      },
      [broken],
    );
    expect(exported).toBe(1);
    expect(result).toEqual({ code: ExportResultCode.FAILED, error: new Error('no context') });
  });

  test('shutdown and forceFlush reach the library exporter', async () => {
    const calls: string[] = [];
    const exporter = new EncodeAheadExporter<ReadableSpan>(
      { export: () => undefined, shutdown: async () => void calls.push('shutdown'), forceFlush: async () => void calls.push('forceFlush') },
      FastProtobufTraceSerializer,
    );
    await exporter.forceFlush();
    await exporter.shutdown();
    expect(calls).toEqual(['forceFlush', 'shutdown']);
    await expect(new EncodeAheadExporter<ReadableSpan>({ export: () => undefined, shutdown: () => Promise.resolve() }, FastProtobufTraceSerializer).forceFlush()).resolves.toBeUndefined();
  });
});
