/**
 * The kit under a real PM2 daemon and a real OTLP receiver: every worker is
 * instrumented with the app's settings (even though the daemon was started
 * earlier, elsewhere, with other OTEL_* values), scaling and reloading lose
 * neither requests nor spans, and stopping flushes what was buffered.
 */
import os from 'node:os';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get, startLoad } from '../helpers/load';

jest.setTimeout(120_000);

const APP = 'e2e-cluster';
const SERVICE = 'e2e-koa-service';

let receiver: OtlpReceiver;
let pm2: Pm2;
let port: number;

/** The stale daemon: started from another directory with wrong OTEL_* values. */
const STALE_DAEMON_ENV = {
  OTEL_SERVICE_NAME: 'stale-daemon-service',
  OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9',
  OTEL_EXPORTER_OTLP_HEADERS: 'x-stale-header=from-daemon',
  OTEL_TRACES_EXPORTER: 'console',
  OTEL_SDK_DISABLED: 'false',
};

function serverSpans(spans: ReceivedSpan[], path?: (p: string) => boolean): ReceivedSpan[] {
  return spans.filter((s) => s.kind === 2 && s.attributes['http.route'] === '/items/:id' && (!path || path(String(s.attributes['url.path']))));
}

function pidsOf(spans: ReceivedSpan[]): Set<number> {
  return new Set(spans.map((s) => Number(s.resource['process.pid'])));
}

/** Requests on fresh connections, so PM2's round-robin spreads them over workers. */
async function hit(count: number, from: number): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const res = await get(port, `/items/${from + i}`);
    expect(res.status).toBe(200);
  }
}

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2({ daemonEnv: STALE_DAEMON_ENV, cwd: os.tmpdir() });
  port = await startApp(pm2, APP, {
    OTEL_SERVICE_NAME: SERVICE,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '200',
  });
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

beforeEach(() => receiver.reset());

test('every worker exports server spans named by route, with the app\'s service name, over gRPC', async () => {
  await hit(20, 1000);
  const spans = await receiver.waitFor((all) => pidsOf(serverSpans(all)).size === 2 && serverSpans(all).length === 20, 20_000);
  const server = serverSpans(spans);
  expect(server).toHaveLength(20);
  const workers = (await pm2.list()).filter((p) => p.name === APP);
  expect(pidsOf(server)).toEqual(new Set(workers.map((p) => p.pid)));
  for (const span of server) {
    expect(span.name).toBe('GET /items/:id');
    expect(span.resource['service.name']).toBe(SERVICE);
    expect(span.attributes['http.response.status_code']).toBe(200);
  }
  // One service.instance.id per worker, and PM2's instance numbers on the resource.
  const byPid = new Map(server.map((s) => [s.resource['process.pid'], s.resource]));
  expect(new Set([...byPid.values()].map((r) => r['service.instance.id'])).size).toBe(2);
  expect(new Set([...byPid.values()].map((r) => r['pm2.instance']))).toEqual(new Set([0, 1]));
  expect([...byPid.values()].every((r) => r['pm2.app.name'] === APP)).toBe(true);
  // Nothing from the stale daemon's environment reached the exporter.
  expect(receiver.requests.every((r) => r.transport === 'grpc' && r.headers['x-stale-header'] === undefined)).toBe(true);
  expect(pm2.outLog()).not.toContain('otel.span');
});

test('continues the trace of an incoming W3C traceparent', async () => {
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
  const parent = '00f067aa0ba902b7';
  await get(port, '/items/77', { traceparent: `00-${traceId}-${parent}-01` });
  const spans = await receiver.waitFor((all) => all.some((s) => s.traceId === traceId && s.kind === 2), 10_000);
  const server = spans.find((s) => s.traceId === traceId && s.kind === 2);
  expect(server?.parentSpanId).toBe(parent);
});

test('health checks produce no spans', async () => {
  for (let i = 0; i < 5; i += 1) {
    expect((await get(port, '/healthz')).status).toBe(200);
    expect((await get(port, '/readyz')).status).toBe(200);
  }
  await hit(1, 5000);
  const spans = await receiver.waitFor((all) => serverSpans(all).length === 1, 10_000);
  expect(spans.filter((s) => String(s.attributes['url.path']).endsWith('z'))).toHaveLength(0);
});

test('pm2 scale to 4 yields spans from 4 instrumented workers', async () => {
  await pm2.run(['scale', APP, '4']);
  const workers = await pm2.waitOnline(APP, 4);
  // Keep sending until every worker has answered (round-robin makes this quick).
  for (let round = 0; round < 20 && pidsOf(serverSpans(receiver.spans)).size < 4; round += 1) {
    await hit(8, 2000 + round * 8);
    await new Promise((resolve) => setTimeout(resolve, 400));
  }
  const pids = pidsOf(serverSpans(receiver.spans));
  expect(pids).toEqual(new Set(workers.map((p) => p.pid)));
  expect(new Set(serverSpans(receiver.spans).map((s) => s.resource['service.name']))).toEqual(new Set([SERVICE]));
});

test('pm2 reload under steady load fails no request and loses no span', async () => {
  const load = startLoad({ port, keepAliveClients: 4, oneShotClients: 4, firstId: 100_000 });
  await new Promise((resolve) => setTimeout(resolve, 500));
  await pm2.run(['reload', APP]);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const result = await load.stop();
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBeGreaterThan(100);

  const answered = new Set(result.answered.map((id) => `/items/${id}`));
  const spans = await receiver.waitFor((all) => serverSpans(all, (p) => answered.has(p)).length >= answered.size, 30_000);
  const matched = serverSpans(spans, (p) => answered.has(p));
  expect(new Set(matched.map((s) => s.attributes['url.path'])).size).toBe(answered.size);
  await pm2.waitOnline(APP, 4);
});

test('pm2 stop right after traffic loses no span, even with a long batch delay', async () => {
  const app = 'e2e-stop';
  const stopPort = await startApp(pm2, app, {
    OTEL_SERVICE_NAME: 'e2e-stop',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    // Nothing is exported on the timer within the test: only the shutdown flush delivers.
    OTEL_BSP_SCHEDULE_DELAY: '60000',
  });
  for (let i = 0; i < 30; i += 1) expect((await get(stopPort, `/items/${i}`)).status).toBe(200);
  expect(receiver.spans.filter((s) => s.resource['service.name'] === 'e2e-stop')).toHaveLength(0);
  await pm2.run(['stop', app]);
  const spans = await receiver.waitFor((all) => serverSpans(all).filter((s) => s.resource['service.name'] === 'e2e-stop').length >= 30, 15_000);
  expect(serverSpans(spans).filter((s) => s.resource['service.name'] === 'e2e-stop')).toHaveLength(30);
  await pm2.run(['delete', app]);
});

test('console export is visible through pm2 logs when no endpoint is set', async () => {
  const app = 'e2e-console';
  const consolePort = await startApp(pm2, app, { OTEL_BSP_SCHEDULE_DELAY: '100' }, 1);
  expect((await get(consolePort, '/items/31337')).status).toBe(200);
  let logs = '';
  for (let i = 0; i < 50 && !logs.includes('/items/31337'); i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    logs = await pm2.run(['logs', app, '--nostream', '--lines', '100']);
  }
  const line = logs.split('\n').find((l) => l.includes('otel.span ') && l.includes('"url.path":"/items/31337"'));
  expect(line).toBeDefined();
  const span = JSON.parse(line!.slice(line!.indexOf('otel.span ') + 'otel.span '.length)) as Record<string, unknown>;
  expect(span).toMatchObject({ name: 'GET /items/:id', kind: 'SERVER', 'service.name': app });
  await pm2.run(['delete', app]);
});

test('http/protobuf delivers the decoded auth header, which no log shows', async () => {
  const app = 'e2e-http';
  const secret = 'dXNlcjpzM2NyZXQtZTJl';
  const httpPort = await startApp(
    pm2,
    app,
    {
      OTEL_SERVICE_NAME: 'e2e-http',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
      OTEL_EXPORTER_OTLP_HEADERS: `Authorization=Basic%20${secret}`,
      OTEL_BSP_SCHEDULE_DELAY: '100',
    },
    1,
  );
  expect((await get(httpPort, '/items/12')).status).toBe(200);
  await receiver.waitFor((all) => all.some((s) => s.resource['service.name'] === 'e2e-http' && s.kind === 2), 15_000);
  const request = receiver.requests.find((r) => r.transport === 'http');
  expect(request?.headers.authorization).toBe(`Basic ${secret}`);
  await pm2.run(['delete', app]);
  expect(pm2.outLog() + pm2.errLog()).not.toContain(secret);
});
