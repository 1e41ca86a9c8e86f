/**
 * The telemetry preload, loaded into every worker by `node -r` (see
 * `ecosystem.config.js`) before any of the app's modules, so that the
 * instrumentations can patch `http` and `koa` as they are first required.
 *
 * It reads only `OTEL_*` variables (the app's config module reads the rest):
 * the standard ones the SDK defines, plus the few of ours listed in the
 * README. Under PM2 it first applies the app's own `OTEL_*` values (see
 * `pm2Env.ts`).
 *
 * Telemetry never takes the app down: a bad setting or an SDK that fails to
 * start costs one clear line on stderr, and the app serves uninstrumented.
 *
 * Metrics are exported when `OTEL_METRICS_EXPORTER` (or an OTLP endpoint)
 * asks for them; without, no MeterProvider exists (see `metrics.ts`). Under
 * PM2 a worker's key figures then also show in `pm2 monit` (see `pm2Monitor.ts`).
 *
 * Log records are exported when `OTEL_LOGS_EXPORTER` (or an OTLP endpoint)
 * asks for them; the app's logger (`src/log.ts`) emits each line it writes to
 * the Logs SDK when the hook says they are exported, and never otherwise.
 *
 * The app flushes telemetry at the right moment of its own shutdown through
 * the hook published on `globalThis` (see `src/telemetry.ts`). For a script
 * without signal handlers of its own, the preload flushes on SIGINT/SIGTERM
 * and at `beforeExit` itself: PM2 stops workers with SIGINT, and NodeSDK
 * registers no handler, so unflushed spans would die with the worker.
 */
import module from 'node:module';
import { randomUUID } from 'node:crypto';
import type { LogRecordProcessor, ReadableLogRecord } from '@opentelemetry/sdk-logs';
import type { MetricProducer, MetricReader } from '@opentelemetry/sdk-metrics';
import type { DurationHistogram } from './durationHistogram';
import type { SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace';
import { maskSecrets, RateLimitedDiagLogger, writeLine } from './diagLogger';
import { PooledRandomIdGenerator } from './idGenerator';
import { loadInstrumentations, loadResourceDetectors } from './instrumentations';
import { adoptPm2Env, type Pm2Process } from './pm2Env';
import type { RetryingExporter } from './retryingExporter';
import { readSettings, secretsIn, TelemetryConfigError, type TelemetrySettings } from './settings';

/** Shared with `src/telemetry.ts`, which describes the contract. */
const TELEMETRY_HOOK = Symbol.for('koa-pm2-otel.telemetry');

/**
 * Waits for `work` at most `ms`; then calls `giveUp`, which reports what is
 * lost and returns whether it did, and resolves.
 */
function withTimeout(work: Promise<unknown>, ms: number, giveUp: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      if (!giveUp()) writeLine('warn', `telemetry flush did not finish within ${ms} ms; unsent spans and log records are lost`);
      resolve();
    }, ms);
    work.then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      (error: unknown) => {
        clearTimeout(timer);
        writeLine('warn', `telemetry flush failed: ${error instanceof Error ? error.message : String(error)}`);
        resolve();
      },
    );
  });
}

/** The OTLP exporters' outage wrappers, whose counts the hook and the health metrics report. */
const retryingExporters: RetryingExporter[] = [];
const retryingLogExporters: Array<RetryingExporter<ReadableLogRecord>> = [];

/**
 * The log record processors `OTEL_LOGS_EXPORTER` asks for: a batch processor
 * per exporter, the OTLP one behind the same outage wrapper as the spans'.
 * The app's logger emits to them (src/log.ts); none without an exporter.
 */
function createLogRecordProcessors(settings: TelemetrySettings, secrets: readonly string[]): LogRecordProcessor[] {
  const logs = settings.logs;
  if (logs.exporters.length === 0) return [];
  const { BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs') as typeof import('@opentelemetry/sdk-logs');
  const { createOtlpLogExporter, JsonLineLogRecordExporter } = require('./logExporters') as typeof import('./logExporters');
  return logs.exporters.map((name) => {
    if (name === 'console') return new BatchLogRecordProcessor({ exporter: new JsonLineLogRecordExporter(), ...logs.batch });
    const otlp = logs.otlp;
    if (otlp === undefined) throw new Error('OTLP logs settings missing');
    const { RetryingExporter } = require('./retryingExporter') as typeof import('./retryingExporter');
    const url = new URL(otlp.url);
    const exporter = new RetryingExporter<ReadableLogRecord>(createOtlpLogExporter(otlp.protocol, otlp.url), {
      signal: 'logs',
      maxHeldSpans: logs.batch.maxQueueSize,
      maxBatchSize: logs.batch.maxExportBatchSize,
      exportTimeoutMs: logs.batch.exportTimeoutMillis > 0 ? Math.min(otlp.timeoutMillis, logs.batch.exportTimeoutMillis) : otlp.timeoutMillis,
      target: `${url.protocol}//${url.host}${url.pathname === '/' ? '' : url.pathname}`,
      report: (level, message) => writeLine(level, maskSecrets(message, secrets)),
      renew: () => createOtlpLogExporter(otlp.protocol, otlp.url),
    });
    retryingLogExporters.push(exporter);
    return new BatchLogRecordProcessor({ exporter, ...logs.batch });
  });
}

/** Sums the counts of outage wrappers. */
function totals(exporters: ReadonlyArray<{ getStats(): { delivered: number; dropped: number; held: number } }>): { delivered: number; dropped: number; held: number } {
  const sum = { delivered: 0, dropped: 0, held: 0 };
  for (const exporter of exporters) {
    const stats = exporter.getStats();
    sum.delivered += stats.delivered;
    sum.dropped += stats.dropped;
    sum.held += stats.held;
  }
  return sum;
}

function createExporter(name: string, settings: TelemetrySettings, secrets: readonly string[]): SpanExporter {
  if (name === 'console') {
    const { JsonLineSpanExporter } = require('./consoleExporter') as typeof import('./consoleExporter');
    return new JsonLineSpanExporter();
  }
  const otlp = settings.otlp;
  if (otlp === undefined) throw new Error('OTLP settings missing');
  // Required here, not at the top: with telemetry disabled nothing of the SDK may load.
  const { RetryingExporter } = require('./retryingExporter') as typeof import('./retryingExporter');
  const url = new URL(otlp.url);
  const exporter = new RetryingExporter(createOtlpExporter(otlp), {
    maxHeldSpans: settings.batch.maxQueueSize,
    maxBatchSize: settings.batch.maxExportBatchSize,
    // OTEL_BSP_EXPORT_TIMEOUT bounds an export too (the spec's longest time to
    // export a batch), though the processor itself no longer waits on it.
    exportTimeoutMs: settings.batch.exportTimeoutMillis > 0 ? Math.min(otlp.timeoutMillis, settings.batch.exportTimeoutMillis) : otlp.timeoutMillis,
    target: `${url.protocol}//${url.host}${url.pathname === '/' ? '' : url.pathname}`,
    report: (level, message) => writeLine(level, maskSecrets(message, secrets)),
    renew: () => createOtlpExporter(otlp),
  });
  retryingExporters.push(exporter);
  return exporter;
}

function createOtlpExporter(otlp: NonNullable<TelemetrySettings['otlp']>): SpanExporter {
  // Headers, compression and timeout are read by the exporters from the
  // standard variables, which readSettings has already checked.
  const { createOtlpTraceExporter } = require('./otlpTraceExporter') as typeof import('./otlpTraceExporter');
  return createOtlpTraceExporter(otlp.protocol, otlp.url);
}

/** What the prometheus endpoint module (`prometheus.ts`) offers, when the build has it. */
interface PrometheusModule {
  createPrometheusReader(options: { host: string; port: number; pm2: Pm2Process | undefined; report: (level: 'info' | 'warn' | 'error', message: string) => void; metricProducers: MetricProducer[] }): MetricReader;
}

/**
 * The metric readers `OTEL_METRICS_EXPORTER` asks for, each with a producer
 * of the server's duration histogram, which the kit aggregates where every
 * reader takes the SDK's default aggregation for histograms (see
 * durationHistogram.ts); the SDK's histogram records it otherwise.
 */
function createMetricReaders(settings: TelemetrySettings, pm2: Pm2Process | undefined, secrets: readonly string[], durations: DurationHistogram | undefined): MetricReader[] {
  const metrics = settings.metrics;
  if (metrics.exporters.length === 0) return [];
  const report = (level: 'info' | 'warn' | 'error', message: string): void => writeLine(level, maskSecrets(message, secrets));
  const { createPushReaders, enableDurations, withDurations } = require('./metrics') as typeof import('./metrics');
  const readers = createPushReaders(metrics, report, durations);
  if (metrics.exporters.includes('prometheus')) {
    // One exporter failing must not take the others (or the traces) with it.
    try {
      const prometheus = require('./prometheus') as PrometheusModule;
      readers.push(withDurations(durations, (metricProducers) => prometheus.createPrometheusReader({ ...metrics.prometheus, pm2, report, metricProducers })));
    } catch (error) {
      const missing = (error as { code?: unknown }).code === 'MODULE_NOT_FOUND' && String((error as Error).message).includes('prometheus');
      const reason = missing ? 'is not available in this build' : `failed to start: ${error instanceof Error ? error.message : String(error)}`;
      report('warn', `OTEL_METRICS_EXPORTER: the prometheus exporter ${reason}; the other exporters listed still run`);
    }
  }
  if (durations !== undefined) enableDurations(durations, readers);
  return readers;
}

function pm2Attributes(pm2: Pm2Process | undefined): Record<string, string | number> {
  const attributes: Record<string, string | number> = {};
  if (pm2?.name !== undefined) attributes['pm2.app.name'] = pm2.name;
  if (pm2?.pmId !== undefined) attributes['pm2.id'] = pm2.pmId;
  if (pm2?.instance !== undefined) attributes['pm2.instance'] = pm2.instance;
  return attributes;
}

/** Flushes on SIGINT/SIGTERM only when nothing else handles the signal, then lets it act as usual. */
function flushOnSignal(signal: NodeJS.Signals, shutdown: () => Promise<void>): void {
  process.once(signal, () => {
    if (process.listenerCount(signal) > 0) return; // the app handles it, and flushes through the hook
    void shutdown().then(() => process.kill(process.pid, signal));
  });
}

/**
 * Whether an OpenTelemetry SDK already set a global tracer provider in this
 * process, e.g. one the OpenTelemetry Operator injects with
 * `NODE_OPTIONS=--require …` (which Node runs before `-r`). Read from the
 * API's global registry directly, without loading `@opentelemetry/api`.
 */
function otherSdkRegistered(): boolean {
  const registry = globalThis as Record<symbol, { trace?: unknown } | undefined>;
  return Object.getOwnPropertySymbols(registry).some((key) => /^opentelemetry\.js\.api\.\d+$/.test(key.description ?? '') && registry[key]?.trace !== undefined);
}

function start(): void {
  // Two SDKs would patch every module twice and export each request twice.
  if (otherSdkRegistered()) {
    writeLine('warn', 'another OpenTelemetry SDK is already registered in this process (NODE_OPTIONS=--require …?); the kit\'s preload steps aside');
    return;
  }
  // Cache compiled code on disk: the SDK and the app load ~600 modules, and
  // a worker started by `pm2 reload` or `pm2 scale` then compiles none of
  // them again (~150 ms less to the first response here). Node skips this
  // under NODE_DISABLE_COMPILE_CACHE=1.
  module.enableCompileCache?.();
  const pm2 = adoptPm2Env();
  const settings = readSettings(process.env);
  // Disabled means disabled: nothing below is even loaded, so nothing is patched.
  if (settings.disabled) return;

  const api = require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const secrets = secretsIn(process.env);
  api.diag.setLogger(new RateLimitedDiagLogger(secrets), {
    logLevel: api.DiagLogLevel[settings.logLevel.toUpperCase() as keyof typeof api.DiagLogLevel],
    suppressOverrideMessage: true,
  });

  const instrumentations = loadInstrumentations(settings);
  const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace');
  const exporters = settings.exporters.map((name) => createExporter(name, settings, secrets));
  const spanProcessors: SpanProcessor[] = exporters.map((exporter) => new BatchSpanProcessor({ exporter, ...settings.batch }));
  const { HttpServerInstrumentation } = require('./httpServerInstrumentation') as typeof import('./httpServerInstrumentation');
  const server = instrumentations.find((instrumentation) => instrumentation instanceof HttpServerInstrumentation);
  const metricReaders = createMetricReaders(settings, pm2, secrets, server?.durations);
  const logRecordProcessors = createLogRecordProcessors(settings, secrets);
  const { defaultResource, detectResources, resourceFromAttributes } = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
  const { NodeSDK } = (require('./nodeSdk') as typeof import('./nodeSdk')).requireNodeSdk();
  // Each process writes its own series: a fresh service.instance.id, even
  // with the serviceinstance detector off (which, on, sets its own). Two
  // workers of one PM2 slot overlap during `pm2 reload`; a shared id would
  // make them write the same cumulative series. See README, Metrics under PM2.
  const baseAttributes = metricReaders.length > 0 ? { 'service.instance.id': randomUUID(), ...pm2Attributes(pm2) } : pm2Attributes(pm2);
  if (metricReaders.length > 0 && pm2 !== undefined && /(?:^|,)\s*service\.instance\.id\s*=/.test(process.env.OTEL_RESOURCE_ATTRIBUTES ?? '')) {
    writeLine('warn', 'OTEL_RESOURCE_ATTRIBUTES sets service.instance.id: every worker of this app then writes the same metric series; leave it unset (the kit gives each process its own)');
  }

  // NodeSDK replaces the diag logger with a plain console one when
  // OTEL_LOG_LEVEL is set; ours (rate-limited, redacting) must stay.
  const logLevel = process.env.OTEL_LOG_LEVEL;
  delete process.env.OTEL_LOG_LEVEL;
  // The resource NodeSDK would detect at start, detected here so that the
  // kit's tracer provider and NodeSDK's meter and logger providers share it.
  const resource = defaultResource()
    .merge(resourceFromAttributes(baseAttributes))
    .merge(detectResources({ detectors: loadResourceDetectors(settings.resourceDetectors) }));
  // Spans go through the kit's tracer provider (`tracer.ts`: the SDK's
  // spans at a half to a third of the cost), over the same processors,
  // sampler and limits NodeSDK would use; NodeSDK gets no span processor, so
  // builds none.
  let tracerProvider: import('./tracer').KitTracerProvider | undefined;
  if (spanProcessors.length > 0) {
    const { KitTracerProvider, samplerFromEnv, spanLimitsFromEnv } = require('./tracer') as typeof import('./tracer');
    tracerProvider = new KitTracerProvider({ resource, sampler: samplerFromEnv(process.env), spanLimits: spanLimitsFromEnv(), idGenerator: new PooledRandomIdGenerator(), spanProcessors });
    api.trace.setGlobalTracerProvider(tracerProvider);
    for (const instrumentation of instrumentations) instrumentation.setTracerProvider(tracerProvider);
  }
  let sdk: InstanceType<typeof NodeSDK>;
  try {
    sdk = new NodeSDK({
      resource,
      autoDetectResources: false,
      instrumentations,
      spanProcessors: [],
      // Metrics as settings.ts decided (none without an endpoint, so nothing
      // retries against a collector that is not there). No log record
      // processor: an empty list, not undefined (NodeSDK would otherwise read
      // OTEL_LOGS_EXPORTER itself and default to otlp); the kit's logger
      // provider, below, takes the processors settings.ts asked for.
      metricReaders,
      logRecordProcessors: [],
    });
  } finally {
    if (logLevel !== undefined) process.env.OTEL_LOG_LEVEL = logLevel;
  }
  sdk.start();
  // Log records go through the kit's logger provider (`logger.ts`: the SDK's
  // records for less each), in place of the empty one NodeSDK registered,
  // for the app's logger and for the instrumentations alike.
  let loggerProvider: import('./logger').KitLoggerProvider | undefined;
  if (logRecordProcessors.length > 0) {
    const { KitLoggerProvider, logRecordLimitsFromEnv } = require('./logger') as typeof import('./logger');
    loggerProvider = new KitLoggerProvider({ resource, logRecordLimits: logRecordLimitsFromEnv(), processors: logRecordProcessors });
    api.logs.disable();
    api.logs.setGlobalLoggerProvider(loggerProvider);
    for (const instrumentation of instrumentations) instrumentation.setLoggerProvider?.(loggerProvider);
  }
  if (metricReaders.length > 0) {
    const { observeExporters, exporterType } = require('./metrics') as typeof import('./metrics');
    const meter = api.metrics.getMeter('koa-pm2-otel');
    if (settings.otlp !== undefined) {
      const type = exporterType('span', settings.otlp.protocol);
      observeExporters(meter, 'span', retryingExporters.map((exporter) => ({ type, getStats: () => exporter.getStats() })));
    }
    if (settings.logs.otlp !== undefined) {
      const type = exporterType('log', settings.logs.otlp.protocol);
      observeExporters(meter, 'log', retryingLogExporters.map((exporter) => ({ type, getStats: () => exporter.getStats() })));
    }
  }

  const spanStats = (): { delivered: number; dropped: number; held: number } => totals(retryingExporters);
  const logStats = (): { delivered: number; dropped: number; held: number } => totals(retryingLogExporters);

  // PM2's monitor, with metrics on: a worker under PM2 is connected to the daemon by IPC.
  let monitor: { stop(): void } | undefined;
  if (metricReaders.length > 0 && pm2 !== undefined && typeof process.send === 'function') {
    const { Pm2Monitor } = require('./pm2Monitor') as typeof import('./pm2Monitor');
    monitor = new Pm2Monitor(
      (message) => {
        // A send on a closed channel would emit 'error' on process: ask for a callback instead.
        if (process.connected) process.send?.(message, undefined, {}, () => undefined);
      },
      {
        requests: () => server?.requestTotals(),
        spans: () => (retryingExporters.length > 0 ? spanStats() : undefined),
        logs: () => (retryingLogExporters.length > 0 ? logStats() : undefined),
      },
    );
  }

  let stopping: Promise<void> | undefined;
  const hook = {
    // Past the budget, the OTLP exporters stop waiting for a collector that
    // hangs and report, in the words of any other loss, how many spans they
    // held or had in flight: the worker exits in time, and says what it lost.
    shutdown: (ms: number) => {
      monitor?.stop();
      return (stopping ??= withTimeout(Promise.all([sdk.shutdown(), tracerProvider?.shutdown(), loggerProvider?.shutdown()]), ms, () => {
        let reported = false;
        for (const exporter of [...retryingExporters, ...retryingLogExporters]) reported = exporter.abandon() > 0 || reported;
        return reported;
      }));
    },
    stats: spanStats,
    logStats,
    // The app's logger sends its records to the Logs SDK only when someone exports them.
    logsExported: logRecordProcessors.length > 0,
  };
  (globalThis as Record<symbol, unknown>)[TELEMETRY_HOOK] = hook;

  const fallbackMs = settings.batch.exportTimeoutMillis;
  flushOnSignal('SIGINT', () => hook.shutdown(fallbackMs));
  flushOnSignal('SIGTERM', () => hook.shutdown(fallbackMs));
  process.once('beforeExit', () => void hook.shutdown(fallbackMs));
}

try {
  start();
} catch (error) {
  const reason = error instanceof TelemetryConfigError ? error.message : `SDK failed to start: ${error instanceof Error ? error.message : String(error)}`;
  // A library's error may quote a header value: mask them all.
  writeLine('error', `${maskSecrets(reason, secretsIn(process.env))}; telemetry is off, the app serves without it`);
}
