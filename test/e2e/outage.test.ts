/**
 * The kit through a collector outage, under a real PM2 daemon and a real
 * OTLP/gRPC receiver that goes away and comes back on the same port: no
 * request fails because the collector is gone, held spans arrive once it is
 * back (each exactly once), what cannot be held is dropped oldest first,
 * counted, and reported in a few log lines per outage, and what is still held
 * at shutdown is reported too.
 *
 * Every assertion is on counts (requests, spans, log lines), never on
 * timings: speed and memory figures come from `bench/outage.js`.
 */
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { freePort, startPm2, type Pm2, type Pm2ProcessInfo } from '../helpers/pm2';
import { get, startLoad } from '../helpers/load';

jest.setTimeout(180_000);

let pm2: Pm2;
/** Undone after each test, newest first, whether it passed or not. */
const cleanups: Array<() => Promise<unknown>> = [];
/**
 * Spans the kit makes per answered request, learnt from the kit itself before
 * the tests (see `calibrate`): the accounting tests count on it.
 */
let spansPerRequest: number;

async function undo(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
}

beforeAll(async () => {
  pm2 = await startPm2();
  try {
    spansPerRequest = await calibrate();
  } finally {
    await undo();
  }
});

afterEach(undo);

afterAll(async () => {
  await pm2?.kill();
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` every 100 ms; throws `describe()` if it is still false after `timeoutMs`. */
async function waitUntil(condition: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not met within ${timeoutMs} ms: ${describe()}`);
    await sleep(100);
  }
}

/**
 * An OTLP collector on a fixed port that can be down (not listening), up, or
 * up and refusing (UNAVAILABLE); `spans` is everything accepted by any of its
 * incarnations.
 */
interface Collector {
  readonly port: number;
  readonly spans: ReceivedSpan[];
  start(): Promise<void>;
  stop(): Promise<void>;
  setFailure(mode: 'none' | 'unavailable'): void;
  /** Rejects after `timeoutMs`, saying how many spans arrived and what `context()` says. */
  waitFor(predicate: (spans: ReceivedSpan[]) => boolean, timeoutMs: number, context?: () => string): Promise<ReceivedSpan[]>;
}

async function reserveCollector(): Promise<Collector> {
  const port = await freePort();
  const earlier: ReceivedSpan[] = [];
  let current: OtlpReceiver | undefined;
  const collector: Collector = {
    port,
    get spans() {
      return [...earlier, ...(current?.spans ?? [])];
    },
    async start() {
      current = await startReceiver({ grpcPort: port });
    },
    async stop() {
      const receiver = current;
      current = undefined;
      if (receiver === undefined) return;
      earlier.push(...receiver.spans);
      await receiver.close();
    },
    setFailure(mode) {
      if (current === undefined) throw new Error('the collector is down');
      current.setFailure(mode);
    },
    async waitFor(predicate, timeoutMs, context = () => '') {
      await waitUntil(
        () => predicate(collector.spans),
        timeoutMs,
        () => `the collector has ${collector.spans.length} spans\n${context()}`,
      );
      return collector.spans;
    },
  };
  cleanups.push(() => collector.stop());
  return collector;
}

interface App {
  readonly name: string;
  readonly port: number;
  readonly workers: Pm2ProcessInfo[];
}

/** Starts the kit's ecosystem file as `name`, two workers, exporting to the collector's port. */
async function startApp(name: string, collector: Collector, env: Record<string, string> = {}): Promise<App> {
  const port = await freePort();
  cleanups.push(() => pm2.run(['delete', name]));
  await pm2.run(['start', 'ecosystem.config.js'], {
    env: {
      APP_NAME: name,
      WEB_CONCURRENCY: '2',
      HOST: '127.0.0.1',
      PORT: String(port),
      ENABLE_TEST_ROUTES: 'true',
      OTEL_SERVICE_NAME: name,
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.port}`,
      OTEL_BSP_SCHEDULE_DELAY: '200',
      ...env,
    },
  });
  return { name, port, workers: await pm2.waitOnline(name, 2) };
}

const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);

/**
 * GET /items/<id> for every id, `concurrency` at a time, each on a fresh
 * connection so that PM2 spreads them over the workers.
 */
async function sendItems(port: number, ids: number[], concurrency: number): Promise<{ answered: number[]; failures: string[] }> {
  const answered: number[] = [];
  const failures: string[] = [];
  const queue = [...ids];
  const client = async (): Promise<void> => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      const res = await get(port, `/items/${id}`).catch((error: Error) => ({ status: 0, body: error.message }));
      if (res.status === 200) answered.push(id);
      else failures.push(`${id}: ${res.status} ${res.body}`);
    }
  };
  await Promise.all(range(0, concurrency).map(client));
  return { answered, failures };
}

interface WorkerStats {
  pid: number;
  telemetry: { delivered: number; dropped: number; held: number };
}

/** `/_test/stats` of every worker, asked on fresh connections until each has answered; also how many requests that took. */
async function statsOfWorkers(app: App): Promise<{ stats: Map<number, WorkerStats>; requests: number }> {
  const stats = new Map<number, WorkerStats>();
  let requests = 0;
  while (stats.size < app.workers.length && requests < 50) {
    const res = await get(app.port, '/_test/stats');
    requests += 1;
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as WorkerStats;
    stats.set(body.pid, body);
  }
  expect([...stats.keys()].sort()).toEqual(app.workers.map((w) => w.pid).sort());
  return { stats, requests };
}

function serverSpansOf(spans: ReceivedSpan[], paths: Set<string>): ReceivedSpan[] {
  return spans.filter((s) => s.kind === 2 && paths.has(String(s.attributes['url.path'])));
}

function duplicateSpanIds(spans: ReceivedSpan[]): string[] {
  const seen = new Set<string>();
  return spans.filter((s) => seen.size === seen.add(s.spanId).size).map((s) => s.spanId);
}

/** The telemetry preload's own lines (`otel: …`) written by one worker, from PM2's error log. */
function otelLines(pid: number): string[] {
  return pm2
    .errLog()
    .split('\n')
    .flatMap((line) => {
      try {
        const parsed = JSON.parse(line) as { pid?: unknown; msg?: unknown };
        return parsed.pid === pid && typeof parsed.msg === 'string' && parsed.msg.startsWith('otel: ') ? [parsed.msg] : [];
      } catch {
        return [];
      }
    });
}

const count = (lines: string[], text: string): number => lines.filter((line) => line.includes(text)).length;

/** `delivered N held spans, dropped M` of each 'recovered after' line. */
function recoveries(lines: string[]): Array<{ delivered: number; dropped: number }> {
  return lines.flatMap((line) => {
    const match = /recovered after [\d.]+ s: delivered (\d+) held spans, dropped (\d+)/.exec(line);
    return match ? [{ delivered: Number(match[1]), dropped: Number(match[2]) }] : [];
  });
}

function logsOf(app: App): string {
  return app.workers.map((w) => `worker ${w.pid}:\n  ${otelLines(w.pid).join('\n  ')}`).join('\n');
}

/**
 * What the kit produces per request, with the collector up: every trace of a
 * request, to a route or to `/_test/stats`, has the same number of spans, one
 * of them the server span. Returns that number.
 */
async function calibrate(): Promise<number> {
  const collector = await reserveCollector();
  await collector.start();
  const app = await startApp('outage-calibration', collector);
  const items = await sendItems(app.port, range(1, 10), 2);
  expect(items.answered).toHaveLength(10);
  const { requests } = await statsOfWorkers(app);
  const servers = (all: ReceivedSpan[]): ReceivedSpan[] => all.filter((s) => s.kind === 2);
  await collector.waitFor((all) => servers(all).length >= 10 + requests, 20_000, () => logsOf(app));
  await sleep(1000); // the last spans of those traces, if any
  const perTrace = new Map<string, number>();
  for (const span of collector.spans) perTrace.set(span.traceId, (perTrace.get(span.traceId) ?? 0) + 1);
  expect(perTrace.size).toBe(10 + requests);
  const counts = new Set(perTrace.values());
  expect(counts.size).toBe(1);
  return [...counts][0]!;
}

test('answers every request while the collector is unreachable, and delivers all their spans once it starts', async () => {
  const collector = await reserveCollector();
  const app = await startApp('outage-at-start', collector);

  const ids = range(1, 100);
  const { answered, failures } = await sendItems(app.port, ids, 4);
  expect(failures).toEqual([]);
  expect(answered).toHaveLength(ids.length);
  // Each worker has tried, failed, said so once, and holds the spans.
  await waitUntil(
    () => app.workers.every((w) => count(otelLines(w.pid), 'cannot export spans') === 1),
    20_000,
    () => logsOf(app),
  );

  await collector.start();
  const paths = new Set(ids.map((id) => `/items/${id}`));
  const spans = await collector.waitFor((all) => serverSpansOf(all, paths).length >= paths.size, 60_000, () => logsOf(app));
  const server = serverSpansOf(spans, paths);
  expect(server).toHaveLength(paths.size);
  expect(new Set(server.map((s) => String(s.attributes['url.path'])))).toEqual(paths);
  expect(new Set(server.map((s) => Number(s.resource['process.pid'])))).toEqual(new Set(app.workers.map((w) => w.pid)));
  await collector.waitFor((all) => all.length >= spansPerRequest * ids.length, 10_000, () => logsOf(app));
  await sleep(500); // and nothing more arrives
  expect(collector.spans).toHaveLength(spansPerRequest * ids.length);
  expect(duplicateSpanIds(collector.spans)).toEqual([]);

  // One line when the outage began, one when it ended, with what the worker delivered.
  await waitUntil(() => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === 1), 20_000, () => logsOf(app));
  const delivered = app.workers.flatMap((w) => recoveries(otelLines(w.pid)));
  expect(delivered.map((r) => r.dropped)).toEqual([0, 0]);
  expect(delivered.reduce((sum, r) => sum + r.delivered, 0)).toBe(spansPerRequest * ids.length);
  for (const w of app.workers) expect(otelLines(w.pid)).toHaveLength(2);
});

test('a collector cut for 10 s, then flapping, fails no request and delivers each span exactly once, in a few log lines per outage', async () => {
  const collector = await reserveCollector();
  await collector.start();
  // Room for the whole outage: this test is about delivery; the bound has its own test below.
  const app = await startApp('outage-cut', collector, { OTEL_BSP_MAX_QUEUE_SIZE: '20000' });

  const load = startLoad({ port: app.port, keepAliveClients: 2, oneShotClients: 2, firstId: 1, pauseMs: 5 });
  cleanups.push(() => load.stop());
  await sleep(2000);
  await collector.stop();
  await sleep(10_000);
  await collector.start();
  await sleep(2000);
  const FLAPS = 3;
  for (let i = 0; i < FLAPS; i += 1) {
    collector.setFailure('unavailable');
    await sleep(2000);
    collector.setFailure('none');
    await sleep(2000);
  }
  const result = await load.stop();
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);
  expect(result.ok).toBeGreaterThan(1000);

  const paths = new Set(result.answered.map((id) => `/items/${id}`));
  const spans = await collector.waitFor((all) => serverSpansOf(all, paths).length >= paths.size, 60_000, () => logsOf(app));
  await sleep(1000); // a duplicate would come with the last held batches
  expect(new Set(serverSpansOf(spans, paths).map((s) => String(s.attributes['url.path'])))).toEqual(paths);
  expect(serverSpansOf(collector.spans, paths)).toHaveLength(paths.size);
  expect(duplicateSpanIds(collector.spans)).toEqual([]);

  // Every outage a worker saw is over, and cost it one line at each end: the cut and each flap, at most.
  const OUTAGES = 1 + FLAPS;
  await waitUntil(
    () => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === count(otelLines(w.pid), 'cannot export spans')),
    30_000,
    () => logsOf(app),
  );
  for (const w of app.workers) {
    const lines = otelLines(w.pid);
    const outages = count(lines, 'cannot export spans');
    expect(outages).toBeGreaterThanOrEqual(1);
    expect(outages).toBeLessThanOrEqual(OUTAGES);
    expect(lines.length).toBeLessThanOrEqual(3 * outages);
    expect(recoveries(lines).every((r) => r.dropped === 0)).toBe(true);
  }
  const { stats } = await statsOfWorkers(app);
  for (const s of stats.values()) expect(s.telemetry).toMatchObject({ dropped: 0, held: 0 });
});

test('with its hold full, a worker drops the oldest spans, counts and reports them, and delivers the rest: received + dropped = produced', async () => {
  const collector = await reserveCollector();
  const app = await startApp('outage-queue-full', collector, { OTEL_BSP_MAX_QUEUE_SIZE: '64', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '32' });
  let requests = 0;

  // First a few requests, until each worker's first export has failed: that
  // export loads gRPC and connects, and while it runs the processor's own
  // queue (also 64) would fill and drop spans that no count sees (checked below).
  const warmup = await sendItems(app.port, range(1, 10), 2);
  requests += warmup.answered.length;
  await waitUntil(() => app.workers.every((w) => count(otelLines(w.pid), 'cannot export spans') === 1), 20_000, () => logsOf(app));

  const burst = await sendItems(app.port, range(100, 400), 2);
  requests += burst.answered.length;
  expect(burst.failures).toEqual([]);
  expect(burst.answered).toHaveLength(400);

  await sleep(1000); // the burst's last spans reach the exporter (OTEL_BSP_SCHEDULE_DELAY=200)
  const down = await statsOfWorkers(app);
  requests += down.requests;
  for (const s of down.stats.values()) expect(s.telemetry).toMatchObject({ delivered: 0, held: 64 });
  expect([...down.stats.values()].reduce((sum, s) => sum + s.telemetry.dropped, 0)).toBeGreaterThan(0);
  await sleep(1000); // the stats requests' own spans reach the exporter too

  await collector.start();
  await waitUntil(() => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === 1), 60_000, () => logsOf(app));
  const up = await statsOfWorkers(app);
  requests += up.requests;
  // Final: nothing is dropped once the collector answers, and these stats were computed before their own spans ended.
  const dropped = [...up.stats.values()].reduce((sum, s) => sum + s.telemetry.dropped, 0);
  for (const s of up.stats.values()) expect(s.telemetry.held).toBe(0);

  const produced = spansPerRequest * requests;
  await collector.waitFor((all) => all.length + dropped >= produced, 20_000).catch(() => undefined);
  await sleep(1000); // and nothing more arrives
  expect({ received: collector.spans.length, dropped }).toEqual({ received: produced - dropped, dropped });
  expect(duplicateSpanIds(collector.spans)).toEqual([]);

  for (const w of app.workers) {
    const lines = otelLines(w.pid);
    // The drops are reported as they begin (again every 30 s), and the total when the outage ends.
    const dropReports = count(lines, 'collector still unreachable: dropped');
    expect(dropReports).toBeGreaterThanOrEqual(1);
    expect(dropReports).toBeLessThanOrEqual(2);
    const [recovery, ...more] = recoveries(lines);
    expect(more).toEqual([]);
    expect(recovery).toEqual({ delivered: 64, dropped: up.stats.get(w.pid)!.telemetry.dropped });
    expect(lines).toHaveLength(2 + dropReports);
  }
  // The processor's own queue never overflowed: its drops are in no count, only in this line.
  expect(pm2.errLog()).not.toContain('because maxQueueSize reached');
});

test('pm2 stop during an outage reports, per worker, the spans it could not deliver', async () => {
  const collector = await reserveCollector();
  await collector.start();
  const app = await startApp('outage-stop', collector);

  const before = await sendItems(app.port, range(1, 20), 2);
  expect(before.answered).toHaveLength(20);
  await collector.waitFor((all) => all.length >= spansPerRequest * 20, 20_000, () => logsOf(app));
  await sleep(500); // no export in flight when the collector goes
  await collector.stop();
  const received = collector.spans.length;
  expect(received).toBe(spansPerRequest * 20);

  const during = await sendItems(app.port, range(100, 30), 2);
  expect(during.answered).toHaveLength(30);
  await pm2.run(['stop', app.name]);

  const reports = (pid: number): string[] =>
    otelLines(pid).filter((line) => line.includes('spans not delivered at shutdown') || line.includes('telemetry flush did not finish'));
  await waitUntil(() => app.workers.every((w) => reports(w.pid).length === 1), 15_000, () => logsOf(app));
  const notDelivered = app.workers.map((w) => /(\d+) spans not delivered at shutdown/.exec(reports(w.pid)[0]!));
  // With counts from every worker (the flush did not time out), they account for every span.
  if (notDelivered.every((match) => match !== null)) {
    const lost = notDelivered.reduce((sum, match) => sum + Number(match![1]), 0);
    expect(received + lost).toBe(spansPerRequest * 50);
  }
});
