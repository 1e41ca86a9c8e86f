import { execFile } from 'node:child_process';
import * as http from 'node:http';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { OTLPMetricExporter as GrpcMetricExporter } from '@opentelemetry/exporter-metrics-otlp-grpc';
import { OTLPTraceExporter as GrpcTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchSpanProcessor,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from './otlpReceiver';

const PROJECT_ROOT = path.resolve(__dirname, '../..');
const ATTRIBUTES = { 'test.str': 'hello', 'test.int': 42, 'test.double': 1.5, 'test.bool': true, 'test.arr': ['a', 'b'] };

interface TraceIds {
  traceId: string;
  parentSpanId: string;
  childSpanId: string;
}

let receiver: OtlpReceiver;
/** Providers and exporters created by a test, shut down after it. */
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  receiver = await startReceiver();
});

afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((fn) => fn()));
  receiver.setFailure('none');
  receiver.reset();
});

afterAll(async () => {
  await receiver.close();
});

function newProvider(serviceName: string, processor: SpanProcessor): TracerProvider {
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': serviceName }),
    spanProcessors: [processor],
  });
  cleanups.push(() => provider.shutdown());
  return provider;
}

function newGrpcExporter(config: ConstructorParameters<typeof GrpcTraceExporter>[0] = {}): GrpcTraceExporter {
  const exporter = new GrpcTraceExporter({ url: receiver.grpcUrl, ...config });
  cleanups.push(() => exporter.shutdown());
  return exporter;
}

/** A SERVER parent with a CLIENT child carrying an event and an error status. */
function emitTrace(provider: TracerProvider): TraceIds {
  const tracer = provider.getTracer('otlp-receiver-test', '1.2.3');
  const parent = tracer.startSpan('GET /parent', { kind: SpanKind.SERVER, attributes: ATTRIBUTES });
  const child = tracer.startSpan('call downstream', { kind: SpanKind.CLIENT }, trace.setSpan(context.active(), parent));
  child.addEvent('retrying', { attempt: 2 });
  child.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
  child.end();
  parent.end();
  return { traceId: parent.spanContext().traceId, parentSpanId: parent.spanContext().spanId, childSpanId: child.spanContext().spanId };
}

function expectDecodedTrace(spans: ReceivedSpan[], ids: TraceIds, serviceName: string): void {
  expect(spans.map((s) => s.name).sort()).toEqual(['GET /parent', 'call downstream']);
  const parent = spans.find((s) => s.name === 'GET /parent');
  const child = spans.find((s) => s.name === 'call downstream');
  expect(parent).toMatchObject({
    traceId: ids.traceId,
    spanId: ids.parentSpanId,
    parentSpanId: '',
    kind: 2,
    attributes: ATTRIBUTES,
    status: { code: 0, message: '' },
    events: [],
    // TracerProvider v3 does not merge defaultResource(): only what the test set arrives.
    resource: { 'service.name': serviceName },
    scope: 'otlp-receiver-test',
  });
  expect(child).toMatchObject({
    traceId: ids.traceId,
    spanId: ids.childSpanId,
    parentSpanId: ids.parentSpanId,
    kind: 3,
    attributes: {},
    status: { code: 2, message: 'boom' },
    events: [{ name: 'retrying', attributes: { attempt: 2 } }],
  });
  expect(ids.traceId).toMatch(/^[0-9a-f]{32}$/);
  expect(ids.childSpanId).toMatch(/^[0-9a-f]{16}$/);
  expect(parent?.startTimeUnixNano).toBeGreaterThan(1_600_000_000_000_000_000n);
  expect(parent!.endTimeUnixNano >= parent!.startTimeUnixNano).toBe(true);
}

/** Ended spans to hand to an exporter directly, so the test sees the ExportResult. */
function readableSpans(): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  emitTrace(newProvider('failing-svc', new SimpleSpanProcessor({ exporter: memory })));
  return memory.getFinishedSpans();
}

function exportDirectly(exporter: GrpcTraceExporter, spans: ReadableSpan[]): Promise<ExportResult> {
  return new Promise((resolve) => exporter.export(spans, resolve));
}

/**
 * The OTLP/HTTP exporters load `http` with a dynamic `import()`, which Jest's CommonJS
 * sandbox rejects ("A dynamic import callback was invoked without --experimental-vm-modules").
 * So the protobuf exporter runs, unmodified, in a plain Node child process: it emits the
 * same trace shape as emitTrace(), exports it with the given exporter config and prints
 * the ExportResult code and the ids.
 */
const HTTP_EXPORT_SCRIPT = `
const { context, trace, SpanKind, SpanStatusCode } = require('@opentelemetry/api');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { TracerProvider, SimpleSpanProcessor, InMemorySpanExporter } = require('@opentelemetry/sdk-trace');
(async () => {
  const { serviceName, attributes, exporterConfig } = JSON.parse(process.argv[1]);
  const memory = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': serviceName }),
    spanProcessors: [new SimpleSpanProcessor({ exporter: memory })],
  });
  const tracer = provider.getTracer('otlp-receiver-test', '1.2.3');
  const parent = tracer.startSpan('GET /parent', { kind: SpanKind.SERVER, attributes });
  const child = tracer.startSpan('call downstream', { kind: SpanKind.CLIENT }, trace.setSpan(context.active(), parent));
  child.addEvent('retrying', { attempt: 2 });
  child.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
  child.end();
  parent.end();
  const exporter = new OTLPTraceExporter(exporterConfig);
  const result = await new Promise((resolve) => exporter.export(memory.getFinishedSpans(), resolve));
  await exporter.shutdown();
  await provider.shutdown();
  const ids = { traceId: parent.spanContext().traceId, parentSpanId: parent.spanContext().spanId, childSpanId: child.spanContext().spanId };
  process.stdout.write(JSON.stringify({ code: result.code, ...ids }));
})();
`;

async function exportOverHttpInChild(
  serviceName: string,
  exporterConfig: Record<string, unknown>,
): Promise<TraceIds & { code: ExportResultCode }> {
  const config = { serviceName, attributes: ATTRIBUTES, exporterConfig: { url: `${receiver.httpUrl}/v1/traces`, ...exporterConfig } };
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', HTTP_EXPORT_SCRIPT, JSON.stringify(config)], {
    cwd: PROJECT_ROOT,
    timeout: 15_000,
  });
  return JSON.parse(stdout) as TraceIds & { code: ExportResultCode };
}

/** Plain POST on a fresh connection (agent: false) so no keep-alive socket outlives the test. */
function post(url: string, headers: Record<string, string>, body: Buffer | string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('OTLP receiver', () => {
  it('decodes spans from the OTLP/gRPC exporter, with its metadata', async () => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', 'Basic abc');
    const provider = newProvider('grpc-svc', new BatchSpanProcessor({ exporter: newGrpcExporter({ metadata }) }));

    const ids = emitTrace(provider);
    await provider.forceFlush();

    expectDecodedTrace(receiver.spans, ids, 'grpc-svc');
    expect(receiver.requests).toHaveLength(1);
    expect(receiver.requests[0]).toMatchObject({
      transport: 'grpc',
      path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
      spanCount: 2,
      accepted: true,
    });
    expect(receiver.requests[0]?.headers).toMatchObject({
      authorization: 'Basic abc',
      'user-agent': expect.stringContaining('OTel-OTLP-Exporter-JavaScript/'),
    });
  });

  it('decodes spans from the OTLP/HTTP protobuf exporter, with its headers', async () => {
    const result = await exportOverHttpInChild('http-svc', { headers: { Authorization: 'Basic xyz' } });

    expect(result.code).toBe(ExportResultCode.SUCCESS);
    expectDecodedTrace(receiver.spans, result, 'http-svc');
    expect(receiver.requests).toHaveLength(1);
    expect(receiver.requests[0]).toMatchObject({ transport: 'http', spanCount: 2, accepted: true });
    expect(receiver.requests[0]?.headers).toMatchObject({
      authorization: 'Basic xyz',
      'content-type': 'application/x-protobuf',
      'user-agent': expect.stringContaining('OTel-OTLP-Exporter-JavaScript/'),
    });
  });

  it('accepts gzip-compressed protobuf from the OTLP/HTTP exporter', async () => {
    const result = await exportOverHttpInChild('gzip-svc', { compression: 'gzip' });

    expect(result.code).toBe(ExportResultCode.SUCCESS);
    expectDecodedTrace(receiver.spans, result, 'gzip-svc');
    expect(receiver.requests[0]?.headers['content-encoding']).toBe('gzip');
  });

  it('accepts OTLP/JSON (hex ids, int64 as strings)', async () => {
    const body = {
      resourceSpans: [
        {
          resource: { attributes: [{ key: 'service.name', value: { stringValue: 'json-svc' } }] },
          scopeSpans: [
            {
              scope: { name: 'manual' },
              spans: [
                {
                  traceId: '5b8efff798038103d269b633813fc60c',
                  spanId: 'eee19b7ec3c1b174',
                  parentSpanId: 'eee19b7ec3c1b173',
                  name: 'json span',
                  kind: 2,
                  startTimeUnixNano: '1544712660000000000',
                  endTimeUnixNano: '1544712661000000000',
                  attributes: [
                    { key: 'n', value: { intValue: '7' } },
                    { key: 'list', value: { arrayValue: { values: [{ boolValue: true }, { doubleValue: 0.5 }] } } },
                  ],
                  status: { code: 1 },
                },
              ],
            },
          ],
        },
      ],
    };
    const gzipped = zlib.gzipSync(JSON.stringify(body));
    const res = await post(`${receiver.httpUrl}/v1/traces`, { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' }, gzipped);

    expect(res).toEqual({ status: 200, body: '{}' });
    expect(receiver.spans).toEqual([
      {
        traceId: '5b8efff798038103d269b633813fc60c',
        spanId: 'eee19b7ec3c1b174',
        parentSpanId: 'eee19b7ec3c1b173',
        name: 'json span',
        kind: 2,
        attributes: { n: 7, list: [true, 0.5] },
        status: { code: 1, message: '' },
        events: [],
        resource: { 'service.name': 'json-svc' },
        scope: 'manual',
        startTimeUnixNano: 1544712660000000000n,
        endTimeUnixNano: 1544712661000000000n,
      },
    ]);
  });

  it('records the path of each export, and takes exports on the HTTP paths it is given only', async () => {
    const custom = await startReceiver({ httpPaths: ['/custom/traces'] });
    cleanups.push(() => custom.close());
    const body = JSON.stringify({ resourceSpans: [] });
    const headers = { 'Content-Type': 'application/json' };
    expect((await post(`${custom.httpUrl}/custom/traces`, headers, Buffer.from(body))).status).toBe(200);
    expect((await post(`${custom.httpUrl}/v1/traces`, headers, Buffer.from(body))).status).toBe(404);
    expect((await post(`${receiver.httpUrl}/v1/traces`, headers, Buffer.from(body))).status).toBe(200);
    expect(custom.requests.map((r) => [r.transport, r.path])).toEqual([['http', '/custom/traces']]);
    expect(receiver.requests.map((r) => [r.transport, r.path])).toEqual([['http', '/v1/traces']]);
  });

  it('refuses exports while set to fail and records no spans until reset to none', async () => {
    const spans = readableSpans();
    const grpcExporter = newGrpcExporter({ timeoutMillis: 500 });

    receiver.setFailure('unavailable');
    const grpcResult = await exportDirectly(grpcExporter, spans);
    // HTTP 503 is retryable; a timeout below the first backoff (~1s) makes the exporter
    // give up after a single attempt.
    const httpResult = await exportOverHttpInChild('failing-svc', { timeoutMillis: 500 });
    const raw = await post(`${receiver.httpUrl}/v1/traces`, { 'Content-Type': 'application/x-protobuf' }, Buffer.alloc(0));

    expect(grpcResult.code).toBe(ExportResultCode.FAILED);
    expect(grpcResult.error).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect(httpResult.code).toBe(ExportResultCode.FAILED);
    expect(raw.status).toBe(503);
    expect(receiver.spans).toEqual([]);
    expect(receiver.requests.map((r) => [r.transport, r.accepted])).toEqual([
      ['grpc', false],
      ['http', false],
      ['http', false],
    ]);

    receiver.setFailure('none');
    expect((await exportDirectly(grpcExporter, spans)).code).toBe(ExportResultCode.SUCCESS);
    expect(receiver.spans.map((s) => s.name).sort()).toEqual(['GET /parent', 'call downstream']);
  });

  it('waitFor resolves when a later export satisfies the predicate', async () => {
    const provider = newProvider('late-svc', new SimpleSpanProcessor({ exporter: newGrpcExporter() }));

    const waiting = receiver.waitFor((spans) => spans.some((s) => s.name === 'call downstream'), 3000);
    const ids = emitTrace(provider);

    const spans = await waiting;
    expect(spans.map((s) => s.spanId)).toContain(ids.childSpanId);
  });

  it('waitFor rejects on timeout with a summary of what arrived', async () => {
    const provider = newProvider('summary-svc', new BatchSpanProcessor({ exporter: newGrpcExporter() }));
    emitTrace(provider);
    await provider.forceFlush();

    await expect(receiver.waitFor((spans) => spans.some((s) => s.name === 'never'), 100)).rejects.toThrow(
      'OTLP receiver: condition not met within 100ms; 2 span(s) received: call downstream (summary-svc), GET /parent (summary-svc)',
    );
  });
});

describe('OTLP receiver: metrics', () => {
  it('decodes sums, gauges and histograms from the OTLP/gRPC metric exporter, flat with their resource', async () => {
    const reader = new PeriodicExportingMetricReader({ exporter: new GrpcMetricExporter({ url: receiver.grpcUrl }), exportIntervalMillis: 60_000 });
    const provider = new MeterProvider({ resource: resourceFromAttributes({ 'service.name': 'metrics-svc' }), readers: [reader] });
    cleanups.push(() => provider.shutdown());
    const meter = provider.getMeter('receiver-test');
    meter.createCounter('test.counter', { unit: '{call}' }).add(3, { 'test.str': 'a' });
    meter.createUpDownCounter('test.updown').add(-2);
    meter.createGauge('test.gauge', { unit: 'By' }).record(1.5);
    const histogram = meter.createHistogram('test.histogram', { unit: 's', advice: { explicitBucketBoundaries: [1, 10] } });
    for (const value of [0.5, 2, 20]) histogram.record(value, { 'test.int': 7 });
    await provider.forceFlush();

    const byName = new Map(receiver.metrics.map((m) => [m.name, m]));
    expect(byName.get('test.counter')).toMatchObject({ type: 'sum', monotonic: true, temporality: 2, unit: '{call}', value: 3, attributes: { 'test.str': 'a' }, resource: { 'service.name': 'metrics-svc' }, scope: 'receiver-test' });
    expect(byName.get('test.updown')).toMatchObject({ type: 'sum', monotonic: false, value: -2 });
    expect(byName.get('test.gauge')).toMatchObject({ type: 'gauge', value: 1.5, unit: 'By' });
    expect(byName.get('test.histogram')).toMatchObject({ type: 'histogram', count: 3, value: 22.5, explicitBounds: [1, 10], bucketCounts: [1, 1, 1], attributes: { 'test.int': 7 } });
    expect(receiver.metricRequests).toEqual([expect.objectContaining({ transport: 'grpc', dataPointCount: 4, accepted: true })]);
    // Spans and metrics are kept apart.
    expect(receiver.requests).toHaveLength(0);
  });
});
