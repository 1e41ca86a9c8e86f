/**
 * Deploys without downtime: reloads and scaling down under sustained load
 * fail no request and lose no span; and secrets kept in an env file never
 * reach PM2's process list, its dump, or the logs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get, startLoad, type Load, type LoadResult } from '../helpers/load';
import { waitUntil } from '../helpers/waitUntil';

jest.setTimeout(180_000);

let receiver: OtlpReceiver;
let pm2: Pm2;

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
});

/** Starts the kit as `app` for one test, exporting to the receiver; returns its port. */
function startDeployApp(app: string, instances: number): Promise<number> {
  return startApp(pm2, app, { OTEL_SERVICE_NAME: app, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '500' }, instances);
}

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

/** Waits until every answered request's server span has arrived, and returns how many did. */
async function spansOf(result: LoadResult): Promise<number> {
  const answered = new Set(result.answered.map((id) => `/items/${id}`));
  const matching = (spans: ReceivedSpan[]): number =>
    new Set(spans.filter((s) => s.kind === 2 && answered.has(String(s.attributes['url.path']))).map((s) => s.attributes['url.path'])).size;
  await receiver.waitFor((spans) => matching(spans) >= answered.size, 30_000).catch(() => undefined);
  return matching(receiver.spans);
}

/** Waits until `load` has answered `count` more requests than it had. */
async function answersMore(load: Load, count: number, what: string): Promise<void> {
  const from = load.progress().ok;
  await waitUntil(() => `${count} requests answered ${what}: ${JSON.stringify(load.progress())}, from ${from}`, () => load.progress().ok >= from + count, 30_000);
}

/**
 * Runs `steps` under load, and checks that requests were answered during
 * each step (not only before and after them).
 */
async function underLoad(port: number, firstId: number, steps: Array<() => Promise<void>>): Promise<LoadResult> {
  const load = startLoad({ port, keepAliveClients: 6, oneShotClients: 6, firstId });
  await answersMore(load, 50, 'before the first step');
  for (const [i, step] of steps.entries()) {
    const before = load.progress().ok;
    await step();
    expect([`step ${i + 1}`, load.progress().ok > before]).toEqual([`step ${i + 1}`, true]);
  }
  await answersMore(load, 50, 'after the last step');
  return load.stop();
}

test('five reloads in a row under load fail no request and lose no span', async () => {
  const app = 'e2e-deploy-reload';
  const port = await startDeployApp(app, 2);
  const reload = (): Promise<void> => pm2.run(['reload', app]).then(() => undefined);
  const result = await underLoad(port, 1_000_000, [reload, reload, reload, reload, reload]);
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);
  // Keep-alive clients of a worker going away were told so, not reset.
  expect(result.closeHeaders).toBeGreaterThan(0);
  expect(await spansOf(result)).toBe(result.ok);
  const workers = await pm2.waitOnline(app, 2);
  expect(workers.map((w) => w.restarts)).toEqual([5, 5]);
  await pm2.run(['delete', app]);
});

test('scaling down from 4 to 2 under load fails no request and loses no span', async () => {
  const app = 'e2e-deploy-scale';
  const port = await startDeployApp(app, 4);
  const result = await underLoad(port, 2_000_000, [
    async () => {
      await pm2.run(['scale', app, '2']);
      await pm2.waitOnline(app, 2);
    },
  ]);
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);
  expect(await spansOf(result)).toBe(result.ok);
  await pm2.run(['delete', app]);
});

test('an auth header kept in an env file reaches the collector but not PM2\'s list, dump or logs', async () => {
  const app = 'e2e-envfile';
  const secret = 'ZW52LWZpbGUtc2VjcmV0LTQyNDI=';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kit-env-'));
  const envFile = path.join(dir, 'otel.env');
  fs.writeFileSync(envFile, `OTEL_EXPORTER_OTLP_HEADERS=Authorization=Basic%20${secret}\n`, { mode: 0o600 });
  try {
    const appPort = await startApp(
      pm2,
      app,
      {
        ENV_FILE: envFile,
        OTEL_SERVICE_NAME: app,
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
        OTEL_BSP_SCHEDULE_DELAY: '100',
      },
      1,
    );
    expect((await get(appPort, '/items/5')).status).toBe(200);
    await receiver.waitFor((spans) => spans.some((s) => s.resource['service.name'] === app), 15_000);
    const request = receiver.requests.find((r) => r.transport === 'http');
    expect(request?.headers.authorization).toBe(`Basic ${secret}`);

    await pm2.run(['save']);
    const [worker] = (await pm2.list()).filter((p) => p.name === app);
    // What PM2 shows of this app: its list entry, its description, its worker's environment.
    const listed = await pm2.run(['jlist']);
    const described = await pm2.run(['describe', app]);
    const env = await pm2.run(['env', String(worker!.pm_id)]);
    const dump = fs.readFileSync(path.join(pm2.home, 'dump.pm2'), 'utf8');
    for (const text of [listed, described, dump]) expect(text).toContain(app);
    expect(env).toContain(envFile);
    // The worker's output, to the line it writes last, at its stop.
    await pm2.run(['stop', app]);
    await waitUntil('the worker\'s "shutting down" line in PM2\'s log', () => pm2.outLog().split('\n').some((l) => l.includes(`"pid":${worker!.pid},`) && l.includes('"msg":"shutting down"')), 10_000);
    for (const text of [listed, described, env, dump, pm2.outLog(), pm2.errLog()]) {
      expect(text).not.toContain(secret);
    }
  } finally {
    await pm2.run(['delete', app]).catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
