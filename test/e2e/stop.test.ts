/**
 * Requests still running when a worker stops, under a real PM2 daemon and a
 * real OTLP receiver: a request in flight at SIGINT is answered (with
 * `Connection: close`) and its span delivered; the stopping worker answers
 * `/readyz` 503 meanwhile; idle keep-alive sockets do not hold the stop up,
 * even with a keep-alive timeout longer than the drain; past
 * DRAIN_TIMEOUT_MS what still runs is cut, and counted in the log.
 *
 * Each test runs a one-worker app, so that every connection reaches the
 * worker being stopped; `/_test/slow?ms=N` is the request in flight.
 */
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { alive, startApp, startPm2, type Pm2, type Pm2ProcessInfo } from '../helpers/pm2';
import { keepAliveConnection, type KeepAliveConnection } from '../helpers/rawHttp';

jest.setTimeout(120_000);

let receiver: OtlpReceiver;
let pm2: Pm2;

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts `app` with one worker, test routes on, spans exported only by a flush (the batch delay outlasts the test). */
async function startOne(app: string, env: Record<string, string> = {}): Promise<{ port: number; worker: Pm2ProcessInfo }> {
  const port = await startApp(pm2, app, {
    ENABLE_TEST_ROUTES: 'true',
    OTEL_SERVICE_NAME: app,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '60000',
    ...env,
  }, 1);
  const [worker] = (await pm2.list()).filter((p) => p.name === app);
  return { port, worker: worker! };
}

/** A keep-alive connection already served by the worker (so bound to it). */
async function boundConnection(port: number): Promise<KeepAliveConnection> {
  const connection = await keepAliveConnection(port);
  expect((await connection.get('/healthz')).status).toBe(200);
  return connection;
}

/** Resolves with the time at which `pid` is gone. */
async function exited(pid: number, timeoutMs = 20_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (alive(pid) && Date.now() < deadline) await sleep(20);
  if (alive(pid)) throw new Error(`worker ${pid} still runs after ${timeoutMs} ms\n${pm2.errLog().slice(-3000)}`);
  return Date.now();
}

/** The worker's JSON log lines (stdout and stderr) whose message is `msg`. */
function logLines(pid: number, msg: string): Record<string, unknown>[] {
  return `${pm2.outLog()}\n${pm2.errLog()}`
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(`"pid":${pid},`))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line.msg === msg);
}

const DRAIN_TIMEOUT_LINE = 'drain timeout: cutting the requests still running';

function isSlowSpanOf(pid: number) {
  return (span: ReceivedSpan): boolean => span.kind === 2 && span.attributes['url.path'] === '/_test/slow' && span.resource['process.pid'] === pid;
}

test('pm2 stop: a request in flight is answered with Connection: close and its span delivered; /readyz answers 503 from the stopping worker meanwhile', async () => {
  const app = 'e2e-stop-inflight';
  const { port, worker } = await startOne(app);
  const slowConnection = await boundConnection(port);
  const probe = await boundConnection(port);
  expect(await probe.get('/readyz')).toMatchObject({ status: 200, body: '{"status":"ready"}' });

  let answeredAt = 0;
  const slow = slowConnection.get('/_test/slow?ms=2500', 20_000).then((response) => {
    answeredAt = Date.now();
    return response;
  });
  await sleep(200);
  const stopping = pm2.run(['stop', app]);

  // The probe's socket is bound to the worker: it asks until the worker has
  // begun its stop, while the slow request keeps it alive.
  const deadline = Date.now() + 10_000;
  let readyz = await probe.get('/readyz');
  while (readyz.status === 200 && Date.now() < deadline) {
    await sleep(50);
    readyz = await probe.get('/readyz');
  }
  expect(readyz).toMatchObject({ status: 503, headers: { connection: 'close' }, body: '{"status":"shutting down"}' });
  expect(answeredAt).toBe(0);
  expect(alive(worker.pid)).toBe(true);
  expect(await probe.ended).toBeUndefined();

  const answer = await slow;
  expect(answer).toMatchObject({ status: 200, headers: { connection: 'close' } });
  expect(JSON.parse(answer.body)).toEqual({ pid: worker.pid, ms: 2500 });
  expect(await slowConnection.ended).toBeUndefined();
  await stopping;

  // Delivered by the stop's flush: the batch delay is 60 s.
  const spans = await receiver.waitFor((all) => all.some(isSlowSpanOf(worker.pid)), 15_000);
  const span = spans.find(isSlowSpanOf(worker.pid))!;
  expect(span.name).toBe('GET /_test/slow');
  expect(span.attributes['http.response.status_code']).toBe(200);
  expect(logLines(worker.pid, DRAIN_TIMEOUT_LINE)).toEqual([]);
  await pm2.run(['delete', app]);
});

test('KEEP_ALIVE_TIMEOUT_MS above DRAIN_TIMEOUT_MS: an idle keep-alive socket does not hold the stop up to the drain timeout, and the request in flight is answered', async () => {
  const app = 'e2e-stop-keepalive';
  const DRAIN_TIMEOUT_MS = 3000;
  const { port, worker } = await startOne(app, { KEEP_ALIVE_TIMEOUT_MS: '65000', DRAIN_TIMEOUT_MS: String(DRAIN_TIMEOUT_MS) });
  const idle = await boundConnection(port);
  const slowConnection = await boundConnection(port);
  const slow = slowConnection.get('/_test/slow?ms=1500', 20_000);
  await sleep(100);

  const signalledAt = Date.now();
  process.kill(worker.pid, 'SIGINT');
  const answer = await slow;
  const answeredAt = Date.now();
  expect(answer).toMatchObject({ status: 200, headers: { connection: 'close' } });
  // Closed by the worker, not reset, and not by its 65 s keep-alive timeout.
  expect(await idle.ended).toBeUndefined();
  const exitedAt = await exited(worker.pid);

  // Without closing idle sockets, the worker would wait out the drain
  // timeout (3 s) and then cut them.
  expect(exitedAt - signalledAt).toBeLessThan(DRAIN_TIMEOUT_MS);
  expect(logLines(worker.pid, DRAIN_TIMEOUT_LINE)).toEqual([]);
  expect(answeredAt - signalledAt).toBeGreaterThanOrEqual(1000);
  await receiver.waitFor((all) => all.some(isSlowSpanOf(worker.pid)), 15_000);
  await pm2.run(['delete', app]);
});

test('past DRAIN_TIMEOUT_MS, the requests still running are cut, and the log line says how many', async () => {
  const app = 'e2e-stop-cut';
  const { port, worker } = await startOne(app, { DRAIN_TIMEOUT_MS: '1000' });
  const connections = await Promise.all([1, 2, 3].map(() => boundConnection(port)));
  const idle = await boundConnection(port);
  const slow = connections.map((connection) => connection.get('/_test/slow?ms=20000', 30_000));
  await sleep(200);

  await pm2.run(['stop', app]);
  // Cut (no response), long before the 20 s they asked for.
  for (const response of await Promise.all(slow)) expect(response.status).toBe(0);
  await exited(worker.pid);
  expect(await idle.ended).toBeUndefined();

  // The worker cut them itself at the drain timeout (PM2's SIGKILL, at 4 s here, would leave no line).
  const deadline = Date.now() + 10_000;
  let lines = logLines(worker.pid, DRAIN_TIMEOUT_LINE);
  while (lines.length === 0 && Date.now() < deadline) {
    await sleep(100);
    lines = logLines(worker.pid, DRAIN_TIMEOUT_LINE);
  }
  expect(lines).toEqual([expect.objectContaining({ level: 'warn', drainTimeoutMs: 1000, requests: 3 })]);
  await pm2.run(['delete', app]);
});
