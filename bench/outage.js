// @ts-check
'use strict';

/**
 * What a collector outage costs the kit, in figures: the app under PM2 (two
 * workers, the kit's ecosystem file and default OTEL_* settings), a steady
 * load, and an OTLP/gRPC collector that is up, unreachable (not listening),
 * or flapping (answering UNAVAILABLE every other second).
 *
 *  1. Latency and throughput side by side in one run: up, unreachable,
 *     flapping, twice over, and the ratio unreachable/up.
 *  2. Memory held through one outage: RSS of each worker before and after a
 *     first run of REQUESTS_PER_RUN requests while the collector is
 *     unreachable, and after a second run during the same outage. The first
 *     run fills each worker's hold (OTEL_BSP_MAX_QUEUE_SIZE spans); the second
 *     must add little, since the hold is full and the oldest spans are dropped.
 *  3. What the outage cost in log lines per worker, spans delivered and
 *     dropped, and how long after the collector came back the held spans left.
 *
 * Prints a table and writes bench/results/outage.json and outage.md. The
 * tests (test/e2e/outage.test.ts) assert counts; figures come from here.
 *
 * Usage: npm run build && node bench/outage.js
 *
 * The same file also runs the two child processes it forks, so that neither
 * the collector nor the load generator shares the driver's event loop:
 *   node bench/outage.js --collector <port>
 *   node bench/outage.js --load <url> <connections> <seconds> <requests>
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const { fork, execFileSync } = require('node:child_process');
const { createPm2, ROOT } = require('./lib/pm2');
const { onCleanup, cleanupAll, cleanupOnSignals } = require('./lib/cleanup');
const { freePort, sleep, waitFor200 } = require('./lib/http');
const { rssMb, totalCpuMicros, CLK_TCK } = require('./lib/proc');

const APP = 'bench-outage';
const WORKERS = 2;
const CONNECTIONS = 50;
/** Length of each latency measurement. */
const SECONDS = 10;
const ROUNDS = 3;
const REQUESTS_PER_RUN = 20_000;
/** Flapping: the collector refuses (UNAVAILABLE) for this long, then accepts for as long. */
const FLAP_MS = 1000;
/** The kit's default hold, per worker (OTEL_BSP_MAX_QUEUE_SIZE). */
const MAX_HELD = 2048;
/** Longer than the keep-alive timeout (2 s): the load's sockets are closed when memory is read. */
const IDLE_MS = 3000;
const RESULTS = path.join(__dirname, 'results');
/** Optional: without it, a plain http loop loads the app (a variable: autocannon ships no types). */
const AUTOCANNON = 'autocannon';

// ---------------------------------------------------------------------------
// Child process: the collector

/**
 * An OTLP/gRPC trace collector on 127.0.0.1:<port> that counts spans (see
 * bench/sink.js) and, when told to flap, answers every other period with
 * UNAVAILABLE. Exits when the driver disconnects.
 * @param {number} port
 */
async function runCollector(port) {
  const grpc = require('@grpc/grpc-js');
  const { countSpans, RAW_TRACE_SERVICE } = require('./sink');
  const counts = { spans: 0, exports: 0, refused: 0 };
  let refusing = false;
  /** @type {NodeJS.Timeout | undefined} */
  let flapTimer;
  const server = new grpc.Server();
  server.addService(
    RAW_TRACE_SERVICE,
    {
      /** @type {import('@grpc/grpc-js').handleUnaryCall<Buffer, Buffer>} */
      Export(call, callback) {
        if (refusing) {
          counts.refused += 1;
          callback({ code: grpc.status.UNAVAILABLE, details: 'bench collector is flapping' });
          return;
        }
        counts.exports += 1;
        counts.spans += countSpans(call.request);
        callback(null, Buffer.alloc(0));
      },
    },
  );
  await new Promise((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const send = /** @type {NonNullable<typeof process.send>} */ (process.send).bind(process);
  process.on('message', (/** @type {{ type: string, id?: number, ms?: number }} */ message) => {
    if (message.type === 'counts') send({ type: 'counts', id: message.id, counts });
    if (message.type === 'flap') {
      clearInterval(flapTimer);
      refusing = true;
      flapTimer = setInterval(() => (refusing = !refusing), message.ms);
    }
    if (message.type === 'steady') {
      clearInterval(flapTimer);
      refusing = false;
    }
  });
  process.on('disconnect', () => {
    server.forceShutdown();
    process.exit(0);
  });
  send({ type: 'ready' });
}

// ---------------------------------------------------------------------------
// Child process: the load generator

/**
 * @typedef {object} LoadResult
 * @property {string} tool
 * @property {number} requests   answered 2xx
 * @property {number} errors     socket errors, timeouts and non-2xx answers
 * @property {number} seconds
 * @property {number} rps
 * @property {number} p50Ms
 * @property {number} p99Ms
 * @property {number} cpuMicros  the load generator's own CPU time
 */

/**
 * The part of autocannon's result read here (it ships no types): duration in
 * latency in ms.
 * @typedef {{ errors: number, timeouts: number, non2xx: number, '2xx': number, latency: { p50: number, p99: number } }} AutocannonResult
 */

/**
 * Steady closed-loop load on GET /items/<n> (n unique): autocannon when it is
 * installed, else a bounded loop of keep-alive http requests. Stops after
 * `seconds`, or after `requests` requests when that is not 0.
 * @param {string} url
 * @param {number} connections
 * @param {number} seconds
 * @param {number} requests
 * @returns {Promise<LoadResult>}
 */
async function runLoad(url, connections, seconds, requests) {
  let counter = 0;
  /** @type {(options: object, done: (error: Error | null, result: AutocannonResult) => void) => void} */
  let autocannon;
  try {
    autocannon = require(AUTOCANNON);
  } catch {
    return httpLoop(url, connections, seconds, requests);
  }
  const version = require(`${AUTOCANNON}/package.json`).version;
  // Timed here: autocannon's own `duration` is coarse for a run bounded by a request count.
  const started = performance.now();
  /** @type {AutocannonResult} */
  const result = await new Promise((resolve, reject) =>
    autocannon(
      {
        url,
        connections,
        ...(requests > 0 ? { amount: requests } : { duration: seconds }),
        timeout: 10,
        requests: [{ method: 'GET', setupRequest: (/** @type {object} */ request) => ({ ...request, path: `/items/${++counter}` }) }],
      },
      (error, value) => (error ? reject(error) : resolve(value)),
    ),
  );
  const elapsed = (performance.now() - started) / 1000;
  return {
    tool: `autocannon ${version}`,
    requests: result['2xx'],
    errors: result.errors + result.timeouts + result.non2xx,
    seconds: elapsed,
    rps: result['2xx'] / elapsed,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    cpuMicros: cpuMicrosOfThisProcess(),
  };
}

/**
 * The fallback load generator: `connections` keep-alive clients in a loop.
 * @param {string} url
 * @param {number} connections
 * @param {number} seconds
 * @param {number} requests
 * @returns {Promise<LoadResult>}
 */
async function httpLoop(url, connections, seconds, requests) {
  const { hostname, port } = new URL(url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const started = performance.now();
  const deadline = started + seconds * 1000;
  /** @type {number[]} */
  const latencies = [];
  let errors = 0;
  let sent = 0;
  const more = () => (requests > 0 ? sent < requests : performance.now() < deadline);
  const client = async () => {
    while (more()) {
      const id = ++sent;
      const t0 = performance.now();
      const ok = await new Promise((resolve) => {
        const req = http.get({ hostname, port, path: `/items/${id}`, agent, timeout: 10_000 }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode === 200));
        });
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolve(false));
      });
      if (ok) latencies.push(performance.now() - t0);
      else errors += 1;
    }
  };
  await Promise.all(Array.from({ length: connections }, client));
  agent.destroy();
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (/** @type {number} */ q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
  return {
    tool: 'node http loop',
    requests: latencies.length,
    errors,
    seconds: elapsed,
    rps: latencies.length / elapsed,
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    cpuMicros: cpuMicrosOfThisProcess(),
  };
}

function cpuMicrosOfThisProcess() {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/**
 * CPU time the whole machine spent busy so far (all cores, /proc/stat), in
 * microseconds: with the bench's own processes' time, it tells how much
 * other processes disturbed a measurement.
 */
function machineBusyMicros() {
  try {
    const fields = (fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    const busy = fields.slice(0, 8).reduce((sum, n, i) => (i === 3 || i === 4 ? sum : sum + n), 0);
    return (busy * 1e6) / CLK_TCK;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------------------
// The driver's handles on its children

/**
 * The collector, on one port for the whole run, started and stopped as the
 * measurement needs. `spans()` adds up what every incarnation received.
 * @param {number} port
 */
function createCollector(port) {
  /** @type {import('node:child_process').ChildProcess | undefined} */
  let child;
  let earlierSpans = 0;
  let nextId = 1;

  /** @returns {Promise<{ spans: number, exports: number, refused: number }>} */
  const counts = () =>
    new Promise((resolve, reject) => {
      const current = child;
      if (current === undefined || !current.connected) return reject(new Error('the collector is not running'));
      const id = nextId++;
      const onMessage = (/** @type {any} */ message) => {
        if (message.type !== 'counts' || message.id !== id) return;
        current.off('message', onMessage);
        resolve(message.counts);
      };
      current.on('message', onMessage);
      current.send({ type: 'counts', id });
    });

  const collector = {
    url: `http://127.0.0.1:${port}`,
    /** The current incarnation's pid, 0 while down. */
    get pid() {
      return child?.pid ?? 0;
    },
    async up() {
      if (child !== undefined) return;
      const started = fork(__filename, ['--collector', String(port)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
      const forget = onCleanup('collector', () => collector.down());
      started.once('exit', () => void forget());
      await new Promise((resolve, reject) => {
        started.once('error', reject);
        started.once('exit', (code) => reject(new Error(`the collector exited with code ${code} before it was ready`)));
        started.once('message', resolve);
      });
      child = started;
    },
    async down() {
      const current = child;
      if (current === undefined) return;
      earlierSpans += (await counts().catch(() => ({ spans: 0 }))).spans;
      child = undefined;
      if (current.exitCode !== null || current.signalCode !== null) return;
      const exited = new Promise((resolve) => current.once('exit', resolve));
      current.disconnect();
      const timer = setTimeout(() => current.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
    flap() {
      child?.send({ type: 'flap', ms: FLAP_MS });
    },
    steady() {
      child?.send({ type: 'steady' });
    },
    /** Spans received by every incarnation so far. */
    async spans() {
      return earlierSpans + (child === undefined ? 0 : (await counts()).spans);
    },
  };
  return collector;
}

/**
 * Runs the load generator in a child process.
 * @param {number} port
 * @param {{ seconds?: number, requests?: number }} bound
 * @returns {Promise<LoadResult>}
 */
function load(port, bound) {
  const args = ['--load', `http://127.0.0.1:${port}`, String(CONNECTIONS), String(bound.seconds ?? 0), String(bound.requests ?? 0)];
  const child = fork(__filename, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  const forget = onCleanup('load generator', () => void child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    /** @type {LoadResult | undefined} */
    let result;
    child.on('message', (/** @type {LoadResult} */ message) => (result = message));
    child.once('error', reject);
    child.once('exit', (code) => {
      void forget();
      if (result === undefined) reject(new Error(`the load generator exited with code ${code} without a result`));
      else resolve(result);
    });
  });
}

// ---------------------------------------------------------------------------
// The workers

/**
 * @typedef {object} WorkerStats
 * @property {number} pid
 * @property {number} rss
 * @property {number} heapUsed
 * @property {{ delivered: number, dropped: number, held: number }} telemetry
 */

/**
 * `/_test/stats` of every worker, asked on fresh connections until each answered.
 * @param {number} port
 * @param {number[]} pids
 * @returns {Promise<Map<number, WorkerStats>>}
 */
async function statsOf(port, pids) {
  /** @type {Map<number, WorkerStats>} */
  const stats = new Map();
  for (let i = 0; i < 50 && stats.size < pids.length; i += 1) {
    const body = await getJson(port, '/_test/stats');
    if (body !== undefined) stats.set(body.pid, body);
  }
  if (stats.size < pids.length) throw new Error(`/_test/stats: only workers ${[...stats.keys()].join(', ')} answered, expected ${pids.join(', ')}`);
  return stats;
}

/**
 * @param {number} port
 * @param {string} path
 * @returns {Promise<any>}
 */
function getJson(port, path) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? JSON.parse(body) : undefined);
        } catch {
          resolve(undefined);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/**
 * The telemetry preload's own lines (`otel: …`) per worker, from PM2's logs.
 * @param {{ logs(): string }} pm2
 * @param {number[]} pids
 * @returns {Map<number, string[]>}
 */
function otelLines(pm2, pids) {
  /** @type {Map<number, string[]>} */
  const lines = new Map(pids.map((pid) => [pid, []]));
  for (const line of pm2.logs().split('\n')) {
    if (!line.includes('"otel: ')) continue;
    try {
      const parsed = JSON.parse(line);
      lines.get(parsed.pid)?.push(parsed.msg);
    } catch {
      // not one of ours
    }
  }
  return lines;
}

/**
 * @param {Map<number, WorkerStats>} before
 * @param {Map<number, WorkerStats>} after
 * @param {'delivered' | 'dropped'} key
 */
const telemetryDelta = (before, after, key) =>
  [...after.values()].reduce((sum, s) => sum + s.telemetry[key] - (before.get(s.pid)?.telemetry[key] ?? 0), 0);

const mb = (/** @type {number} */ bytes) => bytes / 1024 / 1024;
const fixed = (/** @type {number} */ n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '–');

// ---------------------------------------------------------------------------
// The driver

async function main() {
  cleanupOnSignals();
  if (!fs.existsSync(path.join(ROOT, 'dist', 'otel', 'register.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  const appPort = await freePort();
  const collector = createCollector(await freePort());
  await collector.up();

  const pm2 = createPm2({
    APP_NAME: APP,
    WEB_CONCURRENCY: String(WORKERS),
    HOST: '127.0.0.1',
    PORT: String(appPort),
    ENABLE_TEST_ROUTES: 'true',
    OTEL_SERVICE_NAME: APP,
    OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
  });
  onCleanup('pm2 daemon', () => pm2.kill());
  await pm2.start();

  const startApp = async () => {
    await pm2.run(['start', path.join(ROOT, 'ecosystem.config.js')]);
    const pids = (await pm2.waitOnline(APP, WORKERS)).map((p) => p.pid);
    await waitFor200(appPort, '/items/1');
    return pids;
  };

  /**
   * Waits until every worker holds nothing and has ended each outage it began.
   * @param {number[]} pids
   * @returns {Promise<number>} seconds waited
   */
  const waitRecovered = async (pids) => {
    const started = Date.now();
    for (;;) {
      const stats = await statsOf(appPort, pids);
      const lines = otelLines(pm2, pids);
      const ended = pids.every((pid) => {
        const mine = lines.get(pid) ?? [];
        return mine.filter((l) => l.includes('recovered after')).length === mine.filter((l) => l.includes('cannot export spans')).length;
      });
      if (ended && [...stats.values()].every((s) => s.telemetry.held === 0)) return (Date.now() - started) / 1000;
      if (Date.now() - started > 300_000) throw new Error('the workers did not recover within 300 s of the collector coming back');
      await sleep(200);
    }
  };

  // 1. Latency and throughput: up, unreachable, flapping.
  let pids = await startApp();
  console.error(`bench: warm-up, ${SECONDS} s...`);
  const tool = (await load(appPort, { seconds: SECONDS })).tool;
  const otelLineCount = () => [...otelLines(pm2, pids).values()].reduce((sum, lines) => sum + lines.length, 0);
  /**
   * One measurement under load, with what telemetry did meanwhile and how
   * much CPU processes other than the bench's took (they skew the figures).
   * @param {number} round
   * @param {'up' | 'unreachable' | 'flapping'} collectorMode
   */
  const measure = async (round, collectorMode) => {
    console.error(`bench: round ${round}, collector ${collectorMode}, ${SECONDS} s...`);
    const before = await statsOf(appPort, pids);
    const linesBefore = otelLineCount();
    const ours = () => totalCpuMicros([...pids, pm2.pid, collector.pid]) + cpuMicrosOfThisProcess();
    const oursBefore = ours();
    const busyBefore = machineBusyMicros();
    const started = performance.now();
    const result = await load(appPort, { seconds: SECONDS });
    const elapsedMicros = (performance.now() - started) * 1000;
    const otherCpu = (machineBusyMicros() - busyBefore - (ours() - oursBefore) - result.cpuMicros) / elapsedMicros;
    const after = await statsOf(appPort, pids);
    return {
      round,
      collector: collectorMode,
      rps: result.rps,
      p50Ms: result.p50Ms,
      p99Ms: result.p99Ms,
      requests: result.requests,
      errors: result.errors,
      delivered: telemetryDelta(before, after, 'delivered'),
      dropped: telemetryDelta(before, after, 'dropped'),
      logLines: otelLineCount() - linesBefore,
      /** Cores' worth of CPU used by processes outside the bench, on average (0.5 = half a core). */
      otherCpuCores: Math.max(0, otherCpu),
    };
  };
  /** @type {Array<Awaited<ReturnType<typeof measure>>>} */
  const latency = [];
  /** @type {number[]} */
  const recoveries = [];
  for (let round = 1; round <= ROUNDS; round += 1) {
    await collector.up();
    collector.steady();
    recoveries.push(await waitRecovered(pids));
    latency.push(await measure(round, 'up'));
    await collector.down();
    latency.push(await measure(round, 'unreachable'));
    await collector.up();
    collector.flap();
    latency.push(await measure(round, 'flapping'));
  }
  await collector.up();
  collector.steady();
  recoveries.push(await waitRecovered(pids));

  // 2. Memory through one outage, in fresh workers warmed up with the collector up.
  await pm2.run(['delete', APP]);
  pids = await startApp();
  console.error(`bench: memory, warm-up of ${REQUESTS_PER_RUN} requests with the collector up...`);
  await load(appPort, { requests: REQUESTS_PER_RUN });
  await waitRecovered(pids);
  const spansBefore = await collector.spans();
  await collector.down();
  const outageStartedAt = Date.now();
  await sleep(IDLE_MS);
  /** @param {string} label */
  const snapshot = async (label) => {
    const stats = await statsOf(appPort, pids);
    return { label, workers: pids.map((pid) => ({ pid, rssMb: rssMb(pid) ?? NaN, heapUsedMb: mb(stats.get(pid)?.heapUsed ?? NaN), ...stats.get(pid)?.telemetry })) };
  };
  const memory = [await snapshot('before')];
  /** @type {LoadResult[]} */
  const runs = [];
  for (const run of [1, 2]) {
    console.error(`bench: memory, outage run ${run}: ${REQUESTS_PER_RUN} requests with the collector unreachable...`);
    runs.push(await load(appPort, { requests: REQUESTS_PER_RUN }));
    await sleep(IDLE_MS);
    memory.push(await snapshot(`after run ${run}`));
  }
  await collector.up();
  const outageSeconds = (Date.now() - outageStartedAt) / 1000;
  const recoverySeconds = await waitRecovered(pids);
  await sleep(1000);
  const final = await statsOf(appPort, pids);
  const delivered = (await collector.spans()) - spansBefore;
  const outageLines = otelLines(pm2, pids);

  // 3. Report.
  /** @param {'up' | 'unreachable' | 'flapping'} mode @param {'rps' | 'p50Ms' | 'p99Ms'} key */
  const median = (mode, key) => {
    const values = latency.filter((r) => r.collector === mode).map((r) => r[key]).sort((a, b) => a - b);
    const mid = Math.floor(values.length / 2);
    return values.length % 2 === 1 ? (values[mid] ?? NaN) : ((values[mid - 1] ?? NaN) + (values[mid] ?? NaN)) / 2;
  };
  /** @param {'unreachable' | 'flapping'} mode */
  const ratio = (mode) => ({
    rps: median(mode, 'rps') / median('up', 'rps'),
    p50: median(mode, 'p50Ms') / median('up', 'p50Ms'),
    p99: median(mode, 'p99Ms') / median('up', 'p99Ms'),
  });
  const medians = Object.fromEntries(
    /** @type {const} */ (['up', 'unreachable', 'flapping']).map((mode) => [mode, { rps: median(mode, 'rps'), p50Ms: median(mode, 'p50Ms'), p99Ms: median(mode, 'p99Ms') }]),
  );
  const [before, afterRun1, afterRun2] = /** @type {[typeof memory[0], typeof memory[0], typeof memory[0]]} */ (memory);
  const perWorker = pids.map((pid, i) => {
    const rss = (/** @type {typeof memory[0]} */ m) => m.workers[i]?.rssMb ?? NaN;
    const lines = outageLines.get(pid) ?? [];
    return {
      pid,
      rssBeforeMb: rss(before),
      rssAfterRun1Mb: rss(afterRun1),
      rssAfterRun2Mb: rss(afterRun2),
      growthRun1Mb: rss(afterRun1) - rss(before),
      growthRun2Mb: rss(afterRun2) - rss(afterRun1),
      heapUsedMb: memory.map((m) => m.workers[i]?.heapUsedMb ?? NaN),
      heldAfterRun1: afterRun1.workers[i]?.held,
      heldAfterRun2: afterRun2.workers[i]?.held,
      dropped: (final.get(pid)?.telemetry.dropped ?? 0) - (before.workers[i]?.dropped ?? 0),
      logLines: lines.length,
      lines,
    };
  });
  const results = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? 'unknown', memoryGb: Math.round(os.totalmem() / 2 ** 30), node: process.version },
    commit: gitCommit(),
    setup: { workers: WORKERS, loadGenerator: `${tool}, ${CONNECTIONS} connections`, secondsPerMeasurement: SECONDS, rounds: ROUNDS, flapMs: FLAP_MS, maxHeldSpansPerWorker: MAX_HELD, requestsPerOutageRun: REQUESTS_PER_RUN },
    latency,
    medians,
    ratios: { unreachable: ratio('unreachable'), flapping: ratio('flapping') },
    recoverySecondsBeforeUpRounds: recoveries,
    disturbed: latency.some((row) => row.otherCpuCores > 0.2),
    memory: {
      outageRuns: runs.map((r) => ({ requests: r.requests, errors: r.errors, seconds: r.seconds, rps: r.rps })),
      outageSeconds,
      workers: perWorker,
      spansDelivered: delivered,
      spansDropped: perWorker.reduce((sum, w) => sum + w.dropped, 0),
      recoverySeconds,
    },
  };
  const markdown = toMarkdown(results);
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'outage.json'), `${JSON.stringify(results, null, 2)}\n`);
  fs.writeFileSync(path.join(RESULTS, 'outage.md'), markdown);
  console.log(markdown);
  console.log(`(written to ${path.relative(process.cwd(), path.join(RESULTS, 'outage.md'))} and outage.json)`);
}

/** @returns {string} */
function gitCommit() {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'otel'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${commit} (src/ or otel/ modified)` : commit;
  } catch {
    return 'unknown';
  }
}

/**
 * @param {any} r the results object of main()
 * @returns {string}
 */
function toMarkdown(r) {
  const out = [];
  out.push('# Collector outage: what it costs the kit', '');
  out.push(
    `${r.date}, ${r.machine.cpus} × ${r.machine.cpu}, ${r.machine.memoryGb} GB, Node ${r.machine.node}, commit ${r.commit}. ` +
      `PM2 cluster, ${r.setup.workers} workers, kit defaults (OTLP/gRPC, hold of ${r.setup.maxHeldSpansPerWorker} spans per worker); ` +
      `load: ${r.setup.loadGenerator}, GET /items/<n>, on the same machine.`,
    '',
  );
  out.push(`## Latency and throughput (${r.setup.secondsPerMeasurement} s each, ${r.setup.rounds} rounds, interleaved)`, '');
  out.push('| round | collector | req/s | p50 ms | p99 ms | failed requests | spans delivered | spans dropped | otel log lines | other processes\' CPU (cores) |');
  out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const row of r.latency) {
    out.push(
      `| ${row.round} | ${row.collector} | ${fixed(row.rps, 0)} | ${fixed(row.p50Ms)} | ${fixed(row.p99Ms)} | ${row.errors} | ${row.delivered} | ${row.dropped} | ` +
        `${row.logLines} | ${fixed(row.otherCpuCores, 2)} |`,
    );
  }
  out.push('');
  out.push('| collector (medians) | req/s | p50 ms | p99 ms | req/s ratio to up | p50 ratio | p99 ratio |', '|---|---:|---:|---:|---:|---:|---:|');
  for (const mode of ['up', 'unreachable', 'flapping']) {
    const m = r.medians[mode];
    const x = mode === 'up' ? { rps: 1, p50: 1, p99: 1 } : r.ratios[mode];
    out.push(`| ${mode} | ${fixed(m.rps, 0)} | ${fixed(m.p50Ms)} | ${fixed(m.p99Ms)} | ${fixed(x.rps, 2)} | ${fixed(x.p50, 2)} | ${fixed(x.p99, 2)} |`);
  }
  out.push('');
  out.push(
    `Flapping: the collector answers UNAVAILABLE for ${r.setup.flapMs} ms, then accepts for ${r.setup.flapMs} ms. ` +
      `Before each "up" measurement the bench waits until every worker holds nothing: ` +
      `${r.recoverySecondsBeforeUpRounds.map((/** @type {number} */ s) => fixed(s)).join(' s, ')} s after the collector came back steady.`,
    '',
  );
  if (r.disturbed) {
    out.push('**Other processes used more than 0.2 core during some measurements (last column): those rows are skewed; run again on a quiet machine.**', '');
  }
  const m = r.memory;
  out.push(`## Memory through one outage (${r.setup.requestsPerOutageRun} requests per run, collector unreachable throughout)`, '');
  out.push('| worker | RSS before MB | after run 1 | after run 2 | growth run 1 MB | growth run 2 MB | held after run 1 / 2 | spans dropped | log lines |');
  out.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const w of m.workers) {
    out.push(
      `| ${w.pid} | ${fixed(w.rssBeforeMb)} | ${fixed(w.rssAfterRun1Mb)} | ${fixed(w.rssAfterRun2Mb)} | ${fixed(w.growthRun1Mb)} | ${fixed(w.growthRun2Mb)} | ` +
        `${w.heldAfterRun1} / ${w.heldAfterRun2} | ${w.dropped} | ${w.logLines} |`,
    );
  }
  out.push('');
  out.push(
    `Outage runs: ${m.outageRuns.map((/** @type {LoadResult} */ x) => `${x.requests} answered, ${x.errors} failed, ${fixed(x.rps, 0)} req/s`).join('; ')}. ` +
      `Outage of ${fixed(m.outageSeconds)} s. After the collector came back: ${m.spansDelivered} held spans delivered within ${fixed(m.recoverySeconds)} s, ` +
      `${m.spansDropped} spans dropped in all.`,
    '',
  );
  out.push('Log lines of the outage, per worker:', '');
  for (const w of m.workers) for (const line of w.lines) out.push(`- ${w.pid}: \`${line}\``);
  out.push('');
  return out.join('\n');
}

// ---------------------------------------------------------------------------

const [mode, ...args] = process.argv.slice(2);
if (mode === '--collector') {
  runCollector(Number(args[0])).catch((error) => {
    console.error(`collector failed: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  });
} else if (mode === '--load') {
  const [url = '', connections = '50', seconds = '10', requests = '0'] = args;
  runLoad(url, Number(connections), Number(seconds), Number(requests)).then(
    (result) => process.send?.(result, () => process.exit(0)),
    (error) => {
      console.error(`load generator failed: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    },
  );
} else {
  main()
    .catch((error) => {
      console.error(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
      process.exitCode = 1;
    })
    .finally(() => cleanupAll());
}
