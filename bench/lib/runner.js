// @ts-check
'use strict';

/**
 * One configuration, one round: start it, time the first 200, warm up,
 * load it while reading the workers' CPU time, count the spans that reached
 * the sink, stop it, and leave nothing running.
 */
const path = require('node:path');
const { createPm2, writeEcosystem } = require('./pm2');
const { startGunicorn } = require('./python');
const { onCleanup } = require('./cleanup');
const { preloadPath } = require('./peers');
const { waitFor200, sequentialItems, freePort, sleep } = require('./http');
const os = require('node:os');
const { cpuMicros, totalCpuMicros, sampleRss, alive, machineBusyMicros, selfAndChildrenMicros } = require('./proc');

/** @typedef {import('./sinkClient').Sink} Sink */
/** @typedef {import('./load').LoadGenerator} LoadGenerator */
/** @typedef {import('./python').PythonInfo} PythonInfo */

const WORKERS = 2;
const READY_PATH = '/items/1';
/** Requests sent one by one to learn how many spans one request makes. */
const CALIBRATION_REQUESTS = 50;
/** Requests sent one by one right before `pm2 stop`, to see whether their spans survive it. */
const STOP_PROBE_REQUESTS = 100;
/**
 * OTEL_BSP_SCHEDULE_DELAY, which every config leaves at the SDK default: a
 * span that ended at time t has left its worker by t + this (plus the time
 * to send it), unless the batch processor dropped it.
 */
const BSP_SCHEDULE_DELAY_MS = 5000;

/**
 * @typedef {object} Config
 * @property {string} id
 * @property {string} title          one line for the tables
 * @property {string} short          a few words for the chart
 * @property {'pm2' | 'python'} kind
 * @property {boolean} traced         whether spans are expected at the sink
 * @property {boolean} [records]      whether OTLP log records are expected: one a request (its
 *                                    access record, beside its span) and one a worker at start
 * @property {(sink: Sink) => Record<string, string>} [env]  what differs from the kit's defaults
 * @property {string} [preload]      replaces the kit's preload in node_args
 * @property {import('./peers').Peer} [peer]  installed into bench/.peers/ on demand; its preload replaces the kit's
 * @property {'outage'} [scenario]   run only when BENCH_SCENARIO names it (or BENCH_CONFIGS names the config)
 * @property {string} [against]      the config with the same app settings and telemetry off, to which its
 *                                    ratios are also given (the access log, which OTEL_SDK_DISABLED leaves on)
 */

/** The peers' agents, at the exact versions measured. */
const DD_TRACE = { name: 'dd-trace', version: '6.21.0', preload: 'init.js' };
const ELASTIC_APM = { name: 'elastic-apm-node', version: '4.18.0', preload: 'start.js' };

/** @type {(sink: Sink) => Record<string, string>} The kit, traces only, over OTLP/gRPC. */
const tracesOnly = (sink) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', ACCESS_LOG: 'false' });
/** @type {(sink: Sink) => Record<string, string>} The kit, all three signals (metrics every 10 s, the access log as OTLP records too), over OTLP/gRPC. */
const allSignals = (sink) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_METRIC_EXPORT_INTERVAL: '10000', OTEL_LOGS_EXPORTER: 'otlp', ACCESS_LOG: 'true' });

/**
 * The same env over OTLP/HTTP protobuf, to the sink's HTTP port: a config and
 * its HTTP twin differ in the transport alone.
 * @param {(sink: Sink) => Record<string, string>} env
 * @returns {(sink: Sink) => Record<string, string>}
 */
const overHttp = (env) => (sink) => ({ ...env(sink), OTEL_EXPORTER_OTLP_ENDPOINT: sink.httpUrl, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' });

/** @type {Config[]} */
const CONFIGS = [
  // The access log is off unless a config says otherwise, so that the
  // figures of the other configs stay comparable with earlier runs.
  { id: 'off', title: 'kit, OTEL_SDK_DISABLED=true, ACCESS_LOG=false', short: 'no tracing', kind: 'pm2', traced: false, env: () => ({ OTEL_SDK_DISABLED: 'true', ACCESS_LOG: 'false' }) },
  // The kit's defaults with telemetry off: OTEL_SDK_DISABLED=true leaves the
  // access log on (an app feature, Gunicorn's `accesslog`), so the configs
  // that write it are also given against this one, the same kit but for the SDK.
  {
    id: 'off-access',
    title: 'kit, OTEL_SDK_DISABLED=true, the access log on stdout (the kit\'s defaults with telemetry off)',
    short: 'no tracing, access log',
    kind: 'pm2',
    traced: false,
    env: () => ({ OTEL_SDK_DISABLED: 'true', ACCESS_LOG: 'true' }),
  },
  {
    id: 'kit',
    title: 'kit, traces only: 100% sampled, OTLP/gRPC (OTEL_METRICS_EXPORTER=none, OTEL_LOGS_EXPORTER=none, ACCESS_LOG=false)',
    short: 'kit, traces',
    kind: 'pm2',
    traced: true,
    env: tracesOnly,
  },
  // The same traces over the other standard transport, for a collector that
  // takes OTLP/HTTP (port 4318): what the choice of protocol costs.
  {
    id: 'kit-http',
    title: 'kit, traces only: 100% sampled, OTLP/HTTP protobuf (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf), otherwise as kit',
    short: 'kit, traces over HTTP',
    kind: 'pm2',
    traced: true,
    env: overHttp(tracesOnly),
  },
  {
    id: 'access',
    against: 'off-access',
    title: 'kit, traces + the access log on stdout (PM2 log files), no OTLP logs',
    short: 'kit, traces + access log',
    kind: 'pm2',
    traced: true,
    env: (sink) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none' }),
  },
  {
    id: 'access-otlp',
    against: 'off-access',
    title: 'kit, traces + the access log on stdout and as OTLP log records over gRPC',
    short: 'kit, traces + access log + OTLP logs',
    kind: 'pm2',
    traced: true,
    records: true,
    env: (sink) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_METRICS_EXPORTER: 'none' }),
  },
  {
    id: 'metrics',
    title: 'kit defaults with an endpoint: traces and metrics over OTLP/gRPC (export every 5 s), PM2 monitor probes',
    short: 'kit, traces + metrics',
    kind: 'pm2',
    traced: true,
    // 5 s rather than the default 60 s, so that exports fall within each load.
    env: (sink) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_METRIC_EXPORT_INTERVAL: '5000', OTEL_LOGS_EXPORTER: 'none', ACCESS_LOG: 'false' }),
  },
  {
    id: 'textbook',
    title: 'NodeSDK + all auto-instrumentations',
    short: 'guide: NodeSDK + auto',
    kind: 'pm2',
    traced: true,
    preload: path.join(__dirname, '..', 'textbook-preload.js'),
    env: tracesOnly,
  },
  {
    id: 'all',
    against: 'off-access',
    title: 'kit, all three signals: traces 100%, metrics (OTLP every 10 s), logs (the access log on stdout and as OTLP log records), all over gRPC',
    short: 'kit, traces + metrics + logs',
    kind: 'pm2',
    traced: true,
    records: true,
    env: allSignals,
  },
  // The same three signals over the other standard transport (the
  // specification's default), as kit-http is to kit.
  {
    id: 'all-http',
    against: 'off-access',
    title: 'kit, all three signals as all, over OTLP/HTTP protobuf (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)',
    short: 'kit, all three over HTTP',
    kind: 'pm2',
    traced: true,
    records: true,
    env: overHttp(allSignals),
  },
  // The peers: another vendor's agent preloaded into the same app, in place
  // of the kit's preload, sending to the sink's stand-in for its agent, with
  // every extra that would need the network off.
  {
    id: 'dd-trace',
    title: `Datadog dd-trace ${DD_TRACE.version} (-r dd-trace/init), v0.4 msgpack to a local fake agent; "spans" are its traces`,
    short: `dd-trace ${DD_TRACE.version}`,
    kind: 'pm2',
    traced: true,
    peer: DD_TRACE,
    preload: preloadPath(DD_TRACE),
    env: (sink) => ({
      DD_TRACE_AGENT_URL: sink.httpUrl,
      DD_SERVICE: 'bench',
      DD_TRACE_STARTUP_LOGS: 'false',
      DD_REMOTE_CONFIGURATION_ENABLED: 'false',
      DD_INSTRUMENTATION_TELEMETRY_ENABLED: 'false',
      DD_RUNTIME_METRICS_ENABLED: 'false',
      DD_CRASHTRACKING_ENABLED: 'false',
    }),
  },
  {
    id: 'elastic',
    title: `Elastic elastic-apm-node ${ELASTIC_APM.version} (-r elastic-apm-node/start) to a local fake APM server; "spans" are its transactions`,
    short: `elastic-apm-node ${ELASTIC_APM.version}`,
    kind: 'pm2',
    traced: true,
    peer: ELASTIC_APM,
    preload: preloadPath(ELASTIC_APM),
    env: (sink) => ({
      ELASTIC_APM_SERVER_URL: sink.httpUrl,
      ELASTIC_APM_SERVICE_NAME: 'bench',
      ELASTIC_APM_CENTRAL_CONFIG: 'false',
      ELASTIC_APM_CLOUD_PROVIDER: 'none',
      ELASTIC_APM_METRICS_INTERVAL: '0s',
      ELASTIC_APM_LOG_LEVEL: 'off',
      // Events reach the server when the agent ends its streaming request
      // (10 s by default): 5 s, like the kit's batch delay, so that the
      // bench's span accounting waits long enough for both.
      ELASTIC_APM_API_REQUEST_TIME: '5s',
    }),
  },
  { id: 'python', title: 'FastAPI, gunicorn + 2 uvicorn workers (uninstrumented)', short: 'FastAPI, untraced', kind: 'python', traced: false },
  // The outage scenario (BENCH_SCENARIO=outage): the kit's traces config
  // with its collector gone or flapping, against kit and the off loads around each.
  {
    id: 'unreachable',
    title: 'kit, traces only, collector unreachable (nothing listens on its port)',
    short: 'kit, collector down',
    kind: 'pm2',
    traced: false,
    scenario: 'outage',
    // Port 1 (tcpmux) is not served on loopback: every connection is refused.
    env: () => ({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1', OTEL_METRICS_EXPORTER: 'none' }),
  },
  {
    id: 'flapping',
    title: 'kit, traces only, collector answering UNAVAILABLE every other second',
    short: 'kit, collector flapping',
    kind: 'pm2',
    traced: false,
    scenario: 'outage',
    env: (sink) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.flappingUrl, OTEL_METRICS_EXPORTER: 'none' }),
  },
];

/**
 * @typedef {object} Settings
 * @property {number} warmupS
 * @property {number} durationS
 * @property {number} quietWaitS     how long to wait, at most, for other tenants to leave the CPU before a load
 * @property {Sink} sink
 * @property {LoadGenerator} load
 * @property {PythonInfo | undefined} python
 * @property {(message: string) => void} progress
 */

/**
 * @typedef {object} SpanFigures
 * @property {number} requests        every request answered during this run (start-up poll, calibration, warm-up, load)
 * @property {number} received        spans that reached the sink during this run
 * @property {number} perRequest      received / requests
 * @property {number | undefined} expected  spans one request makes (calibrated), if known
 * @property {number | undefined} missing   requests * expected - received (negative: a few requests
 *                                          still in flight when the load generator stopped counting)
 * @property {number | undefined} recordsMissing  log records expected by then (one a span received,
 *                                          one a worker's 'listening' line) - received; configs with records
 * @property {number | undefined} countsMissing  spans received - requests counted by the workers'
 *                                          `http.server.request.duration` histograms by then; configs with metrics
 * @property {StopProbe | undefined} stopProbe  what became of the last requests' spans at `pm2 stop`
 * @property {number} logLines        worker log lines that mention "dropped"
 * @property {number} loggedDropped   sum of N in "Dropped N spans" log lines
 */

/**
 * @typedef {object} StopProbe
 * @property {number} requests   answered one by one right before `pm2 stop`
 * @property {number} received   their spans that reached the sink, during or after the stop
 * @property {number} delivered  received / (requests * expected): 1 when the stop flushes
 * @property {number} counted    of them, those the `http.server.request.duration` histograms counted in
 *                               what reached the sink (0 for a config without metrics)
 */

/**
 * @typedef {object} RunResult
 * @property {string} config
 * @property {number} round
 * @property {string | undefined} error
 * @property {number} startupMs      from `pm2 start` (or gunicorn's spawn) to the first 200
 * @property {number} rps
 * @property {number} p50Ms
 * @property {number} p99Ms
 * @property {number} p999Ms
 * @property {number} cpuUsPerRequest   worker CPU time (user + system) over the load, per request
 * @property {number} rssMb          VmRSS of the workers, their mean every 0.5 s, averaged over the load
 * @property {number} rssPeakMb      the largest VmRSS of any worker read during the load
 * @property {number} requests       answered during the measured load
 * @property {number} errors         socket errors and non-2xx during the measured load
 * @property {number} seconds
 * @property {number} sinkCpuUsPerRequest  the sink's own CPU over the load, per request
 * @property {number} managerCpuUsPerRequest  the workers' manager's (PM2's daemon, gunicorn's arbiter) over the load, per request
 * @property {number} loadgenCpuPct  the load generator's CPU time over the load / (wall time × cores), in %
 * @property {number} otherCpuPct    CPU used by processes outside the bench during the load, % of all cores
 * @property {number} quietWaitS     seconds spent waiting for a quiet machine before the load
 * @property {number} loads          loads run to get one that others disturbed little (the least disturbed counts)
 * @property {number} restarts       worker restarts (CPU figures are void if > 0)
 * @property {number} logRecords     OTLP log records that reached the sink during this run
 * @property {number} metricExports  metrics exports that reached the sink during this run
 * @property {SpanFigures} spans
 */

/**
 * Learns how many spans one request makes: requests one at a time, then
 * waits for their spans to leave the workers' batch processors.
 * @param {Sink} sink
 * @param {number} port
 * @param {number} spansBefore  the sink's count before the app started
 * @param {number} requestsSoFar
 */
async function calibrate(sink, port, spansBefore, requestsSoFar) {
  const requests = requestsSoFar + (await sequentialItems(port, CALIBRATION_REQUESTS));
  // Every worker's batch timer was armed by now: all these spans arrive within the delay.
  const notBefore = Date.now() + BSP_SCHEDULE_DELAY_MS + 500;
  const stats = await sink.waitQuiet({ atLeast: spansBefore + 1, notBefore, quietMs: 500, maxMs: 20_000 });
  // A traced config that sends nothing is not measured: its figures would be an untraced app's.
  if (stats.spans === spansBefore) throw new Error(`no span reached the sink after ${requests} requests one by one: this config does not trace here (Node ${process.version}; for a peer, check the Node versions it supports), so it is not measured`);
  return { requests, expected: (stats.spans - spansBefore) / requests };
}

/** Machine CPU use (% of all cores) under which the machine counts as quiet. */
const QUIET_BELOW_PCT = 15;

/**
 * Waits (at most `maxS`) for a second in which the whole machine is nearly
 * idle: on a shared machine, other tenants' test runs come in bursts, and a
 * load that starts in a lull is measured against less of them. The app under
 * test is idle meanwhile, so its own CPU hardly counts.
 * @param {number} maxS
 * @returns {Promise<number>} seconds waited
 */
async function waitForQuietMachine(maxS) {
  const started = Date.now();
  while (Date.now() - started < maxS * 1000) {
    const before = machineBusyMicros();
    await sleep(1000);
    const busyPct = (100 * (machineBusyMicros() - before)) / (1e6 * os.availableParallelism());
    if (busyPct < QUIET_BELOW_PCT) break;
  }
  return (Date.now() - started) / 1000;
}

/**
 * The part every kind of server shares, once it answers: warm-up, measured
 * load with CPU and memory read from /proc, then span accounting.
 * @param {Settings} settings
 * @param {{ port: number, pids: number[], managerPid: number, traced: boolean, spansBefore: number, expected: number | undefined }} app
 *   `managerPid`: the PM2 daemon or gunicorn master, whose CPU is the bench's, not another tenant's
 */
async function measure(settings, app) {
  const { sink, load } = settings;
  let requests = 1; // the start-up poll's 200
  let expected = app.expected;
  if (app.traced && expected === undefined) {
    settings.progress('calibrating spans per request');
    ({ requests, expected } = await calibrate(sink, app.port, app.spansBefore, requests));
  }
  settings.progress(`warm-up ${settings.warmupS} s`);
  requests += (await load.run(app.port, settings.warmupS)).requests;

  // A load during which other tenants took much of the CPU is measured
  // again (at most MAX_LOADS times in all); the least disturbed one counts.
  /** @type {Awaited<ReturnType<typeof loadOnce>> | undefined} */
  let best;
  let loads = 0;
  let loadEndedAt = 0;
  for (;;) {
    loads += 1;
    const attempt = await loadOnce(settings, app, loads);
    requests += attempt.requests;
    loadEndedAt = Date.now();
    if (best === undefined || attempt.otherCpuPct < best.otherCpuPct) best = attempt;
    if (attempt.otherCpuPct <= RETRY_ABOVE_PCT || loads >= MAX_LOADS) break;
    settings.progress(`others took ${attempt.otherCpuPct.toFixed(0)}% of the CPU during the load: measuring again`);
  }
  return { expected, totalRequests: requests, loadEndedAt, figures: { ...best, loads } };
}

/** Others' CPU (% of the machine) above which a load is measured again, up to MAX_LOADS loads. */
const RETRY_ABOVE_PCT = 20;
const MAX_LOADS = 3;

/**
 * One measured load, after waiting for a quiet machine.
 * @param {Settings} settings
 * @param {{ port: number, pids: number[], managerPid: number }} app
 * @param {number} attempt
 */
async function loadOnce(settings, app, attempt) {
  const { sink, load } = settings;
  const quietWaitS = settings.quietWaitS > 0 ? await waitForQuietMachine(settings.quietWaitS) : 0;
  settings.progress(`load ${settings.durationS} s${attempt > 1 ? ` (attempt ${attempt})` : ''}${quietWaitS > 1.5 ? ` (after waiting ${quietWaitS.toFixed(0)} s for a quiet machine)` : ''}`);
  const sinkCpu0 = (await sink.stats()).cpuMicros;
  const [machine0, driver0, cpu0, manager0] = [machineBusyMicros(), selfAndChildrenMicros(), totalCpuMicros(app.pids), cpuMicros(app.managerPid)];
  const stopRss = sampleRss(app.pids);
  const result = await load.run(app.port, settings.durationS);
  const rss = stopRss();
  const [machine1, driver1, cpu1, manager1] = [machineBusyMicros(), selfAndChildrenMicros(), totalCpuMicros(app.pids), cpuMicros(app.managerPid)];
  const sinkCpu1 = (await sink.stats()).cpuMicros;

  // Where the machine's CPU went during the load, as % of all cores: the
  // load generator (a child that has exited, so in our cutime), and what
  // neither it, the workers, their manager, the sink nor the driver used:
  // other tenants of the machine.
  const capacity = result.seconds * 1e6 * os.availableParallelism();
  const loadgenMicros = driver1.children - driver0.children;
  const benchMicros = cpu1 - cpu0 + (manager1 - manager0) + (sinkCpu1 - sinkCpu0) + (driver1.self - driver0.self) + loadgenMicros;
  const otherMicros = machine1 - machine0 - benchMicros;

  return {
    rps: result.rps,
    p50Ms: result.p50Ms,
    p99Ms: result.p99Ms,
    p999Ms: result.p999Ms,
    cpuUsPerRequest: (cpu1 - cpu0) / result.requests,
    rssMb: rss.meanMb,
    rssPeakMb: rss.peakMb,
    requests: result.requests,
    errors: result.errors,
    seconds: result.seconds,
    sinkCpuUsPerRequest: (sinkCpu1 - sinkCpu0) / result.requests,
    managerCpuUsPerRequest: (manager1 - manager0) / result.requests,
    loadgenCpuPct: (100 * loadgenMicros) / capacity,
    otherCpuPct: Math.max(0, (100 * otherMicros) / capacity),
    quietWaitS,
  };
}

/**
 * The sink's counts once the workers' batch processors have sent what they
 * held at the end of the load (their timers were armed by then; the log
 * record processor's delay is shorter than the span processor's), and each
 * worker's metric reader has exported once since.
 * @param {Sink} sink
 * @param {number} loadEndedAt
 * @param {number} [metricsEveryMs]
 */
async function awaitExports(sink, loadEndedAt, metricsEveryMs = 0) {
  return sink.waitQuiet({ notBefore: loadEndedAt + Math.max(BSP_SCHEDULE_DELAY_MS, metricsEveryMs) + 1000, quietMs: 1000, maxMs: 30_000 });
}

/**
 * Reads the worker logs for the batch processor's "Dropped N spans" warnings.
 * @param {string} logs
 */
function droppedInLogs(logs) {
  const lines = logs.split('\n').filter((line) => /dropp/i.test(line));
  const loggedDropped = lines.reduce((sum, line) => sum + [...line.matchAll(/Dropped (\d+) spans/gi)].reduce((s, m) => s + Number(m[1]), 0), 0);
  return { logLines: lines.length, loggedDropped };
}

/**
 * @param {number} received
 * @param {number} requests
 * @param {number | undefined} expected
 * @param {StopProbe | undefined} stopProbe
 * @param {string} logs
 * @param {number} [recordsMissing]
 * @param {number} [countsMissing]
 * @returns {SpanFigures}
 */
function spanFigures(received, requests, expected, stopProbe, logs, recordsMissing, countsMissing) {
  return {
    requests,
    received,
    perRequest: received / requests,
    expected,
    missing: expected === undefined ? undefined : Math.round(requests * expected - received),
    recordsMissing,
    countsMissing,
    stopProbe,
    ...droppedInLogs(logs),
  };
}

/**
 * Stops the app right after a few requests, before any batch timer fires:
 * their spans reach the sink only if stopping flushes them.
 * @param {Sink} sink
 * @param {number} port
 * @param {number} expected
 * @param {() => Promise<unknown>} stopApp
 * @returns {Promise<StopProbe>}
 */
async function stopProbe(sink, port, expected, stopApp) {
  const before = await sink.stats();
  const requests = await sequentialItems(port, STOP_PROBE_REQUESTS);
  await stopApp();
  const after = await sink.waitQuiet({ quietMs: 1000, maxMs: 5000 });
  const received = after.spans - before.spans;
  return { requests, received, delivered: received / (requests * expected), counted: after.requestsCounted - before.requestsCounted };
}

/**
 * Runs a PM2 config: its own daemon (temp PM2_HOME), the kit's ecosystem
 * file with this config's changes, 2 cluster workers.
 * @param {Config} config
 * @param {Settings} settings
 * @param {number | undefined} expected  spans per request, if calibrated in an earlier round
 */
async function runPm2(config, settings, expected) {
  const { sink } = settings;
  const port = await freePort();
  const name = `bench-${config.id}`;
  const env = { HOST: '127.0.0.1', PORT: String(port), APP_NAME: name, WEB_CONCURRENCY: String(WORKERS), ...config.env?.(sink) };
  // The same values in the daemon's environment and the app's env block: a
  // preload sees only the former (see textbook-preload.js), the app the latter.
  const pm2 = createPm2(env);
  const stopDaemon = onCleanup(`PM2 daemon (PM2_HOME=${pm2.home})`, () => pm2.kill());
  try {
    await pm2.start();
    const ecosystem = writeEcosystem(pm2.home, { name, env, preload: config.preload });
    const sinkBefore = await sink.stats();
    const spansBefore = sinkBefore.spans;

    settings.progress('pm2 start');
    const startedAt = performance.now();
    const start = pm2.spawnRun(['start', ecosystem]);
    /** @type {string | undefined} */
    let startFailed;
    start.done.catch((/** @type {Error} */ error) => (startFailed = error.message));
    const firstOk = await waitFor200(port, READY_PATH, { gaveUp: () => startFailed });
    await start.done;
    const workers = await pm2.waitOnline(name, WORKERS);
    const pids = workers.map((w) => w.pid);

    const measured = await measure(settings, { port, pids, managerPid: pm2.pid, traced: config.traced, spansBefore, expected });
    const restarts = (await pm2.list(name)).reduce((sum, w) => sum + w.restarts, 0);

    const stopApp = () => pm2.run(['stop', name]);
    let received = 0;
    /** @type {number | undefined} */
    let recordsMissing;
    /** @type {number | undefined} */
    let countsMissing;
    /** @type {StopProbe | undefined} */
    let probe;
    if (config.traced && measured.expected !== undefined) {
      settings.progress('waiting for spans');
      // A config that sets the metrics export interval exports metrics: its
      // `http.server.request.duration` histograms must count one request a span.
      const metricsEveryMs = env.OTEL_METRIC_EXPORT_INTERVAL === undefined ? undefined : Number(env.OTEL_METRIC_EXPORT_INTERVAL);
      const exported = await awaitExports(sink, measured.loadEndedAt, metricsEveryMs);
      received = exported.spans - spansBefore;
      // Each traced request logs one access record beside its span; each worker one line at start.
      if (config.records) recordsMissing = received + WORKERS - (exported.logRecords - sinkBefore.logRecords);
      // The bench requests no excluded path (/healthz, /readyz): each request counted once, as it has one span.
      if (metricsEveryMs !== undefined) countsMissing = received - (exported.requestsCounted - sinkBefore.requestsCounted);
      settings.progress(`${STOP_PROBE_REQUESTS} requests, then pm2 stop`);
      probe = await stopProbe(sink, port, measured.expected, stopApp);
    } else {
      await stopApp();
      // An untraced config must send nothing at all; whatever it sent is counted.
      received = (await sink.waitQuiet({ quietMs: 500, maxMs: 2000 })).spans - spansBefore;
    }
    await pm2.run(['delete', name]);
    const spans = spanFigures(received, measured.totalRequests, measured.expected, probe, pm2.logs(), recordsMissing, countsMissing);
    const sinkAfter = await sink.stats();
    const signals = { logRecords: sinkAfter.logRecords - sinkBefore.logRecords, metricExports: sinkAfter.metricExports - sinkBefore.metricExports };
    return { startupMs: firstOk - startedAt, restarts, ...measured.figures, ...signals, spans };
  } finally {
    await stopDaemon();
  }
}

/**
 * Runs the Python peer under gunicorn.
 * @param {Settings} settings
 */
async function runPython(settings) {
  const python = settings.python;
  if (python === undefined) throw new Error('no Python');
  const port = await freePort();
  const spansBefore = (await settings.sink.stats()).spans;
  settings.progress('gunicorn start');
  const gunicorn = startGunicorn(python, port);
  const stop = onCleanup(`gunicorn (pid ${gunicorn.pid})`, () => gunicorn.stop());
  try {
    const firstOk = await waitFor200(port, READY_PATH, { gaveUp: gunicorn.died });
    const pids = await gunicorn.workers(WORKERS);
    const measured = await measure(settings, { port, pids, managerPid: gunicorn.pid, traced: false, spansBefore, expected: undefined });
    // gunicorn replaces a worker that dies: a pid that changed means a restart.
    const restarts = pids.filter((pid) => !alive(pid)).length;
    const logs = gunicorn.logs();
    await stop();
    const received = (await settings.sink.stats()).spans - spansBefore;
    const spans = spanFigures(received, measured.totalRequests, undefined, undefined, logs);
    return { startupMs: firstOk - gunicorn.startedAt, restarts, ...measured.figures, logRecords: 0, metricExports: 0, spans };
  } finally {
    await stop();
  }
}

/**
 * Runs one config once; failures are returned, not thrown, so that one
 * broken config does not cost the others their rounds.
 * @param {Config} config
 * @param {number} round
 * @param {Settings} settings
 * @param {number | undefined} expected
 * @returns {Promise<RunResult>}
 */
async function runOnce(config, round, settings, expected) {
  try {
    const figures = config.kind === 'pm2' ? await runPm2(config, settings, expected) : await runPython(settings);
    return { config: config.id, round, error: undefined, ...figures };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    return { ...failed(config.id, round), error: message };
  }
}

/**
 * @param {string} config
 * @param {number} round
 * @returns {RunResult}
 */
function failed(config, round) {
  const spans = { requests: 0, received: 0, perRequest: NaN, expected: undefined, missing: undefined, recordsMissing: undefined, countsMissing: undefined, stopProbe: undefined, logLines: 0, loggedDropped: 0 };
  return { config, round, error: 'failed', startupMs: NaN, rps: NaN, p50Ms: NaN, p99Ms: NaN, p999Ms: NaN, cpuUsPerRequest: NaN, rssMb: NaN, rssPeakMb: NaN, requests: 0, errors: 0, seconds: 0, sinkCpuUsPerRequest: NaN, managerCpuUsPerRequest: NaN, loadgenCpuPct: NaN, otherCpuPct: NaN, quietWaitS: 0, loads: 0, restarts: 0, logRecords: 0, metricExports: 0, spans };
}

module.exports = { CONFIGS, DD_TRACE, ELASTIC_APM, runOnce, WORKERS, CALIBRATION_REQUESTS, STOP_PROBE_REQUESTS, BSP_SCHEDULE_DELAY_MS, QUIET_BELOW_PCT, RETRY_ABOVE_PCT, MAX_LOADS };
