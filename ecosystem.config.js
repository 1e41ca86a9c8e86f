'use strict';

/**
 * The PM2 declaration: one app in cluster mode, every worker started with the
 * OpenTelemetry preload (`-r`), its settings in the `env` block.
 *
 * Values come from the shell that runs `pm2 start` when set there, and from
 * the defaults below otherwise (the seed's `start.sh` pattern):
 *
 *   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 npm start
 *
 * PM2 keeps the env an app was started with: after changing a value, use
 * `pm2 reload ecosystem.config.js --update-env` (or delete and start again).
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { version } = require('./package.json');

const env = process.env;
const APP_NAME = env.APP_NAME || 'koa-otel-app';

/** Milliseconds from the environment, or the default (PM2 wants numbers here). */
function ms(name, fallback) {
  const value = env[name];
  if (value === undefined || value === '') return fallback;
  if (!/^\d+$/.test(value)) throw new Error(`${name} must be a whole number of milliseconds, got ${JSON.stringify(value)}`);
  return Number(value);
}

/** Workers: a whole number, or `max` (PM2's one per CPU). */
function workers() {
  const value = env.WEB_CONCURRENCY;
  if (value === undefined || value === '') return 2;
  if (value === 'max') return 'max';
  if (!/^[1-9]\d*$/.test(value)) throw new Error(`WEB_CONCURRENCY must be a whole number of workers (1 or more) or "max", got ${JSON.stringify(value)}`);
  return Number(value);
}

/**
 * V8's background threads per worker (GC and compilation; Node's default is
 * 4): the cores left per worker, 1 to 4. With one worker per core (2 workers
 * on 2 cores, or `max`) more threads only preempt the other workers' main
 * threads: measured, 1 instead of 4 lowered p99 by a fifth to a third with
 * traces on, and changed nothing with telemetry off (README, Performance).
 */
function v8PoolSize(instances) {
  const cores = os.availableParallelism();
  const perWorker = Math.floor(cores / (instances === 'max' ? cores : instances));
  return Math.min(4, Math.max(1, perWorker));
}

const instances = workers();
const drainTimeoutMs = ms('DRAIN_TIMEOUT_MS', 3000);
// Secrets (an OTLP auth header) can live in this file instead of the shell:
// Node loads it in each worker, so PM2 never stores them (`pm2 ls`, `pm2 save`).
// `.env` is optional; a file named by ENV_FILE must exist.
const envFile = path.resolve(__dirname, env.ENV_FILE || '.env');
if (env.ENV_FILE && !fs.existsSync(envFile)) throw new Error(`ENV_FILE: no such file ${envFile}`);
const flushTimeoutMs = ms('FLUSH_TIMEOUT_MS', 2000);

/** Only the variables that are set: an unset OTEL_* variable keeps its standard default. */
function pick(names) {
  const picked = {};
  for (const name of names) if (env[name] !== undefined && env[name] !== '') picked[name] = env[name];
  return picked;
}

module.exports = {
  apps: [
    {
      name: APP_NAME,
      // An absolute path: PM2 resolves `-r` against the daemon's working
      // directory, which need not be this one (a boot-time `pm2 resurrect`).
      script: path.join(__dirname, 'dist/src/server.js'),
      cwd: __dirname,
      exec_mode: 'cluster',
      instances,
      node_args: [
        `--env-file-if-exists=${envFile}`,
        // V8 grows the young generation to 3 x 32 MB under a steady request
        // rate; 16 MB semi-spaces keep RSS a third lower at the same CPU
        // (measured: see README, Performance).
        '--max-semi-space-size=16',
        `--v8-pool-size=${v8PoolSize(instances)}`,
        '-r',
        path.join(__dirname, 'dist/otel/register.js'),
      ],

      // Readiness: a worker is online (and a reload moves on) once it has
      // listened and sent 'ready'. Shutdown: drain, then flush, within kill_timeout.
      wait_ready: true,
      listen_timeout: ms('LISTEN_TIMEOUT_MS', 10000),
      kill_timeout: ms('KILL_TIMEOUT_MS', drainTimeoutMs + flushTimeoutMs + 1000),
      shutdown_with_message: false,

      // Restart-on-leak (Gunicorn `max_requests` has no PM2 equivalent; see README).
      max_memory_restart: env.MAX_MEMORY_RESTART || '512M',
      exp_backoff_restart_delay: 100,
      min_uptime: 5000,
      max_restarts: 16,

      // PM2's own APM agent (@pm2/io) wraps http.Server like OpenTelemetry
      // does, and `trace: true` would start a second SDK in each worker.
      pmx: false,
      automation: false,
      trace: false,
      vizion: false,

      merge_logs: true,
      time: false,

      env: {
        NODE_ENV: env.NODE_ENV || 'production',
        HOST: env.HOST || '0.0.0.0',
        PORT: env.PORT || '8000',
        DRAIN_TIMEOUT_MS: String(drainTimeoutMs),
        FLUSH_TIMEOUT_MS: String(flushTimeoutMs),
        ...pick(['BACKLOG', 'KEEP_ALIVE_TIMEOUT_MS', 'REQUEST_TIMEOUT_MS', 'MAX_CONNECTIONS', 'LOG_LEVEL', 'ACCESS_LOG']),

        OTEL_SERVICE_NAME: env.OTEL_SERVICE_NAME || APP_NAME,
        OTEL_RESOURCE_ATTRIBUTES: env.OTEL_RESOURCE_ATTRIBUTES || `service.version=${version}`,
        // Spans a worker holds through a collector outage (and its batch queue):
        // ~30 s at 270 req/s a worker, a few MB at most; beyond, the oldest are
        // dropped, counted and reported.
        OTEL_BSP_MAX_QUEUE_SIZE: env.OTEL_BSP_MAX_QUEUE_SIZE || '8192',
        // The same for log records: the access log emits one a request, as many
        // as spans. At the SDK's 2048 (~0.2 s at 10k req/s a worker) a stall of
        // the host or the collector under full load dropped 1.5 % of a bench
        // run's records (README, Performance).
        OTEL_BLRP_MAX_QUEUE_SIZE: env.OTEL_BLRP_MAX_QUEUE_SIZE || '8192',
        ...pick([
          'OTEL_SDK_DISABLED',
          'OTEL_TRACES_EXPORTER',
          'OTEL_EXPORTER_OTLP_ENDPOINT',
          'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
          'OTEL_EXPORTER_OTLP_PROTOCOL',
          'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL',
          'OTEL_EXPORTER_OTLP_HEADERS',
          'OTEL_EXPORTER_OTLP_TRACES_HEADERS',
          'OTEL_EXPORTER_OTLP_COMPRESSION',
          'OTEL_EXPORTER_OTLP_TIMEOUT',
          'OTEL_TRACES_SAMPLER',
          'OTEL_TRACES_SAMPLER_ARG',
          'OTEL_PROPAGATORS',
          'OTEL_NODE_RESOURCE_DETECTORS',
          'OTEL_NODE_ENABLED_INSTRUMENTATIONS',
          'OTEL_NODE_DISABLED_INSTRUMENTATIONS',
          'OTEL_NODE_EXCLUDED_URLS',
          'OTEL_BSP_SCHEDULE_DELAY',
          'OTEL_BSP_MAX_EXPORT_BATCH_SIZE',
          'OTEL_BSP_EXPORT_TIMEOUT',
          'OTEL_LOG_LEVEL',
          'OTEL_METRICS_EXPORTER',
          'OTEL_LOGS_EXPORTER',
          'OTEL_EXPORTER_OTLP_LOGS_ENDPOINT',
          'OTEL_EXPORTER_OTLP_LOGS_PROTOCOL',
          'OTEL_EXPORTER_OTLP_LOGS_HEADERS',
          'OTEL_EXPORTER_OTLP_LOGS_TIMEOUT',
          'OTEL_EXPORTER_OTLP_LOGS_COMPRESSION',
          'OTEL_BLRP_SCHEDULE_DELAY',
          'OTEL_BLRP_MAX_EXPORT_BATCH_SIZE',
          'OTEL_BLRP_EXPORT_TIMEOUT',
          'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT',
          'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL',
          'OTEL_EXPORTER_OTLP_METRICS_HEADERS',
          'OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE',
          'OTEL_METRIC_EXPORT_INTERVAL',
          'OTEL_METRIC_EXPORT_TIMEOUT',
          'OTEL_EXPORTER_PROMETHEUS_HOST',
          'OTEL_EXPORTER_PROMETHEUS_PORT',
        ]),
      },
    },
  ],
};
