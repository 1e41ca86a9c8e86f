/**
 * Turns the standard `OTEL_*` variables into the settings the preload acts
 * on, checking every value first so that a mistake yields one clear line
 * naming the variable, instead of an SDK that half-works in silence.
 *
 * Pure: it reads only the env object it is given, so it is unit-tested
 * in-process while the preload itself is tested in a child process.
 */

export type Env = Readonly<Record<string, string | undefined>>;

export type OtlpProtocol = 'grpc' | 'http/protobuf' | 'http/json';
export type TraceExporterName = 'otlp' | 'console';
export type MetricExporterName = 'otlp' | 'prometheus' | 'console';
export type LogExporterName = 'otlp' | 'console';
export type Signal = 'TRACES' | 'METRICS' | 'LOGS';
export type TemporalityPreference = 'cumulative' | 'delta' | 'lowmemory';
export type HistogramAggregation = 'explicit_bucket_histogram' | 'base2_exponential_bucket_histogram';

export interface OtlpSettings {
  readonly protocol: OtlpProtocol;
  /** Full URL: for HTTP it includes the signal's path (`/v1/traces`, `/v1/metrics`). */
  readonly url: string;
  /** Decoded header names and values. Values are secrets: never log them. */
  readonly headers: Readonly<Record<string, string>>;
  /** How long the exporter waits for one export (OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT). */
  readonly timeoutMillis: number;
}

export interface MetricsSettings {
  /** Empty: no MeterProvider, no instrument records anything. */
  readonly exporters: readonly MetricExporterName[];
  readonly otlp: OtlpSettings | undefined;
  readonly temporality: TemporalityPreference;
  /** How the OTLP exporter asks for histograms (OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION). */
  readonly histogramAggregation: HistogramAggregation;
  readonly exportIntervalMillis: number;
  readonly exportTimeoutMillis: number;
  /** Where the Prometheus endpoint listens, when `prometheus` is listed. */
  readonly prometheus: { readonly host: string; readonly port: number };
}

export interface LogsSettings {
  /** Empty: no log record processor; the app's lines go to stdout only. */
  readonly exporters: readonly LogExporterName[];
  readonly otlp: OtlpSettings | undefined;
  /** OTEL_BLRP_*: the batch log record processor, and the outage hold of the OTLP exporter. */
  readonly batch: {
    readonly maxQueueSize: number;
    readonly maxExportBatchSize: number;
    readonly scheduledDelayMillis: number;
    readonly exportTimeoutMillis: number;
  };
}

export interface TelemetrySettings {
  readonly disabled: boolean;
  readonly exporters: readonly TraceExporterName[];
  readonly otlp: OtlpSettings | undefined;
  readonly metrics: MetricsSettings;
  readonly logs: LogsSettings;
  readonly resourceDetectors: readonly string[];
  readonly instrumentations: readonly string[];
  /** Request paths that produce no span (health checks). */
  readonly excludedPaths: readonly string[];
  readonly logLevel: 'none' | 'error' | 'warn' | 'info' | 'debug' | 'verbose' | 'all';
  readonly batch: {
    readonly maxQueueSize: number;
    readonly maxExportBatchSize: number;
    readonly scheduledDelayMillis: number;
    readonly exportTimeoutMillis: number;
  };
}

export class TelemetryConfigError extends Error {
  override name = 'TelemetryConfigError';
}

/** Instrumentations the kit loads itself, without the auto-instrumentations bundle. */
export const LEAN_INSTRUMENTATIONS = ['http', 'koa', 'undici'] as const;
/**
 * Enabled by default: server and outgoing `http` spans, and `fetch`. The
 * route name comes from the app (`src/telemetry.ts`), so the Koa
 * instrumentation is loaded only when listed.
 */
export const DEFAULT_INSTRUMENTATIONS = ['http', 'undici'];
export const DEFAULT_RESOURCE_DETECTORS = ['env', 'host', 'os', 'process', 'serviceinstance', 'container'];
export const KNOWN_RESOURCE_DETECTORS = [...DEFAULT_RESOURCE_DETECTORS, 'aws', 'all', 'none'];
const SAMPLERS = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
];
const PROPAGATORS = ['tracecontext', 'baggage', 'b3', 'b3multi', 'none'];
const LOG_LEVELS = ['none', 'error', 'warn', 'info', 'debug', 'verbose', 'all'] as const;
const TEMPORALITIES = ['cumulative', 'delta', 'lowmemory'] as const;
const HISTOGRAM_AGGREGATIONS = ['explicit_bucket_histogram', 'base2_exponential_bucket_histogram'] as const;

function text(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

function list(env: Env, name: string): string[] | undefined {
  const value = text(env, name);
  if (value === undefined) return undefined;
  return [...new Set(value.split(',').map((item) => item.trim()).filter((item) => item !== ''))];
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) {
    throw new TelemetryConfigError(`${name}: unknown value "${value}", expected one of ${allowed.join(', ')}`);
  }
  return value as T;
}

function listOf(env: Env, name: string, allowed: readonly string[]): string[] | undefined {
  const values = list(env, name);
  for (const value of values ?? []) oneOf(name, value, allowed);
  return values;
}

function nonNegative(env: Env, name: string, fallback: number): number {
  const raw = text(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw)) throw new TelemetryConfigError(`${name} must be a non-negative integer, got "${raw}"`);
  return Number(raw);
}

function positive(env: Env, name: string, fallback: number): number {
  const raw = text(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) === 0) throw new TelemetryConfigError(`${name} must be a positive integer (milliseconds), got "${raw}"`);
  return Number(raw);
}

/** A URL is shown in messages unless it may hold credentials (`user:password@`). */
function redactUrl(value: string): string {
  return value.includes('@') ? '(not shown: it may hold credentials)' : value;
}

function url(name: string, value: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new TelemetryConfigError(`${name} must be a URL such as http://localhost:4317, got "${redactUrl(value)}"`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new TelemetryConfigError(`${name} must be an http:// or https:// URL, got "${redactUrl(value)}"`);
  }
  return parsed;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Parses a W3C-baggage-style header list (`key=value,key2=value2`, values
 * URL-encoded, as the OTLP exporter spec defines it). Errors name the
 * variable and the entry's position or key, never a value.
 */
export function parseHeaders(name: string, value: string | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  if (value === undefined) return headers;
  const entries = value.split(',');
  entries.forEach((entry, index) => {
    if (entry.trim() === '') return;
    const eq = entry.indexOf('=');
    const position = `entry ${index + 1} of ${entries.length}`;
    if (eq <= 0) throw new TelemetryConfigError(`${name}: ${position} is not key=value (values are not shown)`);
    // The exporters read this list as W3C baggage, where a raw `;` starts
    // metadata and silently cuts the value short.
    if (entry.includes(';')) throw new TelemetryConfigError(`${name}: ${position} has a raw ";"; write it as %3B (value not shown)`);
    let key: string;
    let decoded: string;
    try {
      key = decodeURIComponent(entry.slice(0, eq)).trim();
    } catch {
      throw new TelemetryConfigError(`${name}: ${position} has a malformed percent-encoding in its key`);
    }
    if (!HEADER_NAME.test(key)) throw new TelemetryConfigError(`${name}: ${position} has an invalid header name`);
    try {
      decoded = decodeURIComponent(entry.slice(eq + 1)).trim();
    } catch {
      throw new TelemetryConfigError(`${name}: the value of header "${key}" has a malformed percent-encoding (value not shown)`);
    }
    // gRPC metadata and HTTP/1.1 both take printable ASCII only; an
    // exporter rejecting the value later would quote it in its error.
    if (!/^[\x20-\x7e\t]*$/.test(decoded)) {
      throw new TelemetryConfigError(`${name}: the value of header "${key}" has characters other than printable ASCII (value not shown)`);
    }
    headers[key.toLowerCase()] = decoded;
  });
  return headers;
}

/**
 * Every header value in the environment, decoded and raw, best effort and
 * never throwing: what must be masked in any message, even one about a
 * setting that failed to parse.
 */
export function secretsIn(env: Env): string[] {
  const secrets: string[] = [];
  for (const name of ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS', 'OTEL_EXPORTER_OTLP_METRICS_HEADERS', 'OTEL_EXPORTER_OTLP_LOGS_HEADERS']) {
    for (const entry of env[name]?.split(',') ?? []) {
      const raw = entry.slice(entry.indexOf('=') + 1).trim();
      if (raw.length < 4) continue;
      secrets.push(raw);
      try {
        secrets.push(decodeURIComponent(raw).trim());
      } catch {
        // The raw form is masked already.
      }
    }
  }
  return secrets.sort((a, b) => b.length - a.length);
}

/** The OTLP settings of one signal: its own variables (`…_TRACES_…`, `…_METRICS_…`, `…_LOGS_…`) over the generic ones. */
function otlpSettings(env: Env, signal: Signal): OtlpSettings {
  const protocolVar = text(env, `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`)
    ? `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`
    : 'OTEL_EXPORTER_OTLP_PROTOCOL';
  const protocol = oneOf<OtlpProtocol>(protocolVar, text(env, protocolVar) ?? 'grpc', [
    'grpc',
    'http/protobuf',
    'http/json',
  ]);

  // A signal-specific endpoint is used as is; the generic one is a base URL
  // to which HTTP exporters append the signal's path (OTLP exporter spec).
  const signalEndpoint = text(env, `OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`);
  const baseEndpoint = text(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  let target: string;
  if (signalEndpoint !== undefined) {
    target = url(`OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`, signalEndpoint).href;
  } else {
    const base = baseEndpoint ?? (protocol === 'grpc' ? 'http://localhost:4317' : 'http://localhost:4318');
    const parsed = url('OTEL_EXPORTER_OTLP_ENDPOINT', base);
    if (protocol !== 'grpc') parsed.pathname = `${parsed.pathname.replace(/\/$/, '')}/v1/${signal.toLowerCase()}`;
    target = parsed.href;
  }

  const headers = {
    ...parseHeaders('OTEL_EXPORTER_OTLP_HEADERS', text(env, 'OTEL_EXPORTER_OTLP_HEADERS')),
    ...parseHeaders(`OTEL_EXPORTER_OTLP_${signal}_HEADERS`, text(env, `OTEL_EXPORTER_OTLP_${signal}_HEADERS`)),
  };
  checkCompressionAndTimeout(env, signal);
  // The exporter reads the same variables; the outage wrapper needs the value too.
  const timeoutText = text(env, `OTEL_EXPORTER_OTLP_${signal}_TIMEOUT`) ?? text(env, 'OTEL_EXPORTER_OTLP_TIMEOUT');
  const timeoutMillis = timeoutText === undefined ? 10000 : Number(timeoutText);
  return { protocol, url: target, headers, timeoutMillis };
}

/**
 * The exporters read compression and timeout from these variables
 * themselves, and ignore a bad value with a warning (falling back to no
 * compression, or 10 s): check them here so that a mistake is one clear line.
 * The exporters accept exactly `gzip` or `none`, and a timeout above 0.
 */
function checkCompressionAndTimeout(env: Env, signal: Signal): void {
  for (const name of ['OTEL_EXPORTER_OTLP_COMPRESSION', `OTEL_EXPORTER_OTLP_${signal}_COMPRESSION`]) {
    const value = text(env, name);
    if (value !== undefined) oneOf(name, value, ['gzip', 'none']);
  }
  for (const name of ['OTEL_EXPORTER_OTLP_TIMEOUT', `OTEL_EXPORTER_OTLP_${signal}_TIMEOUT`]) {
    const value = text(env, name);
    if (value !== undefined && !/^0*[1-9]\d*$/.test(value)) {
      throw new TelemetryConfigError(`${name} must be a whole number of milliseconds, 1 or more, got "${value}"`);
    }
  }
}

function exporterNames(env: Env): TraceExporterName[] {
  const names = listOf(env, 'OTEL_TRACES_EXPORTER', ['otlp', 'console', 'none']);
  if (names === undefined) {
    // Without a collector to send to, spans go to stdout, where `pm2 logs` shows them.
    const hasEndpoint = text(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') ?? text(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
    return hasEndpoint === undefined ? ['console'] : ['otlp'];
  }
  if (names.includes('none')) return [];
  return names as TraceExporterName[];
}

function metricExporterNames(env: Env): MetricExporterName[] {
  const names = listOf(env, 'OTEL_METRICS_EXPORTER', ['otlp', 'prometheus', 'console', 'none']);
  if (names === undefined) {
    // As the seed does, metrics go where an endpoint is set; without one
    // nothing is exported (nor retried against a collector that is not there).
    const hasEndpoint = text(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') ?? text(env, 'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT');
    return hasEndpoint === undefined ? [] : ['otlp'];
  }
  if (names.includes('none')) return [];
  return names as MetricExporterName[];
}

/** The metrics settings; every value is checked even when no exporter uses it, so a typo shows at once. */
function metricsSettings(env: Env): MetricsSettings {
  const exporters = metricExporterNames(env);
  const temporality = oneOf(
    'OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE',
    text(env, 'OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE')?.toLowerCase() ?? 'cumulative',
    TEMPORALITIES,
  );
  const histogramAggregation = oneOf(
    'OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION',
    text(env, 'OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION')?.toLowerCase() ?? 'explicit_bucket_histogram',
    HISTOGRAM_AGGREGATIONS,
  );
  const exportIntervalMillis = positive(env, 'OTEL_METRIC_EXPORT_INTERVAL', 60000);
  const timeoutSet = text(env, 'OTEL_METRIC_EXPORT_TIMEOUT') !== undefined;
  let exportTimeoutMillis = positive(env, 'OTEL_METRIC_EXPORT_TIMEOUT', 30000);
  if (exportTimeoutMillis > exportIntervalMillis) {
    if (timeoutSet) {
      throw new TelemetryConfigError(
        `OTEL_METRIC_EXPORT_TIMEOUT (${exportTimeoutMillis}) must not exceed OTEL_METRIC_EXPORT_INTERVAL (${exportIntervalMillis})`,
      );
    }
    // Only the interval was shortened: the default timeout follows it, as the SDK does.
    exportTimeoutMillis = exportIntervalMillis;
  }
  const host = text(env, 'OTEL_EXPORTER_PROMETHEUS_HOST') ?? 'localhost';
  const rawPort = text(env, 'OTEL_EXPORTER_PROMETHEUS_PORT');
  if (rawPort !== undefined && (!/^\d{1,5}$/.test(rawPort) || Number(rawPort) > 65535)) {
    throw new TelemetryConfigError(`OTEL_EXPORTER_PROMETHEUS_PORT must be a port number from 0 to 65535, got "${rawPort}"`);
  }
  return {
    exporters,
    otlp: exporters.includes('otlp') ? otlpSettings(env, 'METRICS') : undefined,
    temporality,
    histogramAggregation,
    exportIntervalMillis,
    exportTimeoutMillis,
    prometheus: { host, port: rawPort === undefined ? 9464 : Number(rawPort) },
  };
}

/** Metrics off: what a disabled SDK, and the defaults, come down to. */
const NO_METRICS: MetricsSettings = {
  exporters: [],
  otlp: undefined,
  temporality: 'cumulative',
  histogramAggregation: 'explicit_bucket_histogram',
  exportIntervalMillis: 60000,
  exportTimeoutMillis: 30000,
  prometheus: { host: 'localhost', port: 9464 },
};

function logExporterNames(env: Env): LogExporterName[] {
  const names = listOf(env, 'OTEL_LOGS_EXPORTER', ['otlp', 'console', 'none']);
  if (names === undefined) {
    // As for metrics: log records go where an endpoint is set; without one,
    // the lines on stdout are the only log (and nothing retries in vain).
    const hasEndpoint = text(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') ?? text(env, 'OTEL_EXPORTER_OTLP_LOGS_ENDPOINT');
    return hasEndpoint === undefined ? [] : ['otlp'];
  }
  if (names.includes('none')) return [];
  return names as LogExporterName[];
}

/** The logs settings; every value is checked even when no exporter uses it, so a typo shows at once. */
function logsSettings(env: Env): LogsSettings {
  const exporters = logExporterNames(env);
  // The spec's defaults for the batch log record processor.
  const batch = {
    maxQueueSize: nonNegative(env, 'OTEL_BLRP_MAX_QUEUE_SIZE', 2048),
    maxExportBatchSize: nonNegative(env, 'OTEL_BLRP_MAX_EXPORT_BATCH_SIZE', 512),
    scheduledDelayMillis: nonNegative(env, 'OTEL_BLRP_SCHEDULE_DELAY', 1000),
    exportTimeoutMillis: nonNegative(env, 'OTEL_BLRP_EXPORT_TIMEOUT', 30000),
  };
  if (batch.maxExportBatchSize > batch.maxQueueSize) {
    throw new TelemetryConfigError('OTEL_BLRP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BLRP_MAX_QUEUE_SIZE');
  }
  if (batch.maxQueueSize === 0 || batch.maxExportBatchSize === 0) {
    throw new TelemetryConfigError('OTEL_BLRP_MAX_QUEUE_SIZE and OTEL_BLRP_MAX_EXPORT_BATCH_SIZE must be 1 or more');
  }
  return { exporters, otlp: exporters.includes('otlp') ? otlpSettings(env, 'LOGS') : undefined, batch };
}

/** Logs off: what a disabled SDK comes down to. */
const NO_LOGS: LogsSettings = {
  exporters: [],
  otlp: undefined,
  batch: { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMillis: 1000, exportTimeoutMillis: 30000 },
};

function instrumentationNames(env: Env): string[] {
  const enabled = list(env, 'OTEL_NODE_ENABLED_INSTRUMENTATIONS') ?? DEFAULT_INSTRUMENTATIONS;
  const disabled = new Set(list(env, 'OTEL_NODE_DISABLED_INSTRUMENTATIONS') ?? []);
  for (const name of [...enabled, ...disabled]) {
    if (!/^[a-z0-9][a-z0-9._-]*$/.test(name)) {
      throw new TelemetryConfigError(`OTEL_NODE_ENABLED_INSTRUMENTATIONS/OTEL_NODE_DISABLED_INSTRUMENTATIONS: "${name}" is not an instrumentation name such as http or pg`);
    }
  }
  return enabled.filter((name) => !disabled.has(name));
}

function checkSampler(env: Env): void {
  const sampler = text(env, 'OTEL_TRACES_SAMPLER');
  if (sampler !== undefined) oneOf('OTEL_TRACES_SAMPLER', sampler, SAMPLERS);
  const arg = text(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (arg !== undefined && sampler?.endsWith('traceidratio')) {
    const ratio = Number(arg);
    if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
      throw new TelemetryConfigError(`OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got "${arg}"`);
    }
  }
}

/** Reads and checks every setting; throws a {@link TelemetryConfigError} on the first bad one. */
export function readSettings(env: Env): TelemetrySettings {
  const disabledText = text(env, 'OTEL_SDK_DISABLED')?.toLowerCase();
  const disabled = disabledText === 'true';
  const logLevel = oneOf('OTEL_LOG_LEVEL', text(env, 'OTEL_LOG_LEVEL')?.toLowerCase() ?? 'warn', LOG_LEVELS);
  const batch = {
    maxQueueSize: nonNegative(env, 'OTEL_BSP_MAX_QUEUE_SIZE', 2048),
    maxExportBatchSize: nonNegative(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 512),
    scheduledDelayMillis: nonNegative(env, 'OTEL_BSP_SCHEDULE_DELAY', 5000),
    exportTimeoutMillis: nonNegative(env, 'OTEL_BSP_EXPORT_TIMEOUT', 30000),
  };
  if (batch.maxExportBatchSize > batch.maxQueueSize) {
    throw new TelemetryConfigError('OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE');
  }
  if (disabled) {
    return { disabled, exporters: [], otlp: undefined, metrics: NO_METRICS, logs: NO_LOGS, resourceDetectors: [], instrumentations: [], excludedPaths: [], logLevel, batch };
  }
  const exporters = exporterNames(env);
  checkSampler(env);
  listOf(env, 'OTEL_PROPAGATORS', PROPAGATORS);
  const excludedPaths = list(env, 'OTEL_NODE_EXCLUDED_URLS') ?? ['/healthz', '/readyz'];
  for (const path of excludedPaths) {
    if (!path.startsWith('/')) throw new TelemetryConfigError(`OTEL_NODE_EXCLUDED_URLS: "${path}" is not a path starting with /`);
  }
  return {
    disabled,
    exporters,
    // Checked whenever an OTLP exporter is in use, so a bad endpoint is caught at start.
    otlp: exporters.includes('otlp') ? otlpSettings(env, 'TRACES') : undefined,
    metrics: metricsSettings(env),
    logs: logsSettings(env),
    resourceDetectors: listOf(env, 'OTEL_NODE_RESOURCE_DETECTORS', KNOWN_RESOURCE_DETECTORS) ?? DEFAULT_RESOURCE_DETECTORS,
    instrumentations: instrumentationNames(env),
    excludedPaths,
    logLevel,
    batch,
  };
}
