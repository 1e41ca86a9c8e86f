/**
 * The kit under a real PM2 daemon and a real OTLP receiver: every worker is
 * instrumented with the app's settings (even though the daemon was started
 * earlier, elsewhere, with other OTEL_* values), scaling and reloading lose
 * neither requests nor spans, and stopping flushes what was buffered.
 */
import os from 'node:os';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get, startLoad, type Load } from '../helpers/load';
import { waitUntil } from '../helpers/waitUntil';

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
async function hit(count: number, from: number, to = port): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const res = await get(to, `/items/${from + i}`);
    expect(res.status).toBe(200);
  }
}

const itemPaths = (from: number, count: number): Set<string> => new Set(Array.from({ length: count }, (_, i) => `/items/${from + i}`));

/** Waits until `load` has answered `count` more requests than it had: it runs through what happens meanwhile. */
async function answersMore(load: Load, count: number, what: string): Promise<void> {
  const from = load.progress().ok;
  await waitUntil(() => `${count} requests answered ${what}: ${JSON.stringify(load.progress())}, from ${from}`, () => load.progress().ok >= from + count, 30_000);
}

/**
 * Sends requests (`/items/<id>`, from `firstId` on) to `to` until a server span
 * of each of `pids` has arrived: a worker exports its spans in the order they
 * ended, so whatever it ended before has arrived by then.
 */
async function markThrough(pids: number[], firstId: number, to = port): Promise<void> {
  const markers = new Set<string>();
  let id = firstId;
  await waitUntil(
    () => `a marker span from each of ${pids.join(', ')}`,
    async () => {
      if (pids.every((pid) => serverSpans(receiver.spans, (p) => markers.has(p)).some((s) => Number(s.resource['process.pid']) === pid))) return true;
      for (let i = 0; i < 4; i += 1) {
        markers.add(`/items/${id}`);
        await hit(1, id++, to);
      }
      return false;
    },
    30_000,
    400,
  );
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
  const paths = itemPaths(1000, 20);
  const mine = (all: ReceivedSpan[]): ReceivedSpan[] => serverSpans(all, (p) => paths.has(p));
  const spans = await receiver.waitFor((all) => mine(all).length >= 20, 20_000);
  const server = mine(spans);
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
  expect((await get(port, '/items/77', { traceparent: `00-${traceId}-${parent}-01` })).status).toBe(200);
  const spans = await receiver.waitFor((all) => all.some((s) => s.traceId === traceId && s.kind === 2), 10_000);
  const server = spans.find((s) => s.traceId === traceId && s.kind === 2);
  expect(server?.parentSpanId).toBe(parent);
});

test('health checks produce no spans', async () => {
  for (let i = 0; i < 5; i += 1) {
    expect((await get(port, '/healthz')).status).toBe(200);
    expect((await get(port, '/readyz')).status).toBe(200);
  }
  // Anything a worker made of them arrives before its marker.
  const workers = (await pm2.list()).filter((p) => p.name === APP);
  await markThrough(workers.map((w) => w.pid), 5000);
  expect(receiver.spans.filter((s) => /^\/(healthz|readyz)/.test(String(s.attributes['url.path'])))).toEqual([]);
  expect(serverSpans(receiver.spans).length).toBeGreaterThanOrEqual(workers.length);
});

test('pm2 scale to 4 yields spans from 4 instrumented workers', async () => {
  const app = 'e2e-scale';
  const scalePort = await startApp(pm2, app, { OTEL_SERVICE_NAME: SERVICE, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '200' });
  await pm2.run(['scale', app, '4']);
  const workers = await pm2.waitOnline(app, 4);
  // Every worker answers (round-robin makes this quick), and its span arrives.
  await markThrough(workers.map((w) => w.pid), 2000, scalePort);
  const mine = serverSpans(receiver.spans).filter((s) => s.resource['pm2.app.name'] === app);
  expect(pidsOf(mine)).toEqual(new Set(workers.map((p) => p.pid)));
  expect(new Set(mine.map((s) => s.resource['service.name']))).toEqual(new Set([SERVICE]));
  await pm2.run(['delete', app]);
});

test('pm2 reload under steady load fails no request and loses no span', async () => {
  const app = 'e2e-reload';
  const reloadPort = await startApp(pm2, app, { OTEL_SERVICE_NAME: SERVICE, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '200' });
  const before = await pm2.waitOnline(app, 2);
  const load = startLoad({ port: reloadPort, keepAliveClients: 4, oneShotClients: 4, firstId: 100_000 });
  await answersMore(load, 50, 'before the reload');
  const atReload = load.progress().ok;
  await pm2.run(['reload', app]);
  // Requests were answered while the workers were replaced, and go on after.
  expect(load.progress().ok).toBeGreaterThan(atReload);
  await answersMore(load, 50, 'after the reload');
  const result = await load.stop();
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);
  const after = await pm2.waitOnline(app, 2);
  expect(after.filter((w) => before.some((b) => b.pid === w.pid))).toEqual([]);

  const answered = new Set(result.answered.map((id) => `/items/${id}`));
  const spans = await receiver.waitFor((all) => serverSpans(all, (p) => answered.has(p)).length >= answered.size, 30_000);
  const matched = serverSpans(spans, (p) => answered.has(p));
  expect(new Set(matched.map((s) => s.attributes['url.path'])).size).toBe(answered.size);
  // From the old workers and the new ones.
  expect(pidsOf(matched)).toEqual(new Set([...before, ...after].map((w) => w.pid)));
  await pm2.run(['delete', app]);
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
  // The batch delay outlasts the test (its timeout): what arrives, the flush at stop sent.
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
  // The span's line, not the request's access line (written first, the span after its batch delay).
  const spanLine = () => logs.split('\n').find((l) => l.includes('otel.span ') && l.includes('"url.path":"/items/31337"'));
  await waitUntil(
    () => `a console span of /items/31337 in pm2 logs:\n${logs}`,
    async () => {
      logs = await pm2.run(['logs', app, '--nostream', '--lines', '100']);
      return spanLine() !== undefined;
    },
    15_000,
    200,
  );
  const line = spanLine();
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
  const [worker] = (await pm2.list()).filter((p) => p.name === app);
  await pm2.run(['delete', app]);
  // The logs hold the worker's last line (written before it exits), and no secret.
  await waitUntil('the worker\'s "shutting down" line in PM2\'s log', () => pm2.outLog().split('\n').some((l) => l.includes(`"pid":${worker!.pid},`) && l.includes('"msg":"shutting down"')), 10_000);
  expect(pm2.outLog() + pm2.errLog()).not.toContain(secret);
});
