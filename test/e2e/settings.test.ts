/**
 * The settings PM2 and the server act on, each exercised under a real PM2
 * daemon through the ecosystem file: request timeout, connection limit,
 * kill timeout, memory restart, and where the env file stands between the
 * values given to `pm2 start` and a stale daemon's environment.
 *
 * One daemon for the file (started elsewhere, with stale OTEL_* values, and
 * PM2's memory check every second); every test starts its own app under a
 * unique name and deletes it.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { alive, startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get } from '../helpers/load';
import { parseResponse, rawRequest } from '../helpers/rawHttp';

jest.setTimeout(90_000);

let receiver: OtlpReceiver;
let pm2: Pm2;
/** Apps and temp dirs a test made, removed after it whatever happened. */
const apps: string[] = [];
const dirs: string[] = [];

const STALE_DAEMON_ENV = {
  OTEL_SERVICE_NAME: 'stale-daemon-service',
  OTEL_EXPORTER_OTLP_HEADERS: 'x-source=daemon',
  // PM2 checks memory (max_memory_restart) every 30 s by default.
  PM2_WORKER_INTERVAL: '1000',
};

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2({ daemonEnv: STALE_DAEMON_ENV, cwd: os.tmpdir() });
});

beforeEach(() => receiver.reset());

afterEach(async () => {
  for (const app of apps.splice(0)) await pm2.run(['delete', app]).catch(() => undefined);
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

/** Starts the ecosystem file as `app` with one worker, exporting to the receiver. */
async function start(app: string, env: Record<string, string> = {}): Promise<number> {
  apps.push(app);
  return startApp(pm2, app, { OTEL_SERVICE_NAME: app, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '100', ...env }, 1);
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a value, or fails with `what` after `timeoutMs`. */
async function until<T>(check: () => Promise<T | undefined> | T | undefined, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** PM2's own log (the daemon's), where it says why it restarted or killed a process. */
function daemonLog(): string {
  const file = path.join(pm2.home, 'pm2.log');
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
}

/** An env file in a temp dir, removed after the test. */
function envFile(content: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kit-settings-'));
  dirs.push(dir);
  const file = path.join(dir, 'otel.env');
  fs.writeFileSync(file, content, { mode: 0o600 });
  return file;
}

/** A keep-alive connection that sends one request at a time and reads each response whole. */
async function connection(port: number): Promise<{ get(target: string): Promise<number>; send(raw: string): void; closed: Promise<void>; destroy(): void }> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let buffer = '';
  let waiter: (() => void) | undefined;
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    waiter?.();
  });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return {
    closed,
    destroy: () => socket.destroy(),
    send: (raw) => void socket.write(raw),
    get(target) {
      buffer = '';
      socket.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no response to ${target} within 10 s: ${JSON.stringify(buffer)}`)), 10_000);
        waiter = () => {
          const response = parseResponse(buffer, { closed: false });
          if (!response.complete) return;
          clearTimeout(timer);
          waiter = undefined;
          resolve(response.status);
        };
        waiter();
      });
    },
  };
}

test('REQUEST_TIMEOUT_MS: a request still arriving after that long is answered 408, while others are served', async () => {
  const port = await start('settings-request-timeout', { REQUEST_TIMEOUT_MS: '1500' });
  const sent = Date.now();
  // Headers that never end; the client waits for the server to answer and close.
  const stalled = rawRequest(port, 'GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n', { timeoutMs: 20_000 });
  expect((await get(port, '/items/2')).status).toBe(200);
  const response = await stalled;
  const elapsed = Date.now() - sent;
  expect(response).toMatchObject({ status: 408, complete: true, timedOut: false });
  expect(elapsed).toBeGreaterThanOrEqual(1400);
  // Within the timeout and Node's check interval, which the server sets to a tenth of it (30 s by default).
  expect(elapsed).toBeLessThan(8000);
});

test('MAX_CONNECTIONS: a worker serves that many connections at once; one more waits for a free slot', async () => {
  // In cluster mode Node does not close a connection beyond a worker's limit:
  // it offers it to another worker, or, as here with one, holds it until a
  // connection closes (https://github.com/nodejs/node/pull/43747).
  const port = await start('settings-max-connections', { MAX_CONNECTIONS: '2', KEEP_ALIVE_TIMEOUT_MS: '60000' });
  const first = await connection(port);
  const second = await connection(port);
  let third: Awaited<ReturnType<typeof connection>> | undefined;
  try {
    expect(await first.get('/items/1')).toBe(200);
    expect(await second.get('/items/2')).toBe(200);

    third = await connection(port);
    const waiting = third.get('/items/3');
    let answered = false;
    void waiting.then(() => (answered = true), () => undefined);
    // The first two are served after the third was sent, and it is still waiting.
    expect(await first.get('/items/4')).toBe(200);
    expect(await second.get('/items/5')).toBe(200);
    await sleep(200);
    expect(answered).toBe(false);

    // A slot frees: the third is served.
    first.destroy();
    expect(await waiting).toBe(200);
    expect(await second.get('/items/6')).toBe(200);
  } finally {
    for (const client of [first, second, third]) client?.destroy();
  }
});

test('KILL_TIMEOUT_MS: PM2 SIGKILLs a worker whose drain outlasts it', async () => {
  const app = 'settings-kill-timeout';
  // The drain would wait 30 s for the half-sent request below; PM2 waits 1.5 s.
  const port = await start(app, { KILL_TIMEOUT_MS: '1500', DRAIN_TIMEOUT_MS: '30000' });
  const [worker] = await pm2.waitOnline(app, 1);
  const client = await connection(port);
  try {
    // A first request shows the connection is the worker's; the second one never ends.
    expect(await client.get('/items/1')).toBe(200);
    client.send('GET /items/2 HTTP/1.1\r\nHost: 127.0.0.1\r\n');

    const stopping = Date.now();
    await pm2.run(['stop', app]);
    const elapsed = Date.now() - stopping;
    expect(alive(worker?.pid ?? 0)).toBe(false);
    expect(elapsed).toBeLessThan(10_000);
    expect(daemonLog()).toMatch(new RegExp(`Process with pid ${worker?.pid} still alive after 1500ms, sending SIGKILL`));
    await client.closed;
  } finally {
    client.destroy();
  }
});

test('MAX_MEMORY_RESTART: PM2 restarts a worker above the limit, and the replacement is instrumented', async () => {
  const app = 'settings-max-memory';
  const port = await start(app, { MAX_MEMORY_RESTART: '1M' });
  const [original] = await pm2.waitOnline(app, 1);
  const replacement = await until(async () => {
    const [worker] = (await pm2.list()).filter((p) => p.name === app);
    return worker !== undefined && worker.status === 'online' && worker.pid !== original?.pid && worker.restarts >= 1 ? worker : undefined;
  }, 'a restart on memory');
  expect(daemonLog()).toMatch(/Process \d+ restarted because it exceeds --max-memory-restart value/);

  // Requests until one is answered by a worker that was not the first one.
  const fromReplacement = (spans: ReceivedSpan[]): ReceivedSpan | undefined =>
    spans.find((s) => s.kind === 2 && s.resource['service.name'] === app && s.resource['process.pid'] !== original?.pid);
  const span = await until(async () => {
    expect((await get(port, '/items/1')).status).toBe(200);
    return fromReplacement(receiver.spans);
  }, 'a span from a replacement worker');
  expect(span.resource).toMatchObject({ 'pm2.app.name': app, 'service.name': app });
  expect(replacement.pid).not.toBe(original?.pid);
});

describe('the env file (ENV_FILE)', () => {
  /** Headers of the HTTP exports that carried the app's spans. */
  async function exportHeaders(app: string, port: number): Promise<Record<string, string>[]> {
    expect((await get(port, '/items/1')).status).toBe(200);
    await receiver.waitFor((spans) => spans.some((s) => s.kind === 2 && s.resource['service.name'] === app), 15_000);
    return receiver.requests.filter((r) => r.transport === 'http').map((r) => r.headers);
  }

  const HTTP = (): Record<string, string> => ({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf', OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl });

  test('a value given to pm2 start wins over the file; the file\'s other values apply', async () => {
    const app = 'settings-envfile-start-wins';
    const file = envFile('OTEL_EXPORTER_OTLP_HEADERS=x-source=file\nOTEL_EXPORTER_OTLP_TRACES_HEADERS=x-file-only=yes\n');
    const port = await start(app, { ENV_FILE: file, ...HTTP(), OTEL_EXPORTER_OTLP_HEADERS: 'x-source=start' });
    const headers = await exportHeaders(app, port);
    expect(headers.length).toBeGreaterThan(0);
    for (const header of headers) expect(header).toMatchObject({ 'x-source': 'start', 'x-file-only': 'yes' });
  });

  test('the file wins over a stale daemon\'s environment', async () => {
    const app = 'settings-envfile-over-daemon';
    const file = envFile('OTEL_EXPORTER_OTLP_HEADERS=x-source=file\n');
    const port = await start(app, { ENV_FILE: file, ...HTTP() });
    const headers = await exportHeaders(app, port);
    expect(headers.length).toBeGreaterThan(0);
    for (const header of headers) expect(header['x-source']).toBe('file');
  });

  test('pm2 reload --update-env picks up a changed value, and a plain reload a changed file', async () => {
    const app = 'settings-envfile-reload';
    const file = envFile('OTEL_EXPORTER_OTLP_TRACES_HEADERS=x-file=v1\n');
    const env = { ENV_FILE: file, ...HTTP(), OTEL_EXPORTER_OTLP_HEADERS: 'x-start=v1' };
    const port = await start(app, env);
    for (const header of await exportHeaders(app, port)) expect(header).toMatchObject({ 'x-start': 'v1', 'x-file': 'v1' });

    // As the README says: the changed value in the shell, then reload the ecosystem file with --update-env.
    const [before] = await pm2.waitOnline(app, 1);
    await pm2.run(['reload', 'ecosystem.config.js', '--update-env'], {
      env: { APP_NAME: app, WEB_CONCURRENCY: '1', HOST: '127.0.0.1', PORT: String(port), OTEL_SERVICE_NAME: app, OTEL_BSP_SCHEDULE_DELAY: '100', ...env, OTEL_EXPORTER_OTLP_HEADERS: 'x-start=v2' },
    });
    const [after] = await pm2.waitOnline(app, 1);
    expect(after?.pid).not.toBe(before?.pid);
    receiver.reset();
    for (const header of await exportHeaders(app, port)) expect(header).toMatchObject({ 'x-start': 'v2', 'x-file': 'v1' });

    fs.writeFileSync(file, 'OTEL_EXPORTER_OTLP_TRACES_HEADERS=x-file=v2\n');
    await pm2.run(['reload', app]);
    await pm2.waitOnline(app, 1);
    receiver.reset();
    for (const header of await exportHeaders(app, port)) expect(header).toMatchObject({ 'x-start': 'v2', 'x-file': 'v2' });
  });
});
