/**
 * The preload where it runs: in a child process started with `node -r`,
 * exporting to a real OTLP receiver.
 */
import path from 'node:path';
import { startReceiver, type OtlpReceiver } from '../helpers/otlpReceiver';
import { FIXTURES, listeningPort, SERVER, startChild, type Child } from '../helpers/child';
import { get } from '../helpers/load';

jest.setTimeout(60_000);

let receiver: OtlpReceiver;
const children: Child[] = [];

function start(script: string, env: Record<string, string>, options?: { preload?: boolean }): Child {
  const child = startChild(script, env, options);
  children.push(child);
  return child;
}

/** The kit's server on a random port, under the preload. */
function startServer(env: Record<string, string>): Child {
  return start(SERVER, { HOST: '127.0.0.1', PORT: '0', ...env });
}

beforeAll(async () => {
  receiver = await startReceiver();
});

afterEach(async () => {
  await Promise.all(children.splice(0).map((child) => child.stop()));
  receiver.setFailure('none');
  receiver.reset();
});

afterAll(async () => {
  await receiver.close();
});

const SECRET = 'c2VjcmV0LXRva2VuLTk4NzY1';

describe('exporting', () => {
  test('exports the server span of a request over gRPC, and flushes it at SIGINT', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'preload-grpc',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      // Only the shutdown flush can deliver within the test.
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/5')).body).toBe('{"item_id":5}');
    expect((await get(port, '/items/nope')).status).toBe(422);

    // The batch delay (60 s) outlasts the test (its timeout): what arrives, the flush sent.
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    const server = receiver.spans.filter((s) => s.kind === 2);
    // In one export: the flush's.
    expect(receiver.requests.map((r) => r.spanCount)).toEqual([receiver.spans.length]);
    expect(server.map((s) => [s.name, s.attributes['url.path'], s.attributes['http.response.status_code']])).toEqual([
      ['GET /items/:id', '/items/5', 200],
      ['GET /items/:id', '/items/nope', 422],
    ]);
    expect(server[0]?.resource['service.name']).toBe('preload-grpc');
    expect(server[0]?.resource['process.pid']).toBe(child.process.pid);
    expect(typeof server[0]?.resource['service.instance.id']).toBe('string');
    expect(receiver.requests.every((r) => r.transport === 'grpc')).toBe(true);
  });

  test('sends over http/protobuf with the decoded auth header, and never prints it', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'preload-http',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
      OTEL_EXPORTER_OTLP_HEADERS: `Authorization=Basic%20${SECRET}==,x-tenant=team%2Fa`,
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_LOG_LEVEL: 'debug',
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/1')).status).toBe(200);
    await receiver.waitFor((spans) => spans.some((s) => s.kind === 2), 10_000);
    const request = receiver.requests.find((r) => r.transport === 'http');
    expect(request?.headers.authorization).toBe(`Basic ${SECRET}==`);
    expect(request?.headers['x-tenant']).toBe('team/a');
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    // All of its output, to the last line (SDK debug lines included), without the secret.
    expect(child.stdout()).toContain('"msg":"shutting down"');
    expect(child.stderr()).toContain('otel: ');
    expect(child.stdout() + child.stderr()).not.toContain(SECRET);
  });

  test('writes one JSON line per span to stdout when no endpoint is set', async () => {
    const child = startServer({ OTEL_SERVICE_NAME: 'preload-console', OTEL_BSP_SCHEDULE_DELAY: '60000' });
    const port = await listeningPort(child);
    expect((await get(port, '/items/3')).status).toBe(200);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    const lines = child.stdout().split('\n').filter((line) => line.startsWith('otel.span '));
    const spans = lines.map((line) => JSON.parse(line.slice('otel.span '.length)) as Record<string, unknown>);
    expect(spans.filter((s) => s.kind === 'SERVER')).toMatchObject([
      { name: 'GET /items/:id', 'service.name': 'preload-console', attributes: { 'http.route': '/items/:id' } },
    ]);
    // Console only: no OTLP exporter tried the default endpoint (it would have said it cannot export).
    expect(child.stderr()).toBe('');
  });

  test('outgoing http and fetch calls carry the trace context', async () => {
    const child = start(path.join(FIXTURES, 'outgoing.js'), {
      OTEL_SERVICE_NAME: 'preload-outgoing',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = Number((await child.waitForLine(/^READY \d+/)).split(' ')[1]);
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const response = await get(port, '/', { traceparent: `00-${traceId}-b7ad6b7169203331-01` });
    const downstream = JSON.parse(response.body) as { via: string; traceparent: string | null }[];
    expect(downstream.map((d) => d.via)).toEqual(['/via-http', '/via-fetch']);
    for (const call of downstream) expect(call.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));

    // No signal handler in the script: the preload flushes at SIGTERM, then lets it terminate.
    child.process.kill('SIGTERM');
    expect((await child.exited).signal).toBe('SIGTERM');
    const clients = receiver.spans.filter((s) => s.kind === 3 && s.traceId === traceId);
    expect(clients.map((s) => s.scope).sort()).toEqual(['@opentelemetry/instrumentation-http', '@opentelemetry/instrumentation-undici']);
    // Each downstream request's parent is the client span that sent it.
    const parents = downstream.map((d) => d.traceparent?.split('-')[2]);
    expect(new Set(parents)).toEqual(new Set(clients.map((s) => s.spanId)));
    // ...and each client span's parent is the server span of the request that made the calls.
    const upstream = receiver.spans.filter((s) => s.kind === 2 && s.parentSpanId === 'b7ad6b7169203331');
    expect(upstream).toHaveLength(1);
    expect(clients.map((s) => s.parentSpanId)).toEqual([upstream[0]?.spanId, upstream[0]?.spanId]);
  });

  test('an unsampled request records no span but passes its trace on, unsampled', async () => {
    const child = start(path.join(FIXTURES, 'outgoing.js'), {
      OTEL_SERVICE_NAME: 'preload-unsampled',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = Number((await child.waitForLine(/^READY \d+/)).split(' ')[1]);
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    // The default sampler follows the parent: flags 00, not sampled.
    const response = await get(port, '/', { traceparent: `00-${traceId}-00f067aa0ba902b7-00` });
    const downstream = JSON.parse(response.body) as { via: string; traceparent: string | null }[];
    expect(downstream.map((d) => d.via)).toEqual(['/via-http', '/via-fetch']);
    for (const call of downstream) expect(call.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
    // A sampled request after it: its spans (upstream server, two clients, two downstream servers),
    // flushed at SIGTERM, show that the exporter worked.
    const marker = '5ce0e9a56015fec5aadfa328ae398115';
    expect((await get(port, '/', { traceparent: `00-${marker}-00f067aa0ba902b7-01` })).status).toBe(200);
    child.process.kill('SIGTERM');
    await child.exited;
    expect(receiver.spans.filter((s) => s.traceId === marker).map((s) => s.kind).sort()).toEqual([2, 2, 2, 3, 3]);
    expect(receiver.spans.filter((s) => s.traceId === traceId)).toEqual([]);
  });
});

describe('the lean default', () => {
  /** Server spans of a few requests, with what varies between runs left out. */
  async function serverSpansWith(env: Record<string, string>): Promise<{ perRequest: number; spans: unknown[] }> {
    const child = startServer({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '60000', ...env });
    const port = await listeningPort(child);
    const traceId = '5bf92f3577b34da6a3ce929d0e0e4736';
    await get(port, '/items/5', { traceparent: `00-${traceId}-00f067aa0ba902b7-01` });
    await get(port, '/items/x');
    await get(port, '/nowhere');
    child.process.kill('SIGINT');
    await child.exited;
    const spans = receiver.spans.splice(0);
    const server = spans
      .filter((s) => s.kind === 2)
      .map((s) => {
        const { 'network.peer.port': _peer, 'server.port': _port, ...attributes } = s.attributes;
        return { name: s.name, attributes, status: s.status, parent: s.traceId === traceId ? s.parentSpanId : undefined };
      });
    return { perRequest: spans.length / 3, spans: server };
  }

  test('names the server span after the route exactly as the Koa instrumentation does, in one span per request', async () => {
    const lean = await serverSpansWith({});
    const library = await serverSpansWith({ OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'http,koa,undici' });
    expect(lean.spans).toEqual(library.spans);
    expect(lean.spans).toMatchObject([
      { name: 'GET /items/:id', attributes: { 'http.route': '/items/:id', 'http.response.status_code': 200, 'url.path': '/items/5' }, parent: '00f067aa0ba902b7' },
      { name: 'GET /items/:id', attributes: { 'http.route': '/items/:id', 'http.response.status_code': 422 } },
      { name: 'GET', attributes: { 'http.response.status_code': 404 } },
    ]);
    expect(lean.perRequest).toBe(1);
    expect(library.perRequest).toBeGreaterThan(1);
  });
});

describe('what the preload loads', () => {
  /** The packages a probe sees loaded under the preload with `env`. */
  async function packagesWith(env: Record<string, string>): Promise<string[]> {
    const probe = start(path.join(FIXTURES, 'probe.js'), { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, ...env });
    await probe.exited;
    return (JSON.parse(probe.stdout()) as { packages: string[] }).packages;
  }

  test('NodeSDK\'s exporters, B3 and config-file reader stay unloaded until NodeSDK reads them (otel/nodeSdk.ts)', async () => {
    // All three signals over gRPC, then over OTLP/HTTP: the kit builds its
    // own exporters from the library's parts; NodeSDK's are not needed.
    const grpc = await packagesWith({ OTEL_LOGS_EXPORTER: 'otlp' });
    const overHttp = await packagesWith({ OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' });
    for (const packages of [grpc, overHttp]) {
      expect(packages).toEqual(expect.arrayContaining(['@opentelemetry/sdk-node', '@opentelemetry/sdk-logs', '@opentelemetry/sdk-metrics']));
      const unneeded = ['@opentelemetry/configuration', 'yaml', '@opentelemetry/exporter-zipkin', '@opentelemetry/propagator-b3', '@opentelemetry/exporter-prometheus', '@opentelemetry/exporter-trace-otlp-grpc', '@opentelemetry/exporter-trace-otlp-http', '@opentelemetry/exporter-trace-otlp-proto', '@opentelemetry/exporter-logs-otlp-grpc', '@opentelemetry/exporter-logs-otlp-http', '@opentelemetry/exporter-logs-otlp-proto'];
      expect(packages.filter((name) => unneeded.includes(name))).toEqual([]);
    }
    // The metrics exporters the kit's readers use are the library's own; gRPC's transport only where it is used.
    expect(grpc).toEqual(expect.arrayContaining(['@opentelemetry/exporter-metrics-otlp-grpc', '@grpc/grpc-js']));
    expect(overHttp).toContain('@opentelemetry/exporter-metrics-otlp-proto');
    expect(overHttp.filter((name) => name.includes('grpc'))).toEqual([]);
    // A propagator NodeSDK builds from OTEL_PROPAGATORS is loaded when it does (its behaviour: settingsAtRuntime.test.ts).
    expect(await packagesWith({ OTEL_PROPAGATORS: 'b3' })).toContain('@opentelemetry/propagator-b3');
  });
});

describe('OTEL_SDK_DISABLED=true', () => {
  test('patches nothing and loads no OpenTelemetry module', async () => {
    const enabled = start(path.join(FIXTURES, 'probe.js'), {});
    await enabled.exited;
    // Spans come from the kit's tracer provider (otel/tracer.ts), not NodeSDK's.
    expect(JSON.parse(enabled.stdout())).toMatchObject({ httpPatched: true, tracerProvider: 'KitTracerProvider' });
    // Log records, when exported, come from the kit's logger provider (otel/logger.ts), and NodeSDK registers none beside it.
    const logging = start(path.join(FIXTURES, 'probe.js'), { OTEL_LOGS_EXPORTER: 'console' });
    await logging.exited;
    expect(JSON.parse(logging.stdout())).toMatchObject({ loggerProvider: 'KitLoggerProvider', logsExporter: 'console' });
    expect(logging.stderr()).toBe('');

    const disabled = start(path.join(FIXTURES, 'probe.js'), { OTEL_SDK_DISABLED: 'true' });
    await disabled.exited;
    expect(JSON.parse(disabled.stdout())).toEqual({ httpPatched: false, otelModules: 0, tracerProvider: null, loggerProvider: null, logsExporter: null, packages: [] });
    expect(disabled.stderr()).toBe('');
  });

  test('exports nothing', async () => {
    const child = startServer({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '10' });
    const port = await listeningPort(child);
    expect((await get(port, '/items/9')).status).toBe(200);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(receiver.requests).toHaveLength(0);
    expect(child.stdout()).not.toContain('otel.span');
  });
});

describe('a bad setting', () => {
  test.each([
    ['OTEL_EXPORTER_OTLP_ENDPOINT', { OTEL_EXPORTER_OTLP_ENDPOINT: 'localhost 4317' }],
    ['OTEL_TRACES_EXPORTER', { OTEL_TRACES_EXPORTER: 'otlp,jaeger' }],
    ['OTEL_EXPORTER_OTLP_HEADERS', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_HEADERS: `Authorization Basic ${SECRET}` }],
    ['OTEL_EXPORTER_OTLP_HEADERS', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_HEADERS: `Authorization=Basic%E0%A4%Z${SECRET}` }],
    ['OTEL_EXPORTER_OTLP_HEADERS', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_HEADERS: `Authorization=Basic%C3%A9${SECRET}` }],
    ['OTEL_EXPORTER_OTLP_PROTOCOL', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'thrift' }],
    ['OTEL_TRACES_SAMPLER', { OTEL_TRACES_SAMPLER: 'sometimes' }],
    ['OTEL_PROPAGATORS', { OTEL_PROPAGATORS: 'tracecontext,xray' }],
  ])('%s yields one clear line and a serving, uninstrumented app', async (variable, env) => {
    const child = startServer(env);
    const port = await listeningPort(child);
    expect((await get(port, '/items/1')).status).toBe(200);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    // All of its output, read after the exit: one line, and no span, even from the flush at exit.
    const lines = child.stderr().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(variable);
    expect(lines[0]).toContain('telemetry is off');
    expect(child.stderr()).not.toContain(SECRET);
    expect(child.stdout()).toContain('"msg":"shutting down"');
    expect(child.stdout()).not.toContain('otel.span');
  });
});
