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
import { get, startLoad, type LoadResult } from '../helpers/load';

jest.setTimeout(180_000);

const APP = 'e2e-deploy';

let receiver: OtlpReceiver;
let pm2: Pm2;
let port: number;

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
  port = await startApp(pm2, APP, {
    OTEL_SERVICE_NAME: APP,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '500',
  });
});

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

async function underLoad(firstId: number, action: () => Promise<void>): Promise<LoadResult> {
  const load = startLoad({ port, keepAliveClients: 6, oneShotClients: 6, firstId });
  await new Promise((resolve) => setTimeout(resolve, 500));
  await action();
  await new Promise((resolve) => setTimeout(resolve, 500));
  return load.stop();
}

test('five reloads in a row under load fail no request and lose no span', async () => {
  const started = Date.now();
  const result = await underLoad(1_000_000, async () => {
    for (let i = 0; i < 5; i += 1) await pm2.run(['reload', APP]);
  });
  const seconds = (Date.now() - started) / 1000;
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  // "Sustained load": several hundred requests a second through all five reloads.
  expect(result.ok / seconds).toBeGreaterThan(200);
  // Keep-alive clients of a worker going away were told so, not reset.
  expect(result.closeHeaders).toBeGreaterThan(0);
  expect(await spansOf(result)).toBe(result.ok);
  const workers = await pm2.waitOnline(APP, 2);
  expect(workers.every((w) => w.restarts === 5)).toBe(true);
});

test('scaling down from 4 to 2 under load fails no request and loses no span', async () => {
  await pm2.run(['scale', APP, '4']);
  await pm2.waitOnline(APP, 4);
  receiver.reset();
  const result = await underLoad(2_000_000, async () => {
    await pm2.run(['scale', APP, '2']);
    await pm2.waitOnline(APP, 2);
  });
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBeGreaterThan(100);
  expect(await spansOf(result)).toBe(result.ok);
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
    const listed = (await pm2.run(['jlist'])) + (await pm2.run(['describe', app])) + (await pm2.run(['env', '0']).catch(() => ''));
    const dump = fs.readFileSync(path.join(pm2.home, 'dump.pm2'), 'utf8');
    expect(dump).toContain(app);
    for (const text of [listed, dump, pm2.outLog(), pm2.errLog()]) {
      expect(text).not.toContain(secret);
    }
  } finally {
    await pm2.run(['delete', app]).catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
