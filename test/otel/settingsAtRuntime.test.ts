/**
 * The telemetry settings of the README's table, each exercised where it acts:
 * the preload in a child process (`node -r dist/otel/register.js`), exporting
 * to a real OTLP receiver. Parsing alone is tested in `settings.test.ts`.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { FIXTURES, listeningPort, SERVER, startChild, type Child } from '../helpers/child';
import { get } from '../helpers/load';

jest.setTimeout(90_000);

let receiver: OtlpReceiver;
const children: Child[] = [];
const cleanups: (() => Promise<void>)[] = [];

function start(script: string, env: Record<string, string>): Child {
  const child = startChild(script, env);
  children.push(child);
  return child;
}

/** The kit's server on a random port, under the preload. */
function startServer(env: Record<string, string>): Child {
  return start(SERVER, { HOST: '127.0.0.1', PORT: '0', ...env });
}

/** A fixture that prints `READY <port>`; resolves with the port. */
async function fixturePort(child: Child): Promise<number> {
  return Number((await child.waitForLine(/^READY \d+/)).split(' ')[1]);
}

/** SIGINT to the kit's server: it drains, flushes every span, and exits 0. */
async function stopAndFlush(child: Child): Promise<void> {
  child.process.kill('SIGINT');
  expect(await child.exited).toEqual({ code: 0, signal: null });
}

/** SIGTERM to a fixture without handlers: the preload flushes, then lets the signal act. */
async function terminateAndFlush(child: Child): Promise<void> {
  child.process.kill('SIGTERM');
  expect((await child.exited).signal).toBe('SIGTERM');
}

function serverSpans(spans: ReceivedSpan[]): ReceivedSpan[] {
  return spans.filter((s) => s.kind === 2);
}

/** Resolves once `condition()` holds, polling; rejects with `what` after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * GETs every path, `concurrency` at a time over keep-alive connections, and
 * resolves with the status of each (in order).
 */
async function getAll(port: number, requests: { path: string; headers?: Record<string, string> }[], concurrency = 8): Promise<number[]> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const statuses: number[] = new Array<number>(requests.length).fill(0);
  let next = 0;
  const one = (index: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const { path: target, headers = {} } = requests[index] ?? { path: '/' };
      const req = http.get({ host: '127.0.0.1', port, path: target, headers, agent, timeout: 10_000 }, (res) => {
        res.resume();
        res.on('end', () => {
          statuses[index] = res.statusCode ?? 0;
          resolve();
        });
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
    });
  const worker = async (): Promise<void> => {
    while (next < requests.length) await one(next++);
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }
  return statuses;
}

beforeAll(async () => {
  receiver = await startReceiver();
});

afterEach(async () => {
  await Promise.all(children.splice(0).map((child) => child.stop()));
  await Promise.all(cleanups.splice(0).map((cleanup) => cleanup()));
  receiver.setFailure('none');
  receiver.reset();
});

afterAll(async () => {
  await receiver.close();
});

describe('OTEL_TRACES_SAMPLER with OTEL_TRACES_SAMPLER_ARG=0.25', () => {
  const RATIO = 0.25;
  const ROOTS = 2000;
  const WITH_PARENT = 200;

  /** Bounds on a binomial count: mean ± 5 standard deviations (a false failure about once in 1.7 million runs). */
  function bounds(n: number): [number, number] {
    const sigma = Math.sqrt(n * RATIO * (1 - RATIO));
    return [n * RATIO - 5 * sigma, n * RATIO + 5 * sigma];
  }

  /**
   * Sends ROOTS requests without a parent, then WITH_PARENT with a sampled
   * and WITH_PARENT with an unsampled `traceparent` (random trace ids);
   * returns how many of each got a span, after checking every one was answered.
   */
  async function sampledShares(sampler: string): Promise<{ roots: number; sampledParent: number; unsampledParent: number }> {
    const child = startServer({
      OTEL_SERVICE_NAME: `sampler-${sampler}`,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_TRACES_SAMPLER: sampler,
      OTEL_TRACES_SAMPLER_ARG: String(RATIO),
      OTEL_BSP_SCHEDULE_DELAY: '200',
    });
    const port = await listeningPort(child);
    const parent = (flags: string): string => `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-${flags}`;
    const requests = [
      ...Array.from({ length: ROOTS }, (_, i) => ({ path: `/items/${i}` })),
      ...Array.from({ length: WITH_PARENT }, (_, i) => ({ path: `/items/${100_000 + i}`, headers: { traceparent: parent('01') } })),
      ...Array.from({ length: WITH_PARENT }, (_, i) => ({ path: `/items/${200_000 + i}`, headers: { traceparent: parent('00') } })),
    ];
    const statuses = await getAll(port, requests);
    // Unsampled requests are answered like the others.
    expect(statuses.filter((status) => status !== 200)).toEqual([]);
    await stopAndFlush(child);

    const ids = serverSpans(receiver.spans).map((s) => Number(String(s.attributes['url.path']).slice('/items/'.length)));
    expect(new Set(ids).size).toBe(ids.length);
    return {
      roots: ids.filter((id) => id < 100_000).length,
      sampledParent: ids.filter((id) => id >= 100_000 && id < 200_000).length,
      unsampledParent: ids.filter((id) => id >= 200_000).length,
    };
  }

  test('traceidratio samples a quarter of all traces, whatever the parent says', async () => {
    const shares = await sampledShares('traceidratio');
    const [low, high] = bounds(ROOTS);
    expect(shares.roots).toBeGreaterThanOrEqual(low);
    expect(shares.roots).toBeLessThanOrEqual(high);
    const [parentLow, parentHigh] = bounds(WITH_PARENT * 2);
    expect(shares.sampledParent + shares.unsampledParent).toBeGreaterThanOrEqual(parentLow);
    expect(shares.sampledParent + shares.unsampledParent).toBeLessThanOrEqual(parentHigh);
  });

  test('parentbased_traceidratio samples a quarter of new traces and follows the parent\'s decision', async () => {
    const shares = await sampledShares('parentbased_traceidratio');
    const [low, high] = bounds(ROOTS);
    expect(shares.roots).toBeGreaterThanOrEqual(low);
    expect(shares.roots).toBeLessThanOrEqual(high);
    expect(shares.sampledParent).toBe(WITH_PARENT);
    expect(shares.unsampledParent).toBe(0);
  });
});

test('OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT and OTEL_ATTRIBUTE_COUNT_LIMIT cut the server span\'s attributes as the SDK would', async () => {
  const child = startServer({
    OTEL_SERVICE_NAME: 'span-limits',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: '6',
    OTEL_ATTRIBUTE_COUNT_LIMIT: '4',
    OTEL_BSP_SCHEDULE_DELAY: '60000',
  });
  const port = await listeningPort(child);
  expect((await get(port, '/items/123456789')).status).toBe(200);
  await stopAndFlush(child);
  const [span] = serverSpans(receiver.spans);
  // The first four request attributes, each value cut to 6 characters; the rest dropped.
  expect(span?.attributes).toEqual({ 'http.request.method': 'GET', 'url.scheme': 'http', 'server.address': '127.0.', 'network.peer.address': '127.0.' });
  expect(span?.name).toBe('GET /items/:id');
});

describe('OTEL_PROPAGATORS', () => {
  const TRACE_ID = '80f198ee56343ba864fe8b2a57d3eff7';
  const PARENT = 'e457b5a2e4d86bd1';

  interface Downstream {
    via: string;
    traceparent: string | null;
    b3: string | null;
    b3multi: { traceId: string | null; spanId: string | null; sampled: string | null };
  }

  /** One request to the outgoing fixture, which calls downstream with http and fetch; returns what downstream saw and the spans. */
  async function callThrough(propagators: string, headers: Record<string, string>): Promise<{ downstream: Downstream[]; spans: ReceivedSpan[] }> {
    const child = start(path.join(FIXTURES, 'outgoing.js'), {
      OTEL_SERVICE_NAME: `propagators-${propagators}`,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_PROPAGATORS: propagators,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await fixturePort(child);
    const response = await get(port, '/', headers);
    const downstream = JSON.parse(response.body) as Downstream[];
    expect(downstream.map((d) => d.via)).toEqual(['/via-http', '/via-fetch']);
    await terminateAndFlush(child);
    return { downstream, spans: receiver.spans };
  }

  /** The server span of the fixture's own request (the downstream service's are in the same process). */
  function upstream(spans: ReceivedSpan[]): ReceivedSpan[] {
    return serverSpans(spans).filter((s) => s.attributes['url.path'] === '/');
  }

  /** The upstream server span continues the incoming trace; its two client spans are the downstream requests' parents. */
  function expectContinued(spans: ReceivedSpan[], downstreamParents: (string | null)[]): void {
    const server = upstream(spans);
    expect(server).toHaveLength(1);
    expect(server[0]).toMatchObject({ traceId: TRACE_ID, parentSpanId: PARENT });
    const clients = spans.filter((s) => s.kind === 3);
    expect(clients).toHaveLength(2);
    for (const client of clients) expect(client).toMatchObject({ traceId: TRACE_ID, parentSpanId: server[0]?.spanId });
    expect(new Set(downstreamParents)).toEqual(new Set(clients.map((s) => s.spanId)));
  }

  test('b3 continues an incoming single b3 header and sends b3 on outgoing calls', async () => {
    const { downstream, spans } = await callThrough('b3', { b3: `${TRACE_ID}-${PARENT}-1` });
    for (const call of downstream) {
      expect(call.b3).toMatch(new RegExp(`^${TRACE_ID}-[0-9a-f]{16}-1$`));
      expect(call.traceparent).toBeNull();
      expect(call.b3multi.traceId).toBeNull();
    }
    expectContinued(spans, downstream.map((d) => d.b3?.split('-')[1] ?? null));
  });

  test('b3multi continues incoming X-B3-* headers and sends them on outgoing calls', async () => {
    const { downstream, spans } = await callThrough('b3multi', { 'X-B3-TraceId': TRACE_ID, 'X-B3-SpanId': PARENT, 'X-B3-Sampled': '1' });
    for (const call of downstream) {
      expect(call.b3multi).toEqual({ traceId: TRACE_ID, spanId: expect.stringMatching(/^[0-9a-f]{16}$/), sampled: '1' });
      expect(call.b3).toBeNull();
      expect(call.traceparent).toBeNull();
    }
    expectContinued(spans, downstream.map((d) => d.b3multi.spanId));
  });

  test('none neither continues an incoming trace nor sends any trace header', async () => {
    const { downstream, spans } = await callThrough('none', {
      traceparent: `00-${TRACE_ID}-${PARENT}-01`,
      b3: `${TRACE_ID}-${PARENT}-1`,
    });
    for (const call of downstream) expect(call).toMatchObject({ traceparent: null, b3: null, b3multi: { traceId: null, spanId: null, sampled: null } });
    // New traces, recorded all the same (a root is sampled by the default
    // sampler), and downstream's requests each start one of their own.
    const server = serverSpans(spans);
    expect(server).toHaveLength(3);
    expect(new Set(server.map((s) => s.traceId)).size).toBe(3);
    for (const span of server) expect(span).toMatchObject({ traceId: expect.not.stringMatching(TRACE_ID), parentSpanId: '' });
  });
});

describe('OTEL_NODE_RESOURCE_DETECTORS', () => {
  const DETECTED = ['host.name', 'host.arch', 'os.type', 'process.pid', 'process.runtime.name', 'service.instance.id'];

  test('none: no detected attributes, but the service name and OTEL_RESOURCE_ATTRIBUTES still apply', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'detectors-none',
      OTEL_RESOURCE_ATTRIBUTES: 'service.version=9.9.9,deployment.environment.name=test',
      OTEL_NODE_RESOURCE_DETECTORS: 'none',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      // Metrics give each process its own service.instance.id whatever the
      // detectors (their series must not mix): off here, to see the detectors alone.
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/1')).status).toBe(200);
    await stopAndFlush(child);
    const resource = serverSpans(receiver.spans)[0]?.resource ?? {};
    expect(resource).toMatchObject({
      'service.name': 'detectors-none',
      'service.version': '9.9.9',
      'deployment.environment.name': 'test',
      'telemetry.sdk.language': 'nodejs',
    });
    for (const key of DETECTED) expect(resource).not.toHaveProperty([key]);
  });

  test.each([
    ['refuses connections', false],
    ['accepts connections and never answers', true],
  ])('aws where no AWS metadata service is (the address %s) adds nothing, and spans do not wait for the EC2 detector\'s 5 s', async (_case, blackHole) => {
    // The EC2 detector asks the link-local metadata address; a stub sends it to a local port instead.
    const sockets = new Set<net.Socket>();
    const metadata = net.createServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => metadata.listen(0, '127.0.0.1', resolve));
    const stubPort = (metadata.address() as net.AddressInfo).port;
    if (!blackHole) await new Promise<void>((resolve) => metadata.close(() => resolve()));
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy();
      if (blackHole) await new Promise<void>((resolve) => metadata.close(() => resolve()));
    });

    const child = startServer({
      NODE_OPTIONS: `--require ${path.join(FIXTURES, 'cloud-metadata-stub.js')}`,
      CLOUD_METADATA_STUB_PORT: String(stubPort),
      OTEL_SERVICE_NAME: 'detectors-aws',
      OTEL_NODE_RESOURCE_DETECTORS: 'env,host,os,process,serviceinstance,container,aws',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_BSP_SCHEDULE_DELAY: '100',
    });
    const port = await listeningPort(child);
    const sent = Date.now();
    expect((await get(port, '/items/1')).status).toBe(200);
    const spans = await receiver.waitFor((all) => serverSpans(all).length === 1, 15_000);
    const elapsed = Date.now() - sent;
    // Exports wait for detection to finish; the EC2 detector alone would give up only after 5 s.
    expect(elapsed).toBeLessThan(3000);
    if (blackHole) expect(sockets.size).toBeGreaterThan(0);
    const resource = serverSpans(spans)[0]?.resource ?? {};
    expect(resource['service.name']).toBe('detectors-aws');
    expect(typeof resource['host.name']).toBe('string');
    expect(Object.keys(resource).filter((key) => key.startsWith('cloud.') || key.startsWith('aws.'))).toEqual([]);
    await stopAndFlush(child);
  });
});

test('OTEL_NODE_EXCLUDED_URLS=/skip: that path gets no span, /healthz now does', async () => {
  const child = startServer({
    OTEL_SERVICE_NAME: 'excluded',
    OTEL_NODE_EXCLUDED_URLS: '/skip',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '60000',
  });
  const port = await listeningPort(child);
  expect((await get(port, '/skip')).status).toBe(404);
  expect((await get(port, '/skip?x=1')).status).toBe(404);
  expect((await get(port, '/healthz')).status).toBe(200);
  expect((await get(port, '/items/7')).status).toBe(200);
  // Everything ended is flushed before the exit.
  await stopAndFlush(child);
  expect(serverSpans(receiver.spans).map((s) => s.attributes['url.path'])).toEqual(['/healthz', '/items/7']);
});

describe('OTLP export settings', () => {
  test('http/json: the spans arrive as OTLP/JSON, decoded field for field', async () => {
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const child = startServer({
      OTEL_SERVICE_NAME: 'http-json',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    const before = BigInt(Date.now()) * 1_000_000n;
    expect((await get(port, '/items/5', { traceparent: `00-${traceId}-b7ad6b7169203331-01` })).status).toBe(200);
    await stopAndFlush(child);
    expect(receiver.requests.length).toBeGreaterThan(0);
    for (const request of receiver.requests) {
      expect(request).toMatchObject({ transport: 'http', path: '/v1/traces', accepted: true });
      expect(request.headers['content-type']).toBe('application/json');
    }
    const [span, ...others] = serverSpans(receiver.spans);
    expect(others).toEqual([]);
    expect(span).toMatchObject({
      traceId,
      spanId: expect.stringMatching(/^[0-9a-f]{16}$/),
      parentSpanId: 'b7ad6b7169203331',
      name: 'GET /items/:id',
      kind: 2,
      status: { code: 0 },
      scope: 'koa-pm2-otel/http-server',
      attributes: { 'http.route': '/items/:id', 'http.response.status_code': 200, 'url.path': '/items/5', 'http.request.method': 'GET' },
      resource: { 'service.name': 'http-json', 'process.pid': child.process.pid },
    });
    expect(span?.startTimeUnixNano).toBeGreaterThanOrEqual(before);
    expect(span?.endTimeUnixNano).toBeGreaterThanOrEqual(span?.startTimeUnixNano ?? 0n);
  });

  test('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as is: a custom path, and the base endpoint ignored', async () => {
    const custom = await startReceiver({ httpPaths: ['/custom/traces'] });
    cleanups.push(() => custom.close());
    const child = startServer({
      OTEL_SERVICE_NAME: 'traces-endpoint',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${custom.httpUrl}/custom/traces`,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/2')).status).toBe(200);
    await stopAndFlush(child);
    expect(serverSpans(custom.spans).map((s) => s.attributes['url.path'])).toEqual(['/items/2']);
    expect(custom.requests.map((r) => r.path)).toEqual(['/custom/traces']);
    expect(receiver.requests).toEqual([]);
  });

  test('OTEL_TRACES_EXPORTER=otlp,console: the same span reaches the receiver and stdout', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'two-exporters',
      OTEL_TRACES_EXPORTER: 'otlp,console',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/11')).status).toBe(200);
    await stopAndFlush(child);
    const received = serverSpans(receiver.spans);
    expect(received).toHaveLength(1);
    const printed = child
      .stdout()
      .split('\n')
      .filter((line) => line.startsWith('otel.span '))
      .map((line) => JSON.parse(line.slice('otel.span '.length)) as { traceId: string; spanId: string; kind: string; name: string });
    expect(printed.filter((s) => s.kind === 'SERVER')).toEqual([
      expect.objectContaining({ traceId: received[0]?.traceId, spanId: received[0]?.spanId, name: 'GET /items/:id' }),
    ]);
  });

  test.each<[string, Record<string, string>, string | undefined]>([
    ['OTEL_EXPORTER_OTLP_COMPRESSION=gzip: exports gzip-compressed', { OTEL_EXPORTER_OTLP_COMPRESSION: 'gzip' }, 'gzip'],
    [
      'OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=gzip over a generic none: exports gzip-compressed',
      { OTEL_EXPORTER_OTLP_COMPRESSION: 'none', OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: 'gzip' },
      'gzip',
    ],
    ['no compression setting: exports uncompressed', {}, undefined],
  ])('%s', async (_case, env, encoding) => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'compression',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
      ...env,
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/3')).status).toBe(200);
    await stopAndFlush(child);
    expect(serverSpans(receiver.spans)).toHaveLength(1);
    expect(receiver.requests.length).toBeGreaterThan(0);
    for (const request of receiver.requests) expect(request.headers['content-encoding']).toBe(encoding);
  });

  test.each([
    ['OTEL_EXPORTER_OTLP_TIMEOUT=500', { OTEL_EXPORTER_OTLP_TIMEOUT: '500' }],
    ['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=500 over a generic 60000', { OTEL_EXPORTER_OTLP_TIMEOUT: '60000', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '500' }],
  ])('%s: an export to a collector that never answers fails after that long, not 10 s', async (_case, env) => {
    // Accepts connections and never answers.
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    const child = startServer({
      OTEL_SERVICE_NAME: 'timeout',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`,
      OTEL_BSP_SCHEDULE_DELAY: '50',
      ...env,
    });
    const port = await listeningPort(child);
    expect((await get(port, '/items/4')).status).toBe(200);
    const sent = Date.now();
    await until(() => child.stderr().includes('cannot export spans'), 'the outage line');
    expect(Date.now() - sent).toBeLessThan(4000);
    expect(sockets.size).toBeGreaterThan(0);
  });
});

describe('OTEL_NODE_ENABLED_INSTRUMENTATIONS beyond the lean set', () => {
  test('all: the bundle is loaded (Koa spans) and each request still has exactly one server span', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'bundle-all',
      OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'all',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    for (const id of [1, 2, 3]) expect((await get(port, `/items/${id}`)).status).toBe(200);
    await stopAndFlush(child);
    const server = serverSpans(receiver.spans);
    expect(server.map((s) => [s.attributes['url.path'], s.scope])).toEqual([
      ['/items/1', 'koa-pm2-otel/http-server'],
      ['/items/2', 'koa-pm2-otel/http-server'],
      ['/items/3', 'koa-pm2-otel/http-server'],
    ]);
    const koa = receiver.spans.filter((s) => s.scope === '@opentelemetry/instrumentation-koa');
    expect(koa.length).toBeGreaterThanOrEqual(3);
    for (const span of koa) expect(server.map((s) => s.spanId)).toContain(span.parentSpanId);
  });

  test('http,undici,dns: the dns instrumentation records lookups under the server span, which is the only one per request', async () => {
    const child = start(path.join(FIXTURES, 'lookup.js'), {
      OTEL_SERVICE_NAME: 'bundle-dns',
      OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'http,undici,dns',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await fixturePort(child);
    for (let i = 0; i < 2; i += 1) expect(JSON.parse((await get(port, `/lookup/${i}`)).body)).toHaveProperty('address');
    await terminateAndFlush(child);
    const server = serverSpans(receiver.spans);
    expect(server.map((s) => [s.attributes['url.path'], s.scope])).toEqual([
      ['/lookup/0', 'koa-pm2-otel/http-server'],
      ['/lookup/1', 'koa-pm2-otel/http-server'],
    ]);
    // One lookup per request, under its server span (`listen` made one more, at start, outside any request).
    const lookups = receiver.spans.filter((s) => s.scope === '@opentelemetry/instrumentation-dns' && s.parentSpanId !== '');
    expect(lookups.map((s) => [s.name, s.attributes['peer.ipv4']])).toEqual([
      ['dns.lookup', '127.0.0.1'],
      ['dns.lookup', '127.0.0.1'],
    ]);
    expect(lookups.map((s) => s.parentSpanId).sort()).toEqual(server.map((s) => s.spanId).sort());
    // Only what was listed: no net, koa or other instrumentation of the bundle.
    expect(new Set(receiver.spans.map((s) => s.scope))).toEqual(new Set(['koa-pm2-otel/http-server', '@opentelemetry/instrumentation-dns']));
  });
});
