import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
  type SpanExporter,
} from '@opentelemetry/sdk-trace';
import { JsonLineSpanExporter, SPAN_LINE_PREFIX } from '../../otel/consoleExporter';

interface SpanLine {
  name: string;
  kind: string;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  startUs: number;
  durationUs: number;
  status: string;
  statusMessage?: string;
  attributes: Record<string, unknown>;
  events?: { name: string; attributes?: Record<string, unknown> }[];
  scope: string;
  'service.name': string;
  'service.instance.id'?: string;
  'process.pid': number;
}

const RESOURCE = resourceFromAttributes({ 'service.name': 'orders', 'service.instance.id': 'worker-1' });

let stdout: jest.SpiedFunction<typeof process.stdout.write>;
const providers: TracerProvider[] = [];

/** Text written to stdout, without letting it reach the terminal; write callbacks still run. */
function written(): string {
  return stdout.mock.calls.map(([chunk]) => String(chunk)).join('');
}

/** The span lines written so far, parsed. */
function spanLines(): SpanLine[] {
  const text = written();
  expect(text.endsWith('\n')).toBe(true);
  return text
    .slice(0, -1)
    .split('\n')
    .map((line) => {
      expect(line.startsWith(SPAN_LINE_PREFIX)).toBe(true);
      return JSON.parse(line.slice(SPAN_LINE_PREFIX.length)) as SpanLine;
    });
}

function providerWith(exporter: SpanExporter): TracerProvider {
  const provider = new TracerProvider({ resource: RESOURCE, spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  providers.push(provider);
  return provider;
}

/** Ends a SERVER span with a child, explicitly parented (no context manager is installed). */
function recordRequest(provider: TracerProvider): { traceId: string; serverId: string; childId: string } {
  const tracer = provider.getTracer('test-scope');
  const server = tracer.startSpan('GET /items/:id', {
    kind: SpanKind.SERVER,
    attributes: { 'http.request.method': 'GET', 'http.response.status_code': 200, 'app.flag': true },
  });
  const child = tracer.startSpan('db.query', { kind: SpanKind.CLIENT }, trace.setSpan(context.active(), server));
  child.addEvent('rows', { count: 3 });
  child.setStatus({ code: SpanStatusCode.ERROR, message: 'slow' });
  child.end();
  server.end();
  return {
    traceId: server.spanContext().traceId,
    serverId: server.spanContext().spanId,
    childId: child.spanContext().spanId,
  };
}

/** Spans made by a real provider, for calling the exporter directly. */
function recordedSpans(): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  recordRequest(providerWith(memory));
  return memory.getFinishedSpans();
}

function exportNow(exporter: JsonLineSpanExporter, spans: ReadableSpan[]): Promise<ExportResult> {
  return new Promise((resolve) => exporter.export(spans, resolve));
}

beforeEach(() => {
  stdout = jest.spyOn(process.stdout, 'write').mockImplementation(((_chunk: unknown, ...rest: unknown[]) => {
    const callback = rest.find((arg): arg is () => void => typeof arg === 'function');
    callback?.();
    return true;
  }) as typeof process.stdout.write);
});

afterEach(async () => {
  await Promise.all(providers.splice(0).map((provider) => provider.shutdown()));
  stdout.mockRestore();
});

describe('JsonLineSpanExporter', () => {
  it('writes one otel.span JSON line per span a TracerProvider ends', async () => {
    const exporter = new JsonLineSpanExporter();
    const provider = providerWith(exporter);
    const { traceId, serverId, childId } = recordRequest(provider);
    await provider.forceFlush();

    const lines = spanLines();
    expect(lines).toHaveLength(2);
    const [child, server] = lines;

    expect(server).toMatchObject({
      name: 'GET /items/:id',
      kind: 'SERVER',
      traceId,
      spanId: serverId,
      status: 'UNSET',
      attributes: { 'http.request.method': 'GET', 'http.response.status_code': 200, 'app.flag': true },
      scope: 'test-scope',
      'service.name': 'orders',
      'service.instance.id': 'worker-1',
      'process.pid': process.pid,
    });
    expect(server).not.toHaveProperty('parentSpanId');
    expect(server).not.toHaveProperty('events');
    expect(server?.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(server?.spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(server?.startUs).toBeGreaterThan(0);
    expect(server?.durationUs).toBeGreaterThanOrEqual(0);

    expect(child).toMatchObject({
      name: 'db.query',
      kind: 'CLIENT',
      traceId,
      spanId: childId,
      parentSpanId: serverId,
      status: 'ERROR',
      statusMessage: 'slow',
      events: [{ name: 'rows', attributes: { count: 3 } }],
      'service.name': 'orders',
    });
  });

  it('writes a batch in one write and reports SUCCESS once it is written', async () => {
    const spans = recordedSpans();
    expect(spans).toHaveLength(2);
    const exporter = new JsonLineSpanExporter();

    const result = await exportNow(exporter, spans);

    expect(result.code).toBe(ExportResultCode.SUCCESS);
    expect(stdout).toHaveBeenCalledTimes(1);
    expect(spanLines().map((line) => line.name)).toEqual(['db.query', 'GET /items/:id']);
  });

  it('fails exports after shutdown and writes nothing', async () => {
    const exporter = new JsonLineSpanExporter();
    await exporter.shutdown();

    const result = await exportNow(exporter, recordedSpans());

    expect(result.code).toBe(ExportResultCode.FAILED);
    expect(result.error?.message).toBe('exporter is shut down');
    expect(stdout).not.toHaveBeenCalled();
  });

  it('stops writing spans once its provider is shut down', async () => {
    const exporter = new JsonLineSpanExporter();
    const processor = new SimpleSpanProcessor({ exporter });
    const provider = new TracerProvider({ resource: RESOURCE, spanProcessors: [processor] });
    // The processor exports asynchronously: each check awaits what it has in flight.
    provider.getTracer('early').startSpan('before shutdown').end();
    await processor.forceFlush();
    expect(spanLines().map((line) => line.name)).toEqual(['before shutdown']);
    await provider.shutdown();
    provider.getTracer('late').startSpan('after shutdown').end();
    await processor.forceFlush();
    expect(spanLines().map((line) => line.name)).toEqual(['before shutdown']);
  });

  it('resolves forceFlush', async () => {
    await expect(new JsonLineSpanExporter().forceFlush()).resolves.toBeUndefined();
  });
});
