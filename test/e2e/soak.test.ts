/**
 * Soak: minutes of steady load with telemetry on. No worker restarts, memory
 * levels off after warm-up, open handles do not grow, and every span is
 * delivered. SOAK_SECONDS sets the length (default 120).
 */
import { startReceiver, type OtlpReceiver } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get, startLoad } from '../helpers/load';

const SOAK_SECONDS = Number(process.env.SOAK_SECONDS ?? 120);
jest.setTimeout((SOAK_SECONDS + 120) * 1000);

const APP = 'e2e-soak';

interface WorkerStats {
  pid: number;
  rss: number;
  heapUsed: number;
  activeResources: number;
  telemetry: { delivered: number; dropped: number; held: number };
}

let receiver: OtlpReceiver;
let pm2: Pm2;
let port: number;

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
  port = await startApp(pm2, APP, {
    ENABLE_TEST_ROUTES: 'true',
    OTEL_SERVICE_NAME: APP,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
  });
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Stats of every worker, asked on fresh connections until each has answered. */
async function statsOfWorkers(count: number): Promise<Map<number, WorkerStats>> {
  const seen = new Map<number, WorkerStats>();
  for (let i = 0; i < 50 && seen.size < count; i += 1) {
    const stats = JSON.parse((await get(port, '/_test/stats')).body) as WorkerStats;
    seen.set(stats.pid, stats);
  }
  return seen;
}

/** Idle figures: after the keep-alive timeout, so no client connection is counted. */
async function idleStats(): Promise<Map<number, WorkerStats>> {
  await sleep(3000);
  return statsOfWorkers(2);
}

test(`${SOAK_SECONDS} s of steady load: no restart, flat memory, no handle growth, no span lost`, async () => {
  const warmup = startLoad({ port, keepAliveClients: 4, oneShotClients: 2, firstId: 1, pauseMs: 1 });
  await sleep(15_000);
  await warmup.stop();
  const before = await idleStats();

  // Memory is compared between the middle and the end of the soak: the first
  // minutes of load grow V8's young generation to its working size, which is
  // not a leak; after that, RSS must stay level.
  const first = startLoad({ port, keepAliveClients: 4, oneShotClients: 2, firstId: 10_000_000, pauseMs: 1 });
  await sleep((SOAK_SECONDS * 1000) / 2);
  const firstHalf = await first.stop();
  const middle = await idleStats();
  const second = startLoad({ port, keepAliveClients: 4, oneShotClients: 2, firstId: 20_000_000, pauseMs: 1 });
  await sleep((SOAK_SECONDS * 1000) / 2);
  const secondHalf = await second.stop();
  const after = await idleStats();
  const result = {
    ok: firstHalf.ok + secondHalf.ok,
    failed: firstHalf.failed + secondHalf.failed,
    answered: [...firstHalf.answered, ...secondHalf.answered],
  };

  const figures = [...before.entries()].map(([pid, b]) => {
    const a = after.get(pid);
    return {
      pid,
      rssMB: [b.rss, middle.get(pid)?.rss ?? NaN, a?.rss ?? NaN].map((v) => Number((v / 2 ** 20).toFixed(1))),
      heapMB: [b.heapUsed, middle.get(pid)?.heapUsed ?? NaN, a?.heapUsed ?? NaN].map((v) => Number((v / 2 ** 20).toFixed(1))),
      activeResources: [b.activeResources, middle.get(pid)?.activeResources, a?.activeResources],
      telemetry: a?.telemetry,
    };
  });
  process.stdout.write(`soak: ${result.ok} requests in ${SOAK_SECONDS} s (${Math.round(result.ok / SOAK_SECONDS)}/s); per worker [after warm-up, middle, end]:\n${JSON.stringify(figures)}\n`);

  expect(result.failed).toBe(0);
  expect(result.ok).toBeGreaterThan(SOAK_SECONDS * 100);
  const workers = (await pm2.list()).filter((p) => p.name === APP);
  expect(workers.map((w) => w.restarts)).toEqual([0, 0]);
  expect(new Set(after.keys())).toEqual(new Set(before.keys()));
  for (const [pid, b] of before) {
    const a = after.get(pid)!;
    // Level in the second half: a leak of even 1 KB a request would add tens of MB there.
    expect((a.rss - middle.get(pid)!.rss) / 2 ** 20).toBeLessThan(20);
    expect(a.activeResources).toBeLessThanOrEqual(b.activeResources + 2);
    expect(a.telemetry.dropped).toBe(0);
  }
  // Every answered request's server span arrived (ids are unique per request).
  const answered = new Set(result.answered.map((id) => `/items/${id}`));
  const delivered = await receiver.waitFor(
    (spans) => spans.filter((s) => s.kind === 2 && answered.has(String(s.attributes['url.path']))).length >= answered.size,
    30_000,
  );
  expect(new Set(delivered.filter((s) => s.kind === 2 && answered.has(String(s.attributes['url.path']))).map((s) => s.spanId)).size).toBe(answered.size);
});
