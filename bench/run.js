// @ts-check
'use strict';

/**
 * The benchmark: what tracing costs this kit, measured side by side in one
 * run on this machine.
 *
 *   npm run bench                 3 rounds of 10 s per config, off between each (about 17 minutes with every config)
 *   npm run bench -- --quick      1 round of 3 s: a smoke test
 *   BENCH_ROUNDS=5 BENCH_DURATION=20 npm run bench
 *   BENCH_CONFIGS=off,kit npm run bench          a subset (off is always needed)
 *   BENCH_SCENARIO=outage npm run bench          the kit with its collector up, unreachable, flapping
 *   BENCH_SCENARIO=steady npm run bench          the same configs at a steady rate (BENCH_RATE req/s, 5000 by default)
 *   BENCH_LOADGEN=autocannon npm run bench       force the fallback load generator
 *   BENCH_QUIET_WAIT=0 npm run bench             do not wait for a quiet machine before each load
 *
 * Configs, each as 2 workers (PM2 cluster mode from the kit's own
 * ecosystem.config.js, or gunicorn): `off` (OTEL_SDK_DISABLED=true), `off-access`
 * (the same with the kit's default access log on: the baseline the configs
 * that write it are also given against), `kit`
 * (traces only, exporting to a local OTLP/gRPC sink), `kit-http` (the same over
 * OTLP/HTTP protobuf), `metrics` (traces and
 * metrics to the same sink), `all` (traces, metrics and logs) and `all-http`
 * (the same over OTLP/HTTP protobuf), `textbook`
 * (the NodeSDK preload the guides show, same sink), the peers `dd-trace` and
 * `elastic` (another vendor's agent preloaded instead, installed into
 * bench/.peers/ on first use, sending to the sink's stand-in for its agent)
 * and `python` (the seed's FastAPI app, uninstrumented; skipped if not
 * installed). The outage scenario adds `unreachable` and `flapping`. The
 * steady scenario loads the same configs at a steady rate, well below what
 * each can answer, instead of as fast as they answer: its latencies are
 * those of a server with headroom (what a dashboard shows), not of a queue.
 *
 * Rounds interleave the configs (in a rotating order), with `off` again after
 * each, and never run two at once; each load's ratios are taken to the `off`
 * loads right before and after it, then the median over rounds is reported,
 * so that a slow phase of the shared 2-core machine slows both sides of a
 * ratio. Figures go to stdout; progress to stderr; files to bench/results/
 * (latest.json, latest.md, latest.svg; --quick writes bench/results/tmp/quick.*
 * instead, leaving the last full run alone; BENCH_SCENARIO=outage writes
 * bench/results/outage.*).
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { CONFIGS, runOnce, WORKERS, CALIBRATION_REQUESTS, STOP_PROBE_REQUESTS, BSP_SCHEDULE_DELAY_MS, QUIET_BELOW_PCT, RETRY_ABOVE_PCT, MAX_LOADS } = require('./lib/runner');
const { chooseLoadGenerator } = require('./lib/load');
const { findPython } = require('./lib/python');
const { startSink } = require('./lib/sinkClient');
const { installPeers } = require('./lib/peers');
const { onCleanup, cleanupAll, cleanupOnSignals, signalled } = require('./lib/cleanup');
const { ROOT } = require('./lib/pm2');
const report = require('./lib/report');
const { NOISY_PCT } = report;

/** @typedef {import('./lib/runner').Config} Config */
/** @typedef {import('./lib/runner').RunResult} RunResult */

/**
 * The steady scenario's rate, requests a second over both workers: about a
 * tenth of what `off` answers when saturated on this 2-core machine, a
 * sixth of `all`, a third of the textbook setup (see README, Performance).
 */
const STEADY_RATE = 5000;

/**
 * @param {string} name
 * @param {number} fallback
 * @param {boolean} [allowFraction]
 */
function positive(name, fallback, allowFraction = false) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!(value > 0) || (!allowFraction && !Number.isInteger(value))) throw new Error(`${name} must be a positive ${allowFraction ? 'number' : 'integer'}, got ${JSON.stringify(raw)}`);
  return value;
}

function options() {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--quick');
  if (unknown.length > 0) throw new Error(`unknown argument ${unknown.join(' ')} (usage: npm run bench [-- --quick])`);
  const quick = args.includes('--quick');
  const wanted = (process.env.BENCH_CONFIGS ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const scenario = process.env.BENCH_SCENARIO?.trim() || undefined;
  if (scenario !== undefined && scenario !== 'outage' && scenario !== 'steady') throw new Error(`BENCH_SCENARIO: expected "outage" or "steady", got ${JSON.stringify(scenario)}`);
  if (process.env.BENCH_RATE !== undefined && scenario !== 'steady') throw new Error('BENCH_RATE is the steady scenario\'s rate: set BENCH_SCENARIO=steady too');
  // The outage scenario: off and kit as the collector-up references, then the outages. The steady one: the usual configs.
  const inScenario = (/** @type {Config} */ c) => (scenario === undefined || scenario === 'steady' ? c.scenario === undefined : c.scenario === scenario || c.id === 'off' || c.id === 'kit');
  const configs = CONFIGS.filter((c) => c.id === 'off' || (wanted.length === 0 ? inScenario(c) : wanted.includes(c.id)));
  for (const id of wanted) if (!CONFIGS.some((c) => c.id === id)) throw new Error(`BENCH_CONFIGS: unknown config "${id}" (known: ${CONFIGS.map((c) => c.id).join(', ')})`);
  return {
    quick,
    scenario,
    configs,
    rounds: quick ? 1 : positive('BENCH_ROUNDS', 3),
    durationS: quick ? 3 : positive('BENCH_DURATION', 10),
    warmupS: quick ? 1 : positive('BENCH_WARMUP', 2),
    quietWaitS: process.env.BENCH_QUIET_WAIT === '0' ? 0 : positive('BENCH_QUIET_WAIT', quick ? 5 : 20),
    loadgen: process.env.BENCH_LOADGEN,
    rate: scenario === 'steady' ? positive('BENCH_RATE', STEADY_RATE) : undefined,
  };
}

/** What a reader needs to weigh the figures. */
function machine() {
  const cpuinfo = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
  const pm2Version = require(path.join(ROOT, 'node_modules', 'pm2', 'package.json')).version;
  return {
    cpu: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    ramGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    pm2: pm2Version,
    loadAverageAtStart: os.loadavg().map((l) => Number(l.toFixed(2))),
    date: new Date().toISOString(),
  };
}

/**
 * The env file the kit's workers load (`--env-file-if-exists`), if it exists.
 * @returns {string | undefined}
 */
function kitEnvFile() {
  /** @type {string[]} */
  const nodeArgs = [].concat(require(path.join(ROOT, 'ecosystem.config.js')).apps[0].node_args ?? []);
  const file = nodeArgs.find((arg) => arg.startsWith('--env-file-if-exists='))?.slice('--env-file-if-exists='.length);
  return file !== undefined && fs.existsSync(file) ? file : undefined;
}

/**
 * The configs in a different order each round, so that none always runs
 * first (cold caches) or right after the heaviest.
 * @param {Config[]} configs
 * @param {number} round 1-based
 */
function orderFor(configs, round) {
  const shift = (round - 1) % configs.length;
  return [...configs.slice(shift), ...configs.slice(0, shift)];
}

/**
 * Every load of the run, in order: `off` first, then each round's configs
 * with `off` again after each, so that every config runs between two `off`
 * loads, a load apart. The host's speed drifts over minutes (`off` itself
 * moved by a quarter between rounds of one run): a config's ratio is taken
 * to the `off` loads on either side of it (see report.summarize), not to one
 * `off` load minutes away in the same round.
 * @param {Config[]} configs
 * @param {number} rounds
 * @returns {Array<{ config: Config, round: number }>}
 */
function schedule(configs, rounds) {
  const off = configs.find((c) => c.id === 'off');
  const others = configs.filter((c) => c !== off);
  /** @type {Array<{ config: Config, round: number }>} */
  const loads = [];
  if (off !== undefined && others.length > 0) loads.push({ config: off, round: 1 });
  for (let round = 1; round <= rounds; round++) {
    if (others.length === 0 && off !== undefined) loads.push({ config: off, round });
    for (const config of orderFor(others, round)) {
      loads.push({ config, round });
      if (off !== undefined) loads.push({ config: off, round });
    }
  }
  return loads;
}

/** @param {RunResult} r */
function oneLine(r) {
  if (r.error !== undefined) return `FAILED: ${r.error.split('\n')[0]}`;
  const spans = r.spans.received > 0 || r.spans.expected !== undefined ? `, ${r.spans.perRequest.toFixed(2)} spans/req` : '';
  return `${Math.round(r.rps)} req/s, p99 ${r.p99Ms.toFixed(1)} ms, p99.9 ${r.p999Ms.toFixed(1)} ms, ${Math.round(r.cpuUsPerRequest)} µs CPU/req, ${r.rssMb.toFixed(0)} MB, first 200 in ${Math.round(r.startupMs)} ms${spans}, loadgen ${r.loadgenCpuPct.toFixed(1)}% / others ${r.otherCpuPct.toFixed(0)}% CPU`;
}

/**
 * Notes that depend on what was measured.
 * @param {import('./lib/report').ConfigSummary[]} summaries
 * @param {{ pythonNote: string, loadName: string, runs: RunResult[], envFile: string | undefined, quietWaitS: number, rate: number | undefined }} context
 */
function notesFor(summaries, context) {
  const notes = [];
  for (const s of summaries) {
    if (s.config === 'off' && s.spanRequests > 0 && s.spansPerRequest > 0) notes.push(`off: the sink received spans (${s.spansPerRequest.toFixed(2)}/req) although the SDK is disabled.`);
    if (s.expected !== undefined) {
      const missing = Math.max(0, s.missing);
      const logged = s.logLines > 0 ? `${s.logLines} worker log line(s) mention "dropped"${s.loggedDropped > 0 ? ` (${s.loggedDropped} spans)` : ''}` : 'no worker log line mentions "dropped"';
      const records = s.recordsMissing === undefined ? '' : `; ${Math.max(0, s.recordsMissing)} of the log records expected by then (one a span received, one a worker at start) never reached the sink`;
      const counts = s.countsMissing === undefined ? '' : `; the workers' \`http.server.request.duration\` histograms counted ${s.countsMissing === 0 ? 'every request that had a span' : `${Math.abs(s.countsMissing)} request(s) ${s.countsMissing > 0 ? 'fewer' : 'more'} than had spans`}`;
      const stopCounts = s.countsMissing !== undefined && Number.isFinite(s.stopCounted) ? `, and the histograms exported at the stop counted ${Math.round(100 * s.stopCounted)}% of them` : '';
      const stop = Number.isFinite(s.stopDelivered) ? `; of the spans of ${STOP_PROBE_REQUESTS} requests sent right before \`pm2 stop\`, ${Math.round(100 * s.stopDelivered)}% arrived${stopCounts}` : '';
      notes.push(
        `${s.config}: ${s.expected.toFixed(2)} spans per request (calibrated on ${CALIBRATION_REQUESTS} sequential requests); under load ${missing} of ${Math.round(s.expected * s.spanRequests)} expected spans never reached the sink${records}${counts}; ${logged}${stop}.`,
      );
    }
    if (s.restarts > 0) notes.push(`${s.config}: ${s.restarts} worker restart(s) during the load: its CPU and RSS figures are unreliable.`);
    for (const failure of s.failures) notes.push(`${s.config} FAILED ${failure.split('\n')[0]}`);
  }
  const others = context.runs.filter((r) => r.error === undefined).map((r) => r.otherCpuPct);
  if (others.length > 0) {
    notes.push(
      `Noise: processes outside the bench used a median ${report.median(others).toFixed(0)}% (max ${Math.max(...others).toFixed(0)}%) of the machine's CPU during the loads ("others' CPU %" per run, * above ${NOISY_PCT}%), although each load waited up to ${context.quietWaitS} s for a second under ${QUIET_BELOW_PCT}% machine CPU, and a load during which they took more than ${RETRY_ABOVE_PCT}% was run again (at most ${MAX_LOADS} loads, the least disturbed counts: "loads"); the ratios pair each load with the off loads run right before and after it to cancel part of it, and CPU per request is the figure it moves least.`,
    );
  }
  notes.push(context.pythonNote);
  notes.push(
    'sink µs/req and manager µs/req (every run): the CPU the counting sink and the workers\' manager (PM2\'s daemon, which takes each worker\'s stdout over IPC; gunicorn\'s arbiter) used over the load, per request: not in CPU µs/req, but taken from the same 2 cores.',
    'first 200 ms: from spawning `pm2 start` (whose CLI alone takes a few hundred ms to load) or gunicorn, to the first 200 on GET /items/1, polled every 10 ms; RSS MB/worker: the 2 workers\' mean VmRSS, read every 0.5 s during the load and averaged (a single reading at the end of the load, as until 2026-12-01, landed anywhere on the saw-tooth between mark-compacts); peak RSS MB: the largest reading of either worker.',
  );
  if (context.envFile !== undefined) notes.push(`${context.envFile} exists and every PM2 worker loads it (the kit's --env-file-if-exists): its settings apply to these figures.`);
  const loadgen = context.runs.filter((r) => r.error === undefined).map((r) => r.loadgenCpuPct);
  const share = loadgen.length > 0 ? ` The load generator itself used a median ${report.median(loadgen).toFixed(1)}% (${Math.min(...loadgen).toFixed(1)}–${Math.max(...loadgen).toFixed(1)}%) of the machine's CPU ("loadgen CPU %": its CPU time from /proc, as the driver's reaped child, / (wall time × cores)).` : '';
  if (context.rate === undefined) {
    notes.push(`Load: ${context.loadName}, on the same cores as the servers, so req/s is what is left to the servers; CPU per request is the workers' own (user + system time from /proc over the load, divided by the requests answered), much less sensitive to the load generator than req/s, though not immune: a server starved of CPU batches fewer requests per event-loop turn.${share}`);
  } else {
    notes.push(
      `Load: ${context.loadName}, on the same cores as the servers. req/s is the rate offered, met by a config that answers close to it: a config that falls short of it was saturated, and its latencies are a queue's. CPU per request is the workers' own (user + system time from /proc over the load, divided by the requests answered); at this rate a worker sleeps between requests and is woken for nearly each one, which a saturated worker spreads over many, so it is higher than in the saturated run for every config: compare ratios, not microseconds, across the two. wrk measures each latency from the request's send; a connection waiting on a held request sends its next one later, so a pause longer than the mean wait is counted in fewer requests than an open-loop load would count.${share}`,
    );
  }
  notes.push(
    `"spans missing" = requests × spans per request − spans received, counted ${BSP_SCHEDULE_DELAY_MS / 1000 + 1} s after the load (OTEL_BSP_SCHEDULE_DELAY + 1 s, so every batch has left; for a config that exports metrics, its export interval + 1 s, so every worker has exported its histograms since) and before stopping; "requests missing from metrics" = spans received − the requests counted by the workers' \`http.server.request.duration\` histograms by then (the sink keeps the latest count of each cumulative series: the bench requests no path the kit leaves out of spans, so each request has one span and one count); up to 50 requests per load-generator run are still in flight when it stops counting, so small negatives are shown as 0. "spans kept at stop": ${STOP_PROBE_REQUESTS} requests one by one, then \`pm2 stop\` at once, before any batch timer fires. The textbook preload sets no diag logger, so its drops are never logged.`,
  );
  return notes;
}

/**
 * @param {ReturnType<typeof options>} opts
 * @param {ReturnType<typeof machine>} host
 * @param {{ name: string }} load
 * @param {string[]} notes
 * @param {import('./lib/report').Table[]} tables
 */
function markdown(opts, host, load, notes, tables) {
  return [
    `# Benchmark: telemetry cost of the Koa + PM2 kit${opts.scenario === undefined ? '' : `, ${opts.scenario} scenario`}${opts.quick ? ' (quick smoke run, not for comparison)' : ''}`,
    '',
    `${host.date} · ${host.cpu}, ${host.cores} cores, ${host.ramGiB} GiB RAM · ${host.os} · Node ${host.node} · PM2 ${host.pm2} · load average at start ${host.loadAverageAtStart.join(' / ')}`,
    '',
    `${opts.rounds} round(s), configs interleaved in rotating order, off again after each (so every config runs between two off loads); per config per round: start, ${opts.warmupS} s warm-up, ${opts.durationS} s load of GET /items/123${opts.rate === undefined ? '' : ` at a steady ~${opts.rate} req/s`}; ${WORKERS} workers each. Run with \`${opts.scenario === undefined ? '' : `BENCH_SCENARIO=${opts.scenario} `}npm run bench\`.`,
    '',
    '![req/s, CPU per request, RSS and p99 relative to off](latest.svg)',
    '',
    ...tables.flatMap((t) => [report.markdownTable(t), '']),
    '### Notes',
    '',
    ...notes.map((n) => `- ${n}`),
    '',
    '### Configs',
    '',
    ...opts.configs.map((c) => `- **${c.id}**: ${c.title}`),
    '',
  ].join('\n');
}

/** Refuses a Node outside the kit's `engines` range: its figures would not be the kit's on its runtime. */
function checkNode() {
  const range = require(path.join(ROOT, 'package.json')).engines?.node ?? '';
  const wanted = /^>=\s*(\d+)(?:\.(\d+))?/.exec(range);
  if (wanted === null) return;
  const [major, minor] = process.versions.node.split('.').map(Number);
  const [needMajor, needMinor] = [Number(wanted[1]), Number(wanted[2] ?? 0)];
  if (major < needMajor || (major === needMajor && minor < needMinor)) throw new Error(`Node ${process.version} is outside the kit's engines range (${range}): run the bench with the Node the kit runs on (see .ci/run)`);
}

async function main() {
  const opts = options();
  checkNode();
  if (!fs.existsSync(path.join(ROOT, 'dist', 'otel', 'register.js'))) throw new Error('dist/ is missing: run `npm run build` (npm run bench does)');
  cleanupOnSignals();
  const host = machine();
  const load = chooseLoadGenerator(opts.loadgen, opts.rate);

  let configs = opts.configs;
  let python;
  let pythonNote = 'python: not run (BENCH_CONFIGS).';
  if (configs.some((c) => c.id === 'python')) {
    const found = findPython();
    if ('info' in found) {
      python = found.info;
      pythonNote = `python: ${found.info.versions}; uninstrumented: Debian packages no OpenTelemetry for Python and no other index is reachable here, so it is a floor for Python, not a traced peer.`;
    } else {
      configs = configs.filter((c) => c.id !== 'python');
      pythonNote = `python: skipped, ${found.skipped}.`;
      console.error(`bench: ${pythonNote}`);
    }
  }

  const peers = configs.flatMap((c) => (c.peer === undefined ? [] : [c.peer]));
  installPeers(peers, (message) => console.error(`bench: ${message}`));

  const sink = await startSink();
  onCleanup('sink', () => sink.stop());
  console.error(`bench: ${opts.rounds} round(s) × ${configs.map((c) => c.id).join(', ')}; ${opts.warmupS} s warm-up + ${opts.durationS} s load each; ${load.name}; sink on ${sink.url}`);

  /** @type {RunResult[]} */
  const runs = [];
  /** @type {Map<string, number>} spans per request, learnt in a config's first good round */
  const expected = new Map();
  for (const { config, round } of schedule(configs, opts.rounds)) {
    // After Ctrl-C, wait for the signal handler to finish cleaning up and exit.
    if (signalled()) await new Promise(() => undefined);
    const progress = (/** @type {string} */ step) => console.error(`  round ${round}/${opts.rounds} ${config.id.padEnd(8)} ${step}`);
    const settings = { warmupS: opts.warmupS, durationS: opts.durationS, quietWaitS: opts.quietWaitS, sink, load, python, progress };
    const result = await runOnce(config, round, settings, expected.get(config.id));
    if (result.spans.expected !== undefined && !expected.has(config.id)) expected.set(config.id, result.spans.expected);
    runs.push(result);
    console.error(`  round ${round}/${opts.rounds} ${config.id.padEnd(8)} ${oneLine(result)}`);
  }
  const totals = await sink.stats();
  await cleanupAll();

  const summaries = report.summarize(configs, runs);
  const against = report.againstTable(summaries, configs);
  const tables = [report.summaryTable(summaries, opts.rounds), report.ratioTable(summaries), ...(against === null ? [] : [against]), report.roundsTable(runs)];
  const notes = notesFor(summaries, { pythonNote, loadName: load.name, runs, envFile: kitEnvFile(), quietWaitS: opts.quietWaitS, rate: opts.rate });
  notes.push(
    `The sink answered ${totals.metricExports} metrics exports and ${totals.logExports} logs exports (${totals.logRecords} log records) over the whole run, and counted ${totals.ddTraces} Datadog traces and ${totals.apmTransactions} Elastic transactions; ${totals.malformed} payloads it could not parse; the flapping collector refused ${totals.refused} exports.`,
  );
  if (peers.length > 0) notes.push(`Peers, installed into bench/.peers/ (not dependencies of the kit): ${peers.map((p) => `${p.name} ${p.version}`).join(', ')}; preloaded with node -r in place of the kit's preload, every extra that needs the network off (see Configs).`);
  const header = `${host.cpu}, ${host.cores} cores, ${host.ramGiB} GiB · Node ${host.node} · ${host.date.slice(0, 16).replace('T', ' ')} UTC · ${opts.rounds} round(s) × ${opts.durationS} s`;

  console.log(`\n${header}\n`);
  console.log(tables.map(report.textTable).join('\n\n'));
  console.log(`\nNotes:\n${notes.map((n) => `- ${n}`).join('\n')}`);

  const dir = opts.quick ? path.join(__dirname, 'results', 'tmp') : path.join(__dirname, 'results');
  const base = opts.quick ? 'quick' : (opts.scenario ?? 'latest');
  fs.mkdirSync(dir, { recursive: true });
  const settings = { rounds: opts.rounds, durationS: opts.durationS, warmupS: opts.warmupS, quietWaitS: opts.quietWaitS, workers: WORKERS, loadGenerator: load.name, rate: opts.rate, python: pythonNote, peers };
  const json = { machine: host, settings, configs: configs.map(({ id, title }) => ({ id, title })), summaries, runs, notes };
  fs.writeFileSync(path.join(dir, `${base}.json`), `${JSON.stringify(json, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, `${base}.md`), markdown({ ...opts, configs }, host, load, notes, tables).replace('(latest.svg)', `(${base}.svg)`));
  fs.writeFileSync(path.join(dir, `${base}.svg`), report.svgChart(summaries, header));
  console.log(`\nWritten: ${['json', 'md', 'svg'].map((ext) => path.relative(ROOT, path.join(dir, `${base}.${ext}`))).join(', ')}`);
  if (runs.some((r) => r.error !== undefined)) process.exitCode = 1;
}

main()
  .catch(async (error) => {
    console.error(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exitCode = 1;
  })
  .finally(() => cleanupAll());
