/**
 * The kit's OTLP/protobuf logs serializer against the library's
 * `ProtobufLogsSerializer`: the same records give the same bytes, for
 * records made by the SDK and for generated record-like objects, odd values
 * included.
 */
import path from 'node:path';
import fc from 'fast-check';
import * as protobuf from 'protobufjs';
import { ROOT_CONTEXT, SeverityNumber, TraceFlags, trace, type AnyValue, type Attributes, type HrTime, type SpanContext } from '@opentelemetry/api';
import { ProtobufLogsSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { InMemoryLogRecordExporter, LoggerProvider, SimpleLogRecordProcessor, type ReadableLogRecord } from '@opentelemetry/sdk-logs';
import { FastProtobufLogsSerializer } from '../../otel/logSerializer';
import { FastProtobufTraceSerializer } from '../../otel/traceSerializer';
import { anyValue, attributes, count, firstDifference, hexId, hrTime, resource, scope, text } from '../helpers/protobufFixtures';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN_ID = '00f067aa0ba902b7';
const HUGE = 2_200_000;

function library(records: ReadableLogRecord[]): Uint8Array {
  const bytes = ProtobufLogsSerializer.serializeRequest(records);
  if (bytes === undefined) throw new Error('the library serialized nothing');
  return bytes;
}

function expectSameBytes(records: ReadableLogRecord[]): Uint8Array {
  const expected = library(records);
  const actual = FastProtobufLogsSerializer.serializeRequest(records);
  expect({ length: actual.length, firstDifference: firstDifference(actual, expected) }).toEqual({ length: expected.length, firstDifference: -1 });
  return actual;
}

function provider(resource: Resource): { provider: LoggerProvider; exporter: InMemoryLogRecordExporter } {
  const exporter = new InMemoryLogRecordExporter();
  return { provider: new LoggerProvider({ resource, processors: [new SimpleLogRecordProcessor({ exporter })] }), exporter };
}

function inSpan(traceFlags: number, isRemote = false): ReturnType<typeof trace.setSpanContext> {
  const context: SpanContext = { traceId: TRACE_ID, spanId: SPAN_ID, traceFlags, isRemote };
  return trace.setSpanContext(ROOT_CONTEXT, context);
}

/** What the access log emits for one request (src/log.ts): the line's fields as attributes, in the request's span. */
function accessAttributes(i: number): Attributes {
  return {
    req_id: `req-${i}`,
    'http.request.method': 'GET',
    'url.path': `/items/${i}`,
    'http.route': '/items/:id',
    'http.response.status_code': 200,
    'client.address': '203.0.113.9',
    'user_agent.original': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
    'http.request.body.size': 0,
    'http.response.body.size': 1234,
    duration_ms: 1.734,
  };
}

function accessRecords(count: number): ReadableLogRecord[] {
  const { provider: loggerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'bench', 'service.instance.id': 'worker-0', 'process.pid': 4242 }));
  const logger = loggerProvider.getLogger('kit-access-log', '1.0.0');
  for (let i = 0; i < count; i++) {
    logger.emit({ severityNumber: SeverityNumber.INFO, severityText: 'info', body: 'request completed', attributes: accessAttributes(i), context: inSpan(TraceFlags.SAMPLED) });
  }
  return exporter.getFinishedLogRecords() as ReadableLogRecord[];
}

const VALUES: Record<string, AnyValue> = {
  'ville': 'Zürich',
  'ключ': 'значение',
  'emoji': '🚀🎉',
  'max.safe': Number.MAX_SAFE_INTEGER,
  'big.int': 2 ** 62,
  'beyond.int64': 2 ** 63,
  'negative': -1,
  'min.int64': -(2 ** 63),
  'float': 3.14159,
  'nan': NaN,
  'infinity': -Infinity,
  'true': true,
  'false': false,
  'strings': ['a', '', 'ü'],
  'numbers': [1, -2, 2.5],
  'mixed': ['x', 1, null, { k: 'v' }],
  'empty.array': [],
  'nested': { a: { b: [1, { c: 'd' }] }, 'é': 'ê', n: null },
  'empty.object': {},
  'bytes': new Uint8Array([0, 1, 127, 128, 255]),
  'empty.bytes': new Uint8Array(0),
  'empty.string': '',
  'null': null,
};

/** Real records from two providers (two resources, one with a schema URL) and several scopes, interleaved. */
function realRecords(): ReadableLogRecord[] {
  const checkout = provider(resourceFromAttributes({ 'service.name': 'checkout', 'service.version': '1.4.2', 'host.name': 'node-1' }, { schemaUrl: 'https://opentelemetry.io/schemas/1.27.0' }));
  const billing = provider(resourceFromAttributes({ 'service.name': 'billing', 'deployment.environment.name': 'production' }));
  const access = checkout.provider.getLogger('kit-access-log', '1.0.0', { schemaUrl: 'https://opentelemetry.io/schemas/1.26.0' });
  const app = checkout.provider.getLogger('app');
  const scoped = checkout.provider.getLogger('scoped', '2.0.0', { schemaUrl: 'https://example.test/schema', scopeAttributes: { 'scope.attr': 'x', 'scope.n': 7 } } as never);
  const billingApp = billing.provider.getLogger('app', '3.1.0');

  access.emit({ severityNumber: SeverityNumber.INFO, severityText: 'info', body: 'request completed', attributes: accessAttributes(1), context: inSpan(TraceFlags.SAMPLED) });
  billingApp.emit({ severityNumber: SeverityNumber.WARN, severityText: 'warn', body: 'slow ledger', context: inSpan(TraceFlags.NONE, true) });
  app.emit({ severityNumber: SeverityNumber.ERROR, severityText: 'error', body: { message: 'failed', code: 42, retry: false, tags: ['a', 'b'], nested: { deep: [1, 2.5, null] } }, attributes: VALUES });
  app.emit({ body: ['array', 1, true, null, { k: 'v' }, new Uint8Array([9, 8])] });
  app.emit({ body: new Uint8Array([0, 128, 255]), severityNumber: SeverityNumber.FATAL4 });
  app.emit({ body: 42, severityNumber: SeverityNumber.TRACE });
  app.emit({ body: -0.25, severityText: 'custom' });
  app.emit({ body: false, eventName: 'app.started' });
  app.emit({ body: null });
  app.emit({ body: '', severityText: '', eventName: '' });
  app.emit({ body: 'valeurs réglées ✓ 東京 🚀', attributes: { 'ключ': 'значение' }, timestamp: [1_700_000_000, 123_456_789], observedTimestamp: new Date(1_700_000_001_000) });
  app.emit({});
  app.emit({ body: 'in a span', context: inSpan(0xff) });
  scoped.emit({ body: 'scoped', severityNumber: SeverityNumber.DEBUG2 });
  billingApp.emit({ body: 'billing again', attributes: { 'peer.service': 'ledger' } });

  // Interleaved: resources and scopes come back in first-seen order, grouped by identity.
  const [accessRecord, ...appRecords] = checkout.exporter.getFinishedLogRecords() as ReadableLogRecord[];
  const [warn, again] = billing.exporter.getFinishedLogRecords() as ReadableLogRecord[];
  return [warn!, ...appRecords.slice(0, 4), accessRecord!, ...appRecords.slice(4), again!];
}

describe('FastProtobufLogsSerializer, real records', () => {
  test('access, app, error and non-ASCII records, every body kind, in several resources and scopes', () => {
    expectSameBytes(realRecords());
  });

  test('each record alone', () => {
    for (const record of realRecords()) expectSameBytes([record]);
  });

  test('an empty batch', () => {
    expect(FastProtobufLogsSerializer.serializeRequest([])).toHaveLength(0);
    expectSameBytes([]);
  });

  test('a batch of 512 access records', () => {
    const bytes = expectSameBytes(accessRecords(512));
    expect(bytes.length).toBeGreaterThan(16384);
  });

  test('huge bodies and attributes: lengths of 1 to 4 bytes, the scratch buffer grows, and later batches are still right', () => {
    const { provider: loggerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'huge' }));
    const logger = loggerProvider.getLogger('huge');
    logger.emit({ body: 'b'.repeat(HUGE), attributes: { small: 'x', medium: 'm'.repeat(300), large: 'l'.repeat(40_000), accents: 'é'.repeat(HUGE / 2 + 1), array: ['y'.repeat(HUGE), 'z'] } });
    logger.emit({ body: 'ü'.repeat(70), severityText: 's'.repeat(200), eventName: 'e'.repeat(16_400) });
    logger.emit({ body: { long: 'k'.repeat(20_000), list: ['l'.repeat(150)] } });
    const bytes = expectSameBytes([...(exporter.getFinishedLogRecords() as ReadableLogRecord[]), ...accessRecords(3)]);
    expect(bytes.length).toBeGreaterThan(3 * HUGE);
    expectSameBytes(realRecords());
    expectSameBytes(accessRecords(512));
  });

  test('a result is not changed by the next call, of either serializer', () => {
    const first = FastProtobufLogsSerializer.serializeRequest(realRecords());
    const snapshot = Buffer.from(first);
    const second = FastProtobufLogsSerializer.serializeRequest(accessRecords(64));
    FastProtobufTraceSerializer.serializeRequest([]);
    expect(Buffer.from(first).equals(snapshot)).toBe(true);
    expect(second.buffer).not.toBe(first.buffer);
    expect(first.byteLength).toBe(first.buffer.byteLength);
  });

  test('the output is a valid ExportLogsServiceRequest', () => {
    const schema = protobuf.loadSync(path.join(__dirname, '../helpers/otlp-logs.proto'));
    const ExportRequest = schema.lookupType('opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest');
    const decoded = ExportRequest.toObject(ExportRequest.decode(FastProtobufLogsSerializer.serializeRequest(realRecords())), { longs: String, bytes: String, enums: Number, defaults: false });
    const hex = (base64: string): string => Buffer.from(base64, 'base64').toString('hex');
    const resources = decoded.resourceLogs as Array<{ resource: { attributes: Array<{ key: string }> }; schemaUrl?: string; scopeLogs: Array<{ scope: { name: string; version?: string }; schemaUrl?: string; logRecords: Array<Record<string, unknown>> }> }>;

    expect(resources.map((r) => r.resource.attributes.find((a) => a.key === 'service.name'))).toEqual([
      { key: 'service.name', value: { stringValue: 'billing' } },
      { key: 'service.name', value: { stringValue: 'checkout' } },
    ]);
    expect(resources.map((r) => r.schemaUrl)).toEqual([undefined, 'https://opentelemetry.io/schemas/1.27.0']);
    const checkout = resources[1]!;
    expect(checkout.scopeLogs.map((s) => [s.scope.name, s.logRecords.length, s.schemaUrl])).toEqual([
      ['app', 11, undefined],
      ['kit-access-log', 1, 'https://opentelemetry.io/schemas/1.26.0'],
      ['scoped', 1, 'https://example.test/schema'],
    ]);
    const [warn, again] = resources[0]!.scopeLogs[0]!.logRecords;
    expect(warn).toMatchObject({ severityNumber: SeverityNumber.WARN, severityText: 'warn', body: { stringValue: 'slow ledger' } });
    expect(warn!.flags).toBeUndefined();
    expect(hex(warn!.traceId as string)).toBe(TRACE_ID);
    expect(again!.traceId).toBeUndefined();

    const access = checkout.scopeLogs[1]!.logRecords[0]!;
    expect(access).toMatchObject({ severityNumber: SeverityNumber.INFO, severityText: 'info', body: { stringValue: 'request completed' }, flags: 1 });
    expect([hex(access.traceId as string), hex(access.spanId as string)]).toEqual([TRACE_ID, SPAN_ID]);
    expect((access.attributes as Array<{ key: string; value: unknown }>).find((a) => a.key === 'http.response.status_code')?.value).toEqual({ intValue: '200' });
    expect(BigInt(access.timeUnixNano as string)).toBeGreaterThan(0n);
    expect(BigInt(access.observedTimeUnixNano as string)).toBeGreaterThan(0n);

    const [error, array, bytes, , , event, , , dated, , spanned] = checkout.scopeLogs[0]!.logRecords;
    expect(error!.body).toEqual({
      kvlistValue: {
        values: [
          { key: 'message', value: { stringValue: 'failed' } },
          { key: 'code', value: { intValue: '42' } },
          { key: 'retry', value: { boolValue: false } },
          { key: 'tags', value: { arrayValue: { values: [{ stringValue: 'a' }, { stringValue: 'b' }] } } },
          { key: 'nested', value: { kvlistValue: { values: [{ key: 'deep', value: { arrayValue: { values: [{ intValue: '1' }, { doubleValue: 2.5 }, {}] } } }] } } },
        ],
      },
    });
    const attribute = (key: string): unknown => (error!.attributes as Array<{ key: string; value: unknown }>).find((a) => a.key === key)?.value;
    expect(attribute('min.int64')).toEqual({ intValue: '-9223372036854775808' });
    expect(attribute('bytes')).toEqual({ bytesValue: Buffer.from([0, 1, 127, 128, 255]).toString('base64') });
    expect(array!.body).toMatchObject({ arrayValue: { values: [{ stringValue: 'array' }, { intValue: '1' }, { boolValue: true }, {}, { kvlistValue: {} }, { bytesValue: Buffer.from([9, 8]).toString('base64') }] } });
    expect(bytes).toMatchObject({ body: { bytesValue: Buffer.from([0, 128, 255]).toString('base64') }, severityNumber: SeverityNumber.FATAL4 });
    expect(event).toMatchObject({ body: { boolValue: false }, eventName: 'app.started' });
    expect(dated).toMatchObject({ body: { stringValue: 'valeurs réglées ✓ 東京 🚀' }, timeUnixNano: '1700000000123456789', observedTimeUnixNano: '1700000001000000000' });
    expect(spanned!.flags).toBe(0xff);
    expect(checkout.scopeLogs[2]!.scope).toMatchObject({ name: 'scoped', version: '2.0.0' });
  });

  test('deserializeResponse is the library\'s, partial success included', () => {
    const response = Buffer.from([0x0a, 0x05, 0x08, 0x03, 0x12, 0x01, 0x78]);
    expect(FastProtobufLogsSerializer.deserializeResponse(response)).toEqual(ProtobufLogsSerializer.deserializeResponse(response));
    expect(FastProtobufLogsSerializer.deserializeResponse(response)).toEqual({ partialSuccess: { rejectedLogRecords: 3, errorMessage: 'x' } });
    expect(FastProtobufLogsSerializer.deserializeResponse(new Uint8Array(0))).toEqual({});
  });
});

// ---------------------------------------------------------------------------------------------
// Record-like objects: what an exporter may be handed, including what the SDK would not produce.

const spanContext = fc.record(
  {
    traceId: fc.oneof(hexId(32), fc.constant('')),
    spanId: fc.oneof(hexId(16), fc.constant('')),
    traceFlags: fc.oneof(fc.constantFrom(0, 1), fc.integer({ min: 0, max: 4096 }), fc.constantFrom(-1, 2 ** 32 + 3)),
    isRemote: fc.boolean(),
  },
  { requiredKeys: ['traceId', 'spanId', 'traceFlags'] },
);
const record = fc.record(
  {
    hrTime,
    hrTimeObserved: hrTime,
    spanContext,
    severityText: text,
    severityNumber: fc.oneof(fc.integer({ min: 0, max: 24 }), fc.constantFrom(-1, 1000, 2 ** 40)),
    body: anyValue,
    eventName: text,
    attributes,
    droppedAttributesCount: count,
  },
  { requiredKeys: ['hrTime', 'hrTimeObserved', 'droppedAttributesCount'] },
);
/** Records drawing their resource and scope from small pools, so that grouping by identity is exercised. */
const batch = fc
  .record({
    resources: fc.array(resource, { minLength: 1, maxLength: 3 }),
    scopes: fc.array(scope, { minLength: 1, maxLength: 3 }),
    records: fc.array(fc.tuple(fc.nat(), fc.nat(), record), { maxLength: 8 }),
  })
  .map(({ resources, scopes, records }) =>
    records.map(([r, s, shape]) => ({ ...shape, resource: resources[r % resources.length]!, instrumentationScope: scopes[s % scopes.length]! }) as unknown as ReadableLogRecord),
  );

describe('FastProtobufLogsSerializer, generated records', () => {
  test('the same bytes as the library', () => {
    fc.assert(
      fc.property(batch, (records) => {
        const expected = library(records);
        const actual = FastProtobufLogsSerializer.serializeRequest(records);
        return firstDifference(actual, expected) === -1;
      }),
      { numRuns: 500 },
    );
  });

  test('odd ids, flags, severities and strings as the library writes them', () => {
    const base = {
      hrTime: [1_700_000_000, 123_456_789] as HrTime,
      hrTimeObserved: [2 ** 33, 999_999_999] as HrTime,
      spanContext: { traceId: 'ABCDEF0123456789abcdef0123456789', spanId: 'xyz!GHij', traceFlags: 0x1ff, isRemote: true },
      severityNumber: -3,
      severityText: 'x\udc00',
      body: { lone: '\ud800', pair: '\ud83d\ude80', [String.fromCharCode(0xdbff)]: [-(2 ** 63), 2 ** 63 - 1024, -1] },
      attributes: { a: `${'a'.repeat(120)}éèê`, b: `${'b'.repeat(16_380)}ü`, c: '\udfff'.repeat(50), ['é'.repeat(64)]: 'é'.repeat(64) },
      droppedAttributesCount: undefined,
      resource: { attributes: undefined },
      instrumentationScope: { name: '', version: '' },
    };
    const one = (changes: object): void => {
      expectSameBytes([{ ...base, ...changes } as unknown as ReadableLogRecord]);
    };
    one({});
    one({ spanContext: { traceId: '0123456', spanId: '', traceFlags: -1 } });
    one({ spanContext: { traceId: '', spanId: 'ffff', traceFlags: 2 ** 32 + 1 } });
    one({ spanContext: undefined, severityNumber: 2 ** 53 + 2, droppedAttributesCount: NaN });
    one({ body: 'ø'.repeat(70), attributes: undefined, eventName: '\ud800'.repeat(10) });
    one({ body: undefined, severityNumber: SeverityNumber.UNSPECIFIED, severityText: undefined, droppedAttributesCount: -5 });
  });
});

describe('FastProtobufLogsSerializer, encoded ahead in slices', () => {
  async function encodedAhead(records: ReadableLogRecord[]): Promise<Uint8Array> {
    await FastProtobufLogsSerializer.encodeAhead(records);
    return FastProtobufLogsSerializer.serializeRequest(records);
  }

  test('the same bytes as the library: real records, 512 access records, groups of several slices', async () => {
    for (const records of [realRecords(), [], accessRecords(512), [...accessRecords(200), ...realRecords(), ...accessRecords(65), ...realRecords()]]) {
      expect(firstDifference(await encodedAhead(records), library(records))).toBe(-1);
    }
  });

  test('batches encoded at the same time, and requests of either serializer written between their slices, do not mix', async () => {
    const records = accessRecords(512);
    const other = accessRecords(130);
    const real = realRecords();
    const between = (async (): Promise<Uint8Array[]> => {
      const written: Uint8Array[] = [];
      for (let i = 0; i < 8; i++) {
        await new Promise((resolve) => setImmediate(resolve));
        written.push(FastProtobufTraceSerializer.serializeRequest([]), FastProtobufLogsSerializer.serializeRequest(real));
      }
      return written;
    })();
    const [a, b, written] = await Promise.all([encodedAhead(records), encodedAhead(other), between]);
    expect(firstDifference(a, library(records))).toBe(-1);
    expect(firstDifference(b, library(other))).toBe(-1);
    expect(written.filter((bytes) => bytes.length > 0).every((bytes) => firstDifference(bytes, library(real)) === -1)).toBe(true);
    expect(written).toHaveLength(16);
  });

  test('batches of spans and of log records encoded at the same time take turns, first come first served', async () => {
    // Records that take a few ms each to encode, more than are written between two looks at the clock:
    // the first batch needs two turns at least, the later ones none.
    const { provider: loggerProvider, exporter } = provider(resourceFromAttributes({ 'service.name': 'slow' }));
    for (let i = 0; i < 9; i++) loggerProvider.getLogger('slow').emit({ body: `${i}${'é'.repeat(HUGE)}` });
    const slow = exporter.getFinishedLogRecords();
    const quick = accessRecords(2);
    const done: string[] = [];
    const encode = (name: string, ahead: Promise<void>): Promise<void> => ahead.then(() => void done.push(name));
    await Promise.all([
      encode('slow records', FastProtobufLogsSerializer.encodeAhead(slow)),
      encode('spans', FastProtobufTraceSerializer.encodeAhead([])),
      encode('quick records', FastProtobufLogsSerializer.encodeAhead(quick)),
    ]);
    expect(done).toEqual(['slow records', 'spans', 'quick records']);
    expect(firstDifference(FastProtobufLogsSerializer.serializeRequest(slow), library(slow))).toBe(-1);
    expect(firstDifference(FastProtobufLogsSerializer.serializeRequest(quick), library(quick))).toBe(-1);
  });

  test('a batch that cannot be encoded fails alone: the batch after it is encoded', async () => {
    const broken = Object.create(accessRecords(1)[0]!, { attributes: { get: (): never => { throw new Error('no attributes'); } } }) as ReadableLogRecord;
    const records = accessRecords(40);
    const [failed, encoded] = await Promise.allSettled([FastProtobufLogsSerializer.encodeAhead([...accessRecords(30), broken]), encodedAhead(records)]);
    expect(failed).toEqual({ status: 'rejected', reason: new Error('no attributes') });
    expect(encoded.status === 'fulfilled' && firstDifference(encoded.value, library(records))).toBe(-1);
  });
});
