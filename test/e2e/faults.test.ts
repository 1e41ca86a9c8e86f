/**
 * Faults under a real PM2 daemon and a real OTLP receiver: an error in a
 * handler is answered 500 and recorded on the span without hurting the
 * worker; an uncaught exception, an unhandled rejection or a SIGKILL takes
 * one worker down, PM2 replaces it with an instrumented one, and the other
 * worker serves throughout. A crashing worker flushes the spans it buffered.
 */
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { freePort, startPm2, type Pm2, type Pm2ProcessInfo } from '../helpers/pm2';
import { get, startLoad, type Load } from '../helpers/load';
import { waitUntil } from '../helpers/waitUntil';

jest.setTimeout(120_000);

const SERVICE = 'e2e-faults-service';

let receiver: OtlpReceiver;
let pm2: Pm2;
/** Apps to delete after each test: every test starts its own. */
const apps: string[] = [];

function appEnv(app: string, appPort: number, extra: Record<string, string> = {}): Record<string, string> {
  return {
    APP_NAME: app,
    WEB_CONCURRENCY: '2',
    HOST: '127.0.0.1',
    PORT: String(appPort),
    ENABLE_TEST_ROUTES: 'true',
    OTEL_SERVICE_NAME: SERVICE,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '200',
    ...extra,
  };
}

async function workers(app: string): Promise<Pm2ProcessInfo[]> {
  return (await pm2.list()).filter((p) => p.name === app).sort((a, b) => a.pm_id - b.pm_id);
}

/** Starts the kit as `app` (2 workers, exporting to the receiver), for one test; returns its port and workers. */
async function startFaultsApp(app: string, extra: Record<string, string> = {}): Promise<{ port: number; workers: Pm2ProcessInfo[] }> {
  const port = await freePort();
  apps.push(app);
  await pm2.run(['start', 'ecosystem.config.js'], { env: appEnv(app, port, extra) });
  return { port, workers: await pm2.waitOnline(app, 2) };
}

/** Waits until PM2 runs a new, online process in place of `old` (same pm_id, another pid). */
async function waitReplaced(app: string, old: Pm2ProcessInfo, timeoutMs = 20_000): Promise<Pm2ProcessInfo> {
  let last: Pm2ProcessInfo[] = [];
  return waitUntil(
    () => `${app}: pm_id ${old.pm_id} (pid ${old.pid}) was not replaced: ${JSON.stringify(last)}\n${pm2.errLog().slice(-3000)}`,
    async () => {
      last = await workers(app);
      const now = last.find((p) => p.pm_id === old.pm_id);
      return now && now.pid > 0 && now.pid !== old.pid && now.status === 'online' ? now : undefined;
    },
    timeoutMs,
  );
}

/** Waits until `load` has answered `count` more requests than it had: it runs through what happens meanwhile. */
async function answersMore(load: Load, count: number, what: string): Promise<void> {
  const from = load.progress().ok;
  await waitUntil(() => `${count} requests answered ${what}: ${JSON.stringify(load.progress())}, from ${from}`, () => load.progress().ok >= from + count, 30_000);
}

/** Waits for spans like `receiver.waitFor`, and on a timeout says what the workers logged. */
async function waitForSpans(predicate: (spans: ReceivedSpan[]) => boolean, timeoutMs: number): Promise<ReceivedSpan[]> {
  try {
    return await receiver.waitFor(predicate, timeoutMs);
  } catch (error) {
    throw new Error(`${error instanceof Error ? error.message : String(error)}\nworkers' stderr:\n${pm2.errLog().slice(-3000)}`);
  }
}

function pidOf(span: ReceivedSpan): number {
  return Number(span.resource['process.pid']);
}

function isServer(span: ReceivedSpan, path: string): boolean {
  return span.kind === 2 && span.attributes['url.path'] === path;
}

/** Sends GETs on fresh connections until a server span of `pid` arrives; returns it. */
async function spanFrom(port: number, pid: number, firstId: number): Promise<ReceivedSpan> {
  const mine = (s: ReceivedSpan): boolean => s.kind === 2 && pidOf(s) === pid && String(s.attributes['url.path']).startsWith('/items/');
  for (let round = 0; round < 20 && !receiver.spans.some(mine); round += 1) {
    for (let i = 0; i < 4; i += 1) expect((await get(port, `/items/${firstId + round * 4 + i}`)).status).toBe(200);
    await receiver.waitFor((all) => all.some(mine), 1000).catch(() => undefined);
  }
  const spans = await waitForSpans((all) => all.some(mine), 5000);
  return spans.find(mine)!;
}

/**
 * Log lines of `kind` (e.g. 'uncaught exception') written by `pid`, once PM2
 * has written the first: call it once the worker has exited, so that it can
 * write no more.
 */
async function crashLines(kind: string, pid: number): Promise<number> {
  const count = (): number => pm2.errLog().split('\n').filter((l) => l.includes(`"msg":"${kind}: the worker exits"`) && l.includes(`"pid":${pid},`)).length;
  await waitUntil(`a "${kind}" line from ${pid}`, () => count() > 0, 5000);
  return count();
}

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
});

afterEach(async () => {
  for (const app of apps.splice(0)) await pm2.run(['delete', app]).catch(() => undefined);
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

beforeEach(() => receiver.reset());

test('an exception in a handler answers a plain 500, is recorded on the server span, and the worker keeps serving', async () => {
  const APP = 'e2e-faults-handler';
  const { port, workers: before } = await startFaultsApp(APP);
  const N = 10;
  const bodies: string[] = [];
  for (let i = 0; i < N; i += 1) {
    const res = await get(port, '/_test/error');
    expect(res.status).toBe(500);
    bodies.push(res.body);
  }
  expect(new Set(bodies)).toEqual(new Set(['{"error":"Internal Server Error","status":500}']));

  const spans = await waitForSpans((all) => all.filter((s) => isServer(s, '/_test/error')).length >= N, 15_000);
  const errors = spans.filter((s) => isServer(s, '/_test/error'));
  expect(errors).toHaveLength(N);
  expect(errors.filter((s) => s.status.code === 2)).toHaveLength(N);
  expect(errors.filter((s) => s.attributes['http.response.status_code'] === 500)).toHaveLength(N);
  const recorded = errors.filter((s) => s.events.some((e) => e.name === 'exception' && e.attributes['exception.message'] === 'injected handler error'));
  expect(recorded).toHaveLength(N);
  // Round-robin spread the errors over both workers, and neither went away.
  expect(new Set(errors.map(pidOf))).toEqual(new Set(before.map((p) => p.pid)));
  for (let i = 0; i < 2 * before.length; i += 1) expect((await get(port, '/items/1')).status).toBe(200);
  const after = await workers(APP);
  expect(after.map((p) => [p.pm_id, p.pid, p.restarts, p.status])).toEqual(before.map((p) => [p.pm_id, p.pid, p.restarts, 'online']));
  // Logged once per error, with the request (each line is written before its answer, PM2 copies it to its file later).
  const logged = (): string[] => pm2.errLog().split('\n').filter((l) => l.includes('"msg":"request failed"') && l.includes('"path":"/_test/error"'));
  await waitUntil(() => `${N} "request failed" lines, got ${logged().length}`, () => logged().length >= N, 10_000);
  expect(logged()).toHaveLength(N);
});

test('an uncaught exception: the worker flushes its spans and exits, PM2 replaces it with an instrumented worker, the other serves throughout', async () => {
  // Spans are exported only by a flush here: the batch delay is longer than
  // the test, and the batch size larger than anything it sends.
  const app = 'e2e-faults-flush';
  const { port: appPort, workers: before } = await startFaultsApp(app, {
    OTEL_BSP_SCHEDULE_DELAY: '60000',
    OTEL_BSP_MAX_QUEUE_SIZE: '8192',
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '8192',
  });

  // N requests on fresh connections; /_test/stats says which worker answered.
  const N = 20;
  const servedBy = new Map<number, number>();
  for (let i = 0; i < N; i += 1) {
    const res = await get(appPort, '/_test/stats');
    expect(res.status).toBe(200);
    const { pid } = JSON.parse(res.body) as { pid: number };
    servedBy.set(pid, (servedBy.get(pid) ?? 0) + 1);
  }
  expect(new Set(servedBy.keys())).toEqual(new Set(before.map((p) => p.pid)));

  const load = startLoad({ port: appPort, keepAliveClients: 0, oneShotClients: 3, firstId: 500_000, pauseMs: 5 });
  await answersMore(load, 20, 'before the crash');
  const crash = await get(appPort, '/_test/uncaught');
  expect(crash.status).toBe(202);
  const crashedPid = (JSON.parse(crash.body) as { pid: number }).pid;
  const crashed = before.find((p) => p.pid === crashedPid)!;
  const survivor = before.find((p) => p.pid !== crashedPid)!;
  expect(crashed).toBeDefined();

  // Only the crash flush can deliver these now: every /_test/stats span of the
  // crashed worker arrives, and none of the other (it still holds its own: its
  // batch delay outlasts the test, and they arrive when it stops, below).
  const fromCrashed = (all: ReceivedSpan[]): ReceivedSpan[] => all.filter((s) => isServer(s, '/_test/stats') && pidOf(s) === crashedPid);
  const spans = await waitForSpans((all) => fromCrashed(all).length >= servedBy.get(crashedPid)! && all.some((s) => isServer(s, '/_test/uncaught')), 15_000);
  expect(fromCrashed(spans)).toHaveLength(servedBy.get(crashedPid)!);
  expect(spans.filter((s) => isServer(s, '/_test/uncaught') && pidOf(s) === crashedPid)).toHaveLength(1);
  expect(spans.filter((s) => isServer(s, '/_test/stats') && pidOf(s) === survivor.pid)).toHaveLength(0);

  const replacement = await waitReplaced(app, crashed);
  expect(replacement.restarts).toBe(crashed.restarts + 1);
  // The load runs on with the replacement in place.
  await answersMore(load, 20, 'after the replacement');
  const result = await load.stop();
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);

  const after = await workers(app);
  expect(after.find((p) => p.pm_id === survivor.pm_id)).toMatchObject({ pid: survivor.pid, restarts: survivor.restarts, status: 'online' });
  expect(await crashLines('uncaught exception', crashedPid)).toBe(1);

  // The replacement is instrumented: stopping the app flushes what both
  // workers hold, and then every answered request has its one server span,
  // some of them from the replacement, all with the app's service name.
  for (let i = 0; i < 4; i += 1) expect((await get(appPort, `/items/${900_000 + i}`)).status).toBe(200);
  await pm2.run(['stop', app]);
  const answered = new Set([...result.answered, 900_000, 900_001, 900_002, 900_003].map((id) => `/items/${id}`));
  const isAnswered = (s: ReceivedSpan): boolean => s.kind === 2 && answered.has(String(s.attributes['url.path']));
  const all = await waitForSpans((received) => new Set(received.filter(isAnswered).map((s) => s.attributes['url.path'])).size >= answered.size, 20_000);
  const matched = all.filter(isAnswered);
  expect(matched).toHaveLength(answered.size);
  expect(new Set(matched.map(pidOf))).toEqual(new Set([crashedPid, survivor.pid, replacement.pid]));
  expect(new Set(all.map((s) => s.resource['service.name']))).toEqual(new Set([SERVICE]));
  expect(all.filter((s) => isServer(s, '/_test/stats') && pidOf(s) === survivor.pid)).toHaveLength(servedBy.get(survivor.pid)!);
});

test('an unhandled rejection: the worker exits, PM2 replaces it with an instrumented worker, the other serves throughout', async () => {
  const APP = 'e2e-faults-rejection';
  const { port, workers: before } = await startFaultsApp(APP);
  const load = startLoad({ port, keepAliveClients: 0, oneShotClients: 3, firstId: 600_000, pauseMs: 5 });
  await answersMore(load, 20, 'before the rejection');
  const res = await get(port, '/_test/rejection');
  expect(res.status).toBe(202);
  const rejectedPid = (JSON.parse(res.body) as { pid: number }).pid;
  const rejected = before.find((p) => p.pid === rejectedPid)!;
  const survivor = before.find((p) => p.pid !== rejectedPid)!;
  expect(rejected).toBeDefined();

  const replacement = await waitReplaced(APP, rejected);
  expect(replacement.restarts).toBe(rejected.restarts + 1);
  await answersMore(load, 20, 'after the replacement');
  const result = await load.stop();
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);

  const after = await workers(APP);
  expect(after.find((p) => p.pm_id === survivor.pm_id)).toMatchObject({ pid: survivor.pid, restarts: survivor.restarts, status: 'online' });
  expect(await crashLines('unhandled rejection', rejectedPid)).toBe(1);

  const span = await spanFrom(port, replacement.pid, 610_000);
  expect(span.resource['service.name']).toBe(SERVICE);
  expect(span.name).toBe('GET /items/:id');
});

test('SIGKILL of a worker: PM2 replaces it with an instrumented worker; only requests in flight on it can fail', async () => {
  const APP = 'e2e-faults-sigkill';
  const { port, workers: before } = await startFaultsApp(APP);
  const [killed, survivor] = before as [Pm2ProcessInfo, Pm2ProcessInfo];
  const CLIENTS = 3;

  // `during` is running when the worker dies: each of its clients has at most
  // one request in flight, and only those on the killed worker can fail. That
  // is inherent to SIGKILL: the request is reset, or, when the primary had
  // just handed the connection over, it hangs until the client's timeout (the
  // primary closes its copy of a handed-over socket only when the worker
  // acknowledges it: Node's lib/internal/cluster/round_robin_handle.js).
  const during = startLoad({ port, keepAliveClients: 0, oneShotClients: CLIENTS, firstId: 700_000, pauseMs: 5 });
  await answersMore(during, 20, 'before the kill');
  process.kill(killed.pid, 'SIGKILL');
  // `afterKill` starts once PM2 (the cluster primary) has seen the worker go:
  // from then on every connection goes to the surviving worker (or the
  // replacement), and none may fail.
  await waitUntil(
    `PM2 to see ${killed.pid} go`,
    async () => {
      const now = (await workers(APP)).find((p) => p.pm_id === killed.pm_id);
      return now?.pid !== killed.pid || now.status !== 'online';
    },
    10_000,
    50,
  );
  const afterKill = startLoad({ port, keepAliveClients: 0, oneShotClients: CLIENTS, firstId: 800_000, pauseMs: 5 });

  const replacement = await waitReplaced(APP, killed);
  expect(replacement.restarts).toBe(killed.restarts + 1);
  // Both loads run on with the replacement in place.
  await Promise.all([answersMore(during, 20, 'after the replacement'), answersMore(afterKill, 20, 'after the replacement')]);
  const [duringResult, afterResult] = await Promise.all([during.stop(), afterKill.stop()]);

  expect(duringResult.failed).toBeLessThanOrEqual(CLIENTS);
  // Those failures are lost connections, never an HTTP error status.
  expect(duringResult.errors.filter((e) => /HTTP \d+/.test(e))).toEqual([]);
  expect(duringResult.ok + duringResult.failed).toBe(duringResult.sent);
  expect(afterResult.errors).toEqual([]);
  expect(afterResult.failed).toBe(0);
  expect(afterResult.ok).toBe(afterResult.sent);

  const after = await workers(APP);
  expect(after.find((p) => p.pm_id === survivor.pm_id)).toMatchObject({ pid: survivor.pid, restarts: survivor.restarts, status: 'online' });

  const span = await spanFrom(port, replacement.pid, 810_000);
  expect(span.resource['service.name']).toBe(SERVICE);
  expect(span.name).toBe('GET /items/:id');
});
