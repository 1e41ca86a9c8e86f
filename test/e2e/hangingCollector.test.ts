/**
 * The kit against a collector that hangs instead of failing fast, under a
 * real PM2 daemon, over gRPC and http/protobuf, in three ways (see
 * `test/helpers/hangingCollector.ts`): it accepts the connection and never
 * answers; it answers, but after the export timeout; it starts an answer and
 * stalls. In each: every request is served, the outage is reported while it
 * lasts, `pm2 stop` ends within `kill_timeout` with every worker exiting 0,
 * and each worker reports the spans it did not deliver, counts that add up
 * with the spans produced.
 *
 * Export timeouts are the defaults (10 s, beyond the 2 s flush budget) for
 * the collector that never answers, and 1 s for the others to keep the file
 * short; the drain and flush budgets are the kit's defaults. Assertions are
 * on counts and exit codes; the stop times are printed for the README.
 */
import fs from 'node:fs';
import path from 'node:path';
import { startHangingCollector, type HangingCollector, type HangMode, type HangProtocol } from '../helpers/hangingCollector';
import { get } from '../helpers/load';
import { startApp, startPm2, type Pm2, type Pm2ProcessInfo, preloadLines } from '../helpers/pm2';

jest.setTimeout(60_000);

let pm2: Pm2;
const cleanups: Array<() => Promise<unknown>> = [];
/** What each case measured, printed at the end. */
const figures: string[] = [];

beforeAll(async () => {
  pm2 = await startPm2();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

afterAll(async () => {
  await pm2?.kill();
  if (figures.length > 0) process.stdout.write(`hanging collector, per case:\n${figures.join('\n')}\n`);
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(condition: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not met within ${timeoutMs} ms: ${describe()}`);
    await sleep(100);
  }
}

/** The telemetry preload's own lines (`otel: …`) written by one worker. */
const otelLines = (pid: number): string[] => preloadLines(pm2, pid);

const count = (lines: string[], text: string): number => lines.filter((line) => line.includes(text)).length;

function logsOf(workers: Pm2ProcessInfo[]): string {
  return workers.map((w) => `worker ${w.pid}:\n  ${otelLines(w.pid).join('\n  ')}`).join('\n');
}

/** When a worker wrote `msg` (the first line that starts so), from PM2's logs. */
function timeOf(pid: number, msg: string): number {
  for (const line of `${pm2.outLog()}\n${pm2.errLog()}`.split('\n')) {
    try {
      const parsed = JSON.parse(line) as { pid?: unknown; msg?: unknown; time?: unknown };
      if (parsed.pid === pid && typeof parsed.msg === 'string' && parsed.msg.startsWith(msg)) return Date.parse(String(parsed.time));
    } catch {
      // not a JSON line
    }
  }
  return NaN;
}

/** PM2's own log lines saying how each worker of `name` exited. */
function exits(name: string): string[] {
  const log = fs.readFileSync(path.join(pm2.home, 'pm2.log'), 'utf8');
  return log.split('\n').filter((line) => line.includes(`App [${name}:`) && line.includes('exited with code'));
}

/** GET /items/<id> for `total` ids, 4 at a time, each on a fresh connection so that PM2 spreads them over the workers. */
async function sendItems(port: number, total: number): Promise<{ answered: number; failures: string[] }> {
  let next = 1;
  let answered = 0;
  const failures: string[] = [];
  const client = async (): Promise<void> => {
    for (let id = next++; id <= total; id = next++) {
      const res = await get(port, `/items/${id}`).catch((error: Error) => ({ status: 0, body: error.message }));
      if (res.status === 200) answered += 1;
      else failures.push(`${id}: ${res.status} ${res.body}`);
    }
  };
  await Promise.all([client(), client(), client(), client()]);
  return { answered, failures };
}

interface Telemetry {
  delivered: number;
  dropped: number;
  held: number;
}

/** `/_test/stats` of every worker, asked on fresh connections until each has answered; also how many requests that took. */
async function statsOfWorkers(port: number, workers: Pm2ProcessInfo[]): Promise<{ stats: Map<number, Telemetry>; requests: number }> {
  const stats = new Map<number, Telemetry>();
  let requests = 0;
  while (stats.size < workers.length && requests < 50) {
    const res = await get(port, '/_test/stats');
    requests += 1;
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as { pid: number; telemetry: Telemetry };
    stats.set(body.pid, body.telemetry);
  }
  expect([...stats.keys()].sort()).toEqual(workers.map((w) => w.pid).sort());
  return { stats, requests };
}

const REQUESTS = 200;
/** The kit makes one span per request (README; `outage.test.ts` calibrates it). */
const SPANS_PER_REQUEST = 1;
const DRAIN_TIMEOUT_MS = 3000;
const FLUSH_TIMEOUT_MS = 2000;
const KILL_TIMEOUT_MS = DRAIN_TIMEOUT_MS + FLUSH_TIMEOUT_MS + 1000;

/**
 * The kit waits for an export the smaller of OTEL_EXPORTER_OTLP_TIMEOUT
 * (10 s by default) and OTEL_BSP_EXPORT_TIMEOUT (30 s).
 */
const EXPORT_TIMEOUTS: Record<HangMode, Record<string, string>> = {
  // The defaults, as in the user's report: the export outlasts the flush
  // budget, which must then give up on it and still count.
  silent: {},
  // 1 s for the kit, 5 s for the exporter itself, so that the late success
  // does reach the kit.
  late: { OTEL_BSP_EXPORT_TIMEOUT: '1000', OTEL_EXPORTER_OTLP_TIMEOUT: '5000' },
  // 1 s for both.
  partial: { OTEL_EXPORTER_OTLP_TIMEOUT: '1000' },
};

const cases: Array<[HangProtocol, HangMode, string]> = [
  ['grpc', 'silent', 'accepts the connection and never answers'],
  ['grpc', 'late', 'answers success 2 s after each export, past the export timeout'],
  ['grpc', 'partial', 'sends response headers, then nothing'],
  ['http/protobuf', 'silent', 'accepts the connection and never answers'],
  ['http/protobuf', 'late', 'answers success 2 s after each export, past the export timeout'],
  ['http/protobuf', 'partial', 'sends a 200 status, headers and part of the body, then stalls'],
];

test.each(cases)('%s, a collector that %s (%s): every request served, the outage reported while it lasts, and at pm2 stop each worker exits 0 and counts what it did not deliver', async (protocol, mode) => {
  const collector: HangingCollector = await startHangingCollector(mode, protocol, { answerAfterMs: 2000 });
  cleanups.push(() => collector.close());
  const name = `hang-${protocol === 'grpc' ? 'grpc' : 'http'}-${mode}`;
  cleanups.push(() => pm2.run(['delete', name]));
  const port = await startApp(pm2, name, {
    ENABLE_TEST_ROUTES: 'true',
    OTEL_SERVICE_NAME: name,
    OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
    // Spans only: log records and metrics behind the same collector would add
    // lines of their own (test/otel/logs.test.ts and metrics.test.ts cover them).
    OTEL_LOGS_EXPORTER: 'none',
    OTEL_METRICS_EXPORTER: 'none',
    OTEL_BSP_SCHEDULE_DELAY: '200',
    ...EXPORT_TIMEOUTS[mode],
    DRAIN_TIMEOUT_MS: String(DRAIN_TIMEOUT_MS),
    FLUSH_TIMEOUT_MS: String(FLUSH_TIMEOUT_MS),
  });
  const workers = (await pm2.list()).filter((p) => p.name === name);
  expect(workers).toHaveLength(2);

  const sendStarted = Date.now();
  const items = await sendItems(port, REQUESTS);
  expect(items.failures).toEqual([]);
  expect(items.answered).toBe(REQUESTS);

  // The outage is reported while it lasts, once per worker.
  await waitUntil(() => workers.every((w) => count(otelLines(w.pid), 'cannot export spans') === 1), 20_000, () => logsOf(workers));
  const reportedAfterMs = Date.now() - sendStarted;
  const { stats, requests: statsRequests } = await statsOfWorkers(port, workers);
  for (const telemetry of stats.values()) expect(telemetry).toMatchObject({ delivered: 0, dropped: 0 });

  const stopStarted = Date.now();
  await pm2.run(['stop', name]);
  const stopMs = Date.now() - stopStarted;

  // Each worker exited by itself, 0, before kill_timeout (PM2 would have sent SIGKILL).
  await waitUntil(() => exits(name).length === 2, 10_000, () => exits(name).join('\n'));
  expect(exits(name).every((line) => line.includes('exited with code [0] via signal [SIGINT]'))).toBe(true);

  const notDelivered = (pid: number): number[] =>
    otelLines(pid).flatMap((line) => {
      const match = /^otel: (\d+) spans not delivered at shutdown: collector at \S+ unreachable$/.exec(line);
      return match ? [Number(match[1])] : [];
    });
  await waitUntil(() => workers.every((w) => notDelivered(w.pid).length === 1), 10_000, () => logsOf(workers));
  const lost = workers.map((w) => notDelivered(w.pid)[0]!);
  for (const n of lost) expect(n).toBeGreaterThan(0);
  // Nothing was delivered or dropped: every span produced is in one worker's report.
  expect(lost.reduce((sum, n) => sum + n, 0)).toBe(SPANS_PER_REQUEST * (REQUESTS + statsRequests));
  for (const w of workers) {
    const lines = otelLines(w.pid);
    expect(count(lines, 'telemetry flush did not finish')).toBe(0);
    // Two lines for the spans (the outage, the loss at stop); metrics go to
    // the same collector by default and add at most two of their own.
    expect(lines.filter((line) => line.includes(' spans '))).toHaveLength(2);
    expect(lines.filter((line) => !line.includes(' spans ')).every((line) => / metrics /.test(line))).toBe(true);
    expect(lines.length).toBeLessThanOrEqual(4);
  }
  if (mode === 'late') {
    // The collector got spans the kit counts as not delivered: at least once, counted once.
    expect(collector.spans.length).toBeGreaterThan(0);
  }
  // PM2 stops two workers one after the other: each has kill_timeout.
  const shutdownMs = workers.map((w) => timeOf(w.pid, `otel: ${notDelivered(w.pid)[0]} spans not delivered`) - timeOf(w.pid, 'shutting down'));
  figures.push(`${protocol} ${mode}: outage reported ${reportedAfterMs} ms after the first request; pm2 stop ${stopMs} ms, each worker from SIGINT to its report ${shutdownMs.join(' and ')} ms (kill_timeout ${KILL_TIMEOUT_MS}); not delivered ${lost.join(' + ')}, ${workers.map((w) => otelLines(w.pid).length).join(' and ')} log lines`);
});
