/**
 * The kit through a collector outage, under a real PM2 daemon and a real
 * OTLP/gRPC receiver that goes away and comes back on the same port: no
 * request fails because the collector is gone, held spans arrive once it is
 * back (each exactly once), what cannot be held is dropped oldest first,
 * counted, and reported in a few log lines per outage, and what is still held
 * at shutdown is reported too.
 *
 * Every assertion is on counts (requests, spans, log lines) and on order
 * (each span is told apart by its request's id), never on timings: speed and
 * memory figures come from `BENCH_SCENARIO=outage npm run bench`. `/_test/stats` makes no span
 * here, so that the exporters' counts account for the items' spans exactly.
 */
import { startReceiver, type OtlpReceiver, type ReceivedRequest, type ReceivedSpan } from '../helpers/otlpReceiver';
import { freePort, startPm2, type Pm2, type Pm2ProcessInfo, preloadLines } from '../helpers/pm2';
import { get, startLoad } from '../helpers/load';
import { waitUntil } from '../helpers/waitUntil';

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

/**
 * An OTLP collector on a fixed port that can be down (not listening), up, or
 * up and refusing (UNAVAILABLE); `spans` is everything accepted by any of its
 * incarnations.
 */
interface Collector {
  readonly port: number;
  readonly spans: ReceivedSpan[];
  /** Export requests the current incarnation saw, accepted or refused. */
  readonly requests: ReceivedRequest[];
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
    get requests() {
      return current?.requests ?? [];
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
      await waitUntil(() => `the collector has ${collector.spans.length} spans\n${context()}`, () => predicate(collector.spans), timeoutMs);
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
      // Spans only: log records behind the same collector would add lines of their own (test/otel/logs.test.ts covers them).
      OTEL_LOGS_EXPORTER: 'none',
      OTEL_BSP_SCHEDULE_DELAY: '200',
      OTEL_NODE_EXCLUDED_URLS: '/healthz,/readyz,/_test/stats',
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

const pidOf = (span: ReceivedSpan): number => Number(span.resource['process.pid']);
const itemOf = (span: ReceivedSpan): number => Number(/^\/items\/(\d+)$/.exec(String(span.attributes['url.path']))?.[1]);

/** The item ids of `app`'s server spans, per worker, in the order they arrived. */
function arrivalsPerWorker(app: App, spans: ReceivedSpan[], paths: Set<string>): Map<number, number[]> {
  const arrivals = new Map<number, number[]>(app.workers.map((w) => [w.pid, []]));
  for (const span of serverSpansOf(spans, paths)) arrivals.get(pidOf(span))?.push(itemOf(span));
  return arrivals;
}

/**
 * The spans a worker exported out of the order in which they ended (oldest
 * first), as `pid: id after id`. The SDK takes a span's start from
 * `Date.now()` (whole milliseconds) and adds the measured duration, so two
 * spans' end times may disagree with their true order by up to 1 ms: only a
 * larger step back counts.
 */
function outOfOrder(spans: ReceivedSpan[], paths: Set<string>): string[] {
  const TOLERANCE_NS = 2_000_000n;
  const last = new Map<number, ReceivedSpan>();
  const wrong: string[] = [];
  for (const span of serverSpansOf(spans, paths)) {
    const before = last.get(pidOf(span));
    if (before !== undefined && span.endTimeUnixNano + TOLERANCE_NS < before.endTimeUnixNano) wrong.push(`${pidOf(span)}: ${itemOf(span)} after ${itemOf(before)}`);
    last.set(pidOf(span), span);
  }
  return wrong;
}

/**
 * Sends marker requests (`GET /items/<id>`, from `firstId` on) until a server
 * span of each worker has arrived. A worker exports its spans in the order
 * they ended, so everything it ended before its marker has arrived by then
 * (or was dropped). Returns the markers' paths.
 */
async function markThrough(app: App, collector: Collector, firstId: number): Promise<Set<string>> {
  const markers = new Set<string>();
  let id = firstId;
  await waitUntil(
    () => `a marker span from each worker\n${logsOf(app)}`,
    async () => {
      if (new Set(serverSpansOf(collector.spans, markers).map(pidOf)).size === app.workers.length) return true;
      for (let i = 0; i < 2; i += 1) {
        const path = `/items/${id++}`;
        markers.add(path);
        expect((await get(app.port, path)).status).toBe(200);
      }
      return false;
    },
    30_000,
    500,
  );
  return markers;
}

/**
 * Waits until the workers' exporters have handled `produced` spans (delivered
 * or dropped, none held), and returns their summed counts. An exporter counts
 * a span delivered once the collector has acknowledged it.
 */
async function handled(app: App, produced: number): Promise<{ delivered: number; dropped: number; stats: Map<number, WorkerStats> }> {
  let last = { delivered: 0, dropped: 0, stats: new Map<number, WorkerStats>() };
  await waitUntil(
    () => `exporters handling ${produced} spans, got ${JSON.stringify([...last.stats.values()])}\n${logsOf(app)}`,
    async () => {
      const { stats } = await statsOfWorkers(app);
      const all = [...stats.values()].map((s) => s.telemetry);
      last = { delivered: all.reduce((sum, t) => sum + t.delivered, 0), dropped: all.reduce((sum, t) => sum + t.dropped, 0), stats };
      return all.every((t) => t.held === 0) && last.delivered + last.dropped === produced;
    },
    60_000,
    250,
  );
  return last;
}

function duplicateSpanIds(spans: ReceivedSpan[]): string[] {
  const seen = new Set<string>();
  return spans.filter((s) => seen.size === seen.add(s.spanId).size).map((s) => s.spanId);
}

/** The telemetry preload's own lines (`otel: …`) written by one worker. */
const otelLines = (pid: number): string[] => preloadLines(pm2, pid);

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
 * request to a route has the same number of spans, one of them the server
 * span. Returns that number.
 */
async function calibrate(): Promise<number> {
  const collector = await reserveCollector();
  await collector.start();
  const app = await startApp('outage-calibration', collector);
  const items = await sendItems(app.port, range(1, 10), 2);
  expect(items.answered).toHaveLength(10);
  // The last spans of those traces, if any, arrive before the markers.
  await markThrough(app, collector, 1000);
  const traces = new Set(serverSpansOf(collector.spans, new Set(range(1, 10).map((id) => `/items/${id}`))).map((s) => s.traceId));
  expect(traces.size).toBe(10);
  const perTrace = new Map<string, number>();
  for (const span of collector.spans) if (traces.has(span.traceId)) perTrace.set(span.traceId, (perTrace.get(span.traceId) ?? 0) + 1);
  const counts = new Set(perTrace.values());
  expect(counts.size).toBe(1);
  return [...counts][0]!;
}

test('answers every request while the collector is unreachable, and delivers all their spans once it starts, each once, oldest first', async () => {
  const collector = await reserveCollector();
  const app = await startApp('outage-at-start', collector);

  // One at a time: on each worker, a request with a higher id ended later.
  const ids = range(1, 100);
  const { answered, failures } = await sendItems(app.port, ids, 1);
  expect(failures).toEqual([]);
  expect(answered).toHaveLength(ids.length);
  // Each worker has tried, failed, said so once, and holds the spans.
  await waitUntil(() => logsOf(app), () => app.workers.every((w) => count(otelLines(w.pid), 'cannot export spans') === 1), 20_000);

  await collector.start();
  const paths = new Set(ids.map((id) => `/items/${id}`));
  const spans = await collector.waitFor((all) => serverSpansOf(all, paths).length >= paths.size, 60_000, () => logsOf(app));
  const server = serverSpansOf(spans, paths);
  expect(new Set(server.map((s) => String(s.attributes['url.path'])))).toEqual(paths);
  expect(new Set(server.map(pidOf))).toEqual(new Set(app.workers.map((w) => w.pid)));
  // Oldest first: each worker's ids arrived in increasing order.
  for (const [pid, arrived] of arrivalsPerWorker(app, spans, paths)) {
    expect([pid, arrived]).toEqual([pid, [...arrived].sort((a, b) => a - b)]);
    expect(arrived.length).toBeGreaterThan(0);
  }
  expect(outOfOrder(spans, paths)).toEqual([]);
  // The exporters' own counts: every span delivered, none dropped or held; and
  // what they delivered (acknowledged) is exactly what arrived, each once.
  const { delivered, dropped } = await handled(app, spansPerRequest * ids.length);
  expect({ delivered, dropped }).toEqual({ delivered: spansPerRequest * ids.length, dropped: 0 });
  expect(collector.spans).toHaveLength(delivered);
  expect(duplicateSpanIds(collector.spans)).toEqual([]);

  // One line when the outage began, one when it ended, with what the worker delivered.
  await waitUntil(() => logsOf(app), () => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === 1), 20_000);
  const recovered = app.workers.flatMap((w) => recoveries(otelLines(w.pid)));
  expect(recovered.map((r) => r.dropped)).toEqual([0, 0]);
  expect(recovered.reduce((sum, r) => sum + r.delivered, 0)).toBe(spansPerRequest * ids.length);
  for (const w of app.workers) expect(otelLines(w.pid)).toHaveLength(2);
});

test('a collector cut for 10 s, then flapping, fails no request and delivers each span exactly once, oldest first, in a few log lines per outage', async () => {
  const collector = await reserveCollector();
  await collector.start();
  // Room for the whole outage: this test is about delivery; the bound has its own test below.
  const app = await startApp('outage-cut', collector, { OTEL_BSP_MAX_QUEUE_SIZE: '20000' });
  const allItems = (all: ReceivedSpan[]): ReceivedSpan[] => all.filter((s) => s.kind === 2 && Number.isInteger(itemOf(s)));

  const load = startLoad({ port: app.port, keepAliveClients: 2, oneShotClients: 2, firstId: 1, pauseMs: 5 });
  cleanups.push(() => load.stop());
  // Exports work before the cut: spans from both workers arrived.
  await collector.waitFor((all) => new Set(allItems(all).map(pidOf)).size === 2, 30_000, () => logsOf(app));
  await collector.stop();
  // The cut itself lasts 10 s (a duration under test); requests are answered throughout.
  const atCut = load.progress().ok;
  await sleep(10_000);
  expect(load.progress().ok).toBeGreaterThan(atCut);
  await collector.start();
  // Every worker that saw the cut is over it.
  await waitUntil(
    () => logsOf(app),
    () => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === count(otelLines(w.pid), 'cannot export spans')),
    30_000,
  );
  const FLAPS = 3;
  const refused = (): number => collector.requests.filter((r) => !r.accepted).length;
  const accepted = (): number => collector.requests.filter((r) => r.accepted).length;
  for (let i = 0; i < FLAPS; i += 1) {
    // Each flap lasts until the collector has refused an export, then until it has accepted one again.
    const [refusedBefore, answeredBefore] = [refused(), load.progress().ok];
    collector.setFailure('unavailable');
    await waitUntil(`flap ${i + 1}: an export refused`, () => refused() > refusedBefore, 30_000);
    const acceptedBefore = accepted();
    collector.setFailure('none');
    await waitUntil(`flap ${i + 1}: an export accepted again`, () => accepted() > acceptedBefore, 30_000);
    expect(load.progress().ok).toBeGreaterThan(answeredBefore);
  }
  const result = await load.stop();
  expect(result.errors).toEqual([]);
  expect(result.failed).toBe(0);
  expect(result.ok).toBe(result.sent);

  const paths = new Set(result.answered.map((id) => `/items/${id}`));
  const spans = await collector.waitFor((all) => serverSpansOf(all, paths).length >= paths.size, 60_000, () => logsOf(app));
  expect(new Set(serverSpansOf(spans, paths).map((s) => String(s.attributes['url.path'])))).toEqual(paths);
  expect(outOfOrder(spans, paths)).toEqual([]);
  // Every span handled by the exporters, none dropped: what they delivered is exactly what arrived, each once.
  const { delivered, dropped, stats } = await handled(app, spansPerRequest * result.ok);
  expect(dropped).toBe(0);
  expect(collector.spans).toHaveLength(delivered);
  expect(serverSpansOf(collector.spans, paths)).toHaveLength(paths.size);
  expect(duplicateSpanIds(collector.spans)).toEqual([]);
  for (const s of stats.values()) expect(s.telemetry).toMatchObject({ dropped: 0, held: 0 });

  // Every outage a worker saw is over, and cost it one line at each end: the cut and each flap, at most.
  const OUTAGES = 1 + FLAPS;
  await waitUntil(
    () => logsOf(app),
    () => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === count(otelLines(w.pid), 'cannot export spans')),
    30_000,
  );
  for (const w of app.workers) {
    const lines = otelLines(w.pid);
    const outages = count(lines, 'cannot export spans');
    expect(outages).toBeGreaterThanOrEqual(1);
    expect(outages).toBeLessThanOrEqual(OUTAGES);
    expect(lines.length).toBeLessThanOrEqual(3 * outages);
    const ends = recoveries(lines);
    expect(ends).toHaveLength(outages);
    expect(ends.filter((r) => r.dropped !== 0)).toEqual([]);
  }
});

test('with its hold full, a worker drops the oldest spans, counts and reports them, and delivers the rest: received + dropped = produced', async () => {
  const collector = await reserveCollector();
  const app = await startApp('outage-queue-full', collector, { OTEL_BSP_MAX_QUEUE_SIZE: '64', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '32' });

  // First a few requests, until each worker's first export has failed: that
  // export loads gRPC and connects, and while it runs the processor's own
  // queue (also 64) would fill and drop spans that no count sees (checked below).
  const warmup = await sendItems(app.port, range(1, 10), 2);
  expect(warmup.answered).toHaveLength(10);
  await waitUntil(() => logsOf(app), () => app.workers.every((w) => count(otelLines(w.pid), 'cannot export spans') === 1), 20_000);

  // One at a time: on each worker, a request with a higher id ended later.
  const burst = await sendItems(app.port, range(100, 400), 1);
  expect(burst.failures).toEqual([]);
  expect(burst.answered).toHaveLength(400);
  const sent = [...warmup.answered, ...burst.answered];
  const produced = spansPerRequest * sent.length;

  // Every span has reached the exporters (/_test/stats makes none): each holds 64, the rest is dropped.
  let down = new Map<number, WorkerStats>();
  await waitUntil(
    () => `every span held or dropped: ${JSON.stringify([...down.values()])}`,
    async () => {
      down = (await statsOfWorkers(app)).stats;
      return [...down.values()].reduce((sum, s) => sum + s.telemetry.held + s.telemetry.dropped, 0) === produced;
    },
    20_000,
    250,
  );
  for (const s of down.values()) expect(s.telemetry).toMatchObject({ delivered: 0, held: 64 });

  await collector.start();
  await waitUntil(() => logsOf(app), () => app.workers.every((w) => count(otelLines(w.pid), 'recovered after') === 1), 60_000);
  const up = await handled(app, produced);
  // The exporters' counts: every span delivered or dropped; nothing is dropped once the collector answers.
  expect(up.dropped).toBe([...down.values()].reduce((sum, s) => sum + s.telemetry.dropped, 0));
  expect({ received: collector.spans.length, dropped: up.dropped }).toEqual({ received: produced - up.dropped, dropped: up.dropped });
  expect(up.delivered).toBe(collector.spans.length);
  expect(duplicateSpanIds(collector.spans)).toEqual([]);

  // The oldest were dropped: on each worker, the ids that arrived are its newest,
  // in order; so every id that did not arrive is older than the oldest one that
  // arrived from at least one worker.
  const paths = new Set(sent.map((id) => `/items/${id}`));
  const arrivals = arrivalsPerWorker(app, collector.spans, paths);
  for (const [pid, arrived] of arrivals) expect([pid, arrived]).toEqual([pid, [...arrived].sort((a, b) => a - b)]);
  const arrived = new Set([...arrivals.values()].flat());
  const missing = sent.filter((id) => !arrived.has(id));
  expect(missing.length).toBeGreaterThan(0);
  const oldestKept = Math.max(...[...arrivals.values()].map((ids) => Math.min(...ids)));
  expect(missing.filter((id) => id > oldestKept)).toEqual([]);
  // The newest request of all is among the kept.
  expect(arrived.has(499)).toBe(true);

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
  // The processor's own queue never overflowed: its drops would be in no count (the exporters'
  // counts above account for every span), only in this line.
  expect(pm2.errLog()).not.toContain('because maxQueueSize reached');
});

test('pm2 stop during an outage reports, per worker, the spans it could not deliver', async () => {
  const collector = await reserveCollector();
  await collector.start();
  const app = await startApp('outage-stop', collector);

  const before = await sendItems(app.port, range(1, 20), 2);
  expect(before.answered).toHaveLength(20);
  // All delivered and acknowledged: no export is in flight when the collector goes.
  const { delivered } = await handled(app, spansPerRequest * 20);
  await collector.stop();
  const received = collector.spans.length;
  expect(received).toBe(spansPerRequest * 20);
  expect(delivered).toBe(received);

  const during = await sendItems(app.port, range(100, 30), 2);
  expect(during.answered).toHaveLength(30);
  await pm2.run(['stop', app.name]);

  const reports = (pid: number): string[] =>
    otelLines(pid).filter((line) => line.includes('spans not delivered at shutdown') || line.includes('telemetry flush did not finish'));
  await waitUntil(() => logsOf(app), () => app.workers.every((w) => reports(w.pid).length === 1), 15_000);
  // The collector refuses connections at once, so each worker's flush finishes and counts what it held:
  // with what arrived before, that is every span.
  const notDelivered = app.workers.map((w) => /(\d+) spans not delivered at shutdown/.exec(reports(w.pid)[0]!));
  expect(notDelivered.map((match) => match !== null)).toEqual(app.workers.map(() => true));
  const lost = notDelivered.reduce((sum, match) => sum + Number(match![1]), 0);
  expect(received + lost).toBe(spansPerRequest * 50);
});
