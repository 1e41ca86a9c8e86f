import {
  DEFAULT_RESOURCE_DETECTORS,
  parseHeaders,
  readSettings,
  secretsIn,
  TelemetryConfigError,
  type Env,
} from '../../otel/settings';

/** A value no message may ever contain. */
const SECRET = 'sk_live_S3CR3T_t0ken';

/** The error readSettings throws for env, so its message can be inspected. */
function errorFrom(run: () => unknown): Error {
  try {
    run();
  } catch (error) {
    if (error instanceof Error) return error;
    throw new Error(`threw a non-Error: ${String(error)}`);
  }
  throw new Error('did not throw');
}

describe('readSettings', () => {
  it('sends spans to the console when nothing is configured', () => {
    const settings = readSettings({});
    expect(settings).toEqual({
      disabled: false,
      exporters: ['console'],
      otlp: undefined,
      metrics: {
        exporters: [],
        otlp: undefined,
        temporality: 'cumulative',
        histogramAggregation: 'explicit_bucket_histogram',
        exportIntervalMillis: 60000,
        exportTimeoutMillis: 30000,
        prometheus: { host: 'localhost', port: 9464 },
      },
      logs: {
        exporters: [],
        otlp: undefined,
        batch: { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMillis: 1000, exportTimeoutMillis: 30000 },
      },
      resourceDetectors: DEFAULT_RESOURCE_DETECTORS,
      instrumentations: ['http', 'undici'],
      excludedPaths: ['/healthz', '/readyz'],
      logLevel: 'warn',
      batch: { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMillis: 5000, exportTimeoutMillis: 30000 },
    });
    expect(settings.resourceDetectors).toEqual(['env', 'host', 'os', 'process', 'serviceinstance', 'container']);
  });

  it('exports over OTLP/gRPC to the base endpoint when one is set', () => {
    const settings = readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://localhost:4317' });
    expect(settings.exporters).toEqual(['otlp']);
    expect(settings.otlp).toEqual({ protocol: 'grpc', url: 'http://localhost:4317/', headers: {}, timeoutMillis: 10000 });
  });

  it('appends /v1/traces to the base endpoint for http/protobuf', () => {
    const settings = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otlp.example.com',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    });
    expect(settings.otlp).toEqual({ protocol: 'http/protobuf', url: 'https://otlp.example.com/v1/traces', headers: {}, timeoutMillis: 10000 });
  });

  it('keeps a base endpoint path and appends /v1/traces once for http/json', () => {
    const settings = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otlp.example.com/prefix/',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    });
    expect(settings.otlp?.url).toBe('https://otlp.example.com/prefix/v1/traces');
  });

  it('uses the traces-specific endpoint as is', () => {
    const settings = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'https://ignored.example.com',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://collector.example.com:4318/custom/path',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    });
    expect(settings.exporters).toEqual(['otlp']);
    expect(settings.otlp?.url).toBe('https://collector.example.com:4318/custom/path');
  });

  it('prefers the traces-specific protocol over the generic one', () => {
    const settings = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://localhost:4318',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json',
    });
    expect(settings.otlp).toMatchObject({ protocol: 'http/json', url: 'http://localhost:4318/v1/traces' });
  });

  it('defaults the OTLP endpoint by protocol when only the exporter is chosen', () => {
    expect(readSettings({ OTEL_TRACES_EXPORTER: 'otlp' }).otlp?.url).toBe('http://localhost:4317/');
    expect(readSettings({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }).otlp?.url).toBe(
      'http://localhost:4318/v1/traces',
    );
  });

  it('decodes OTLP headers, the traces-specific ones overriding the generic ones', () => {
    const settings = readSettings({
      OTEL_TRACES_EXPORTER: 'otlp',
      OTEL_EXPORTER_OTLP_HEADERS: 'Authorization=Basic%20abc,x-tenant=a',
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'X-Tenant=b',
    });
    expect(settings.otlp?.headers).toEqual({ authorization: 'Basic abc', 'x-tenant': 'b' });
  });

  it('exports to both OTLP and the console when both are listed', () => {
    const settings = readSettings({ OTEL_TRACES_EXPORTER: 'otlp,console' });
    expect(settings.exporters).toEqual(['otlp', 'console']);
    expect(settings.otlp?.protocol).toBe('grpc');
  });

  it('trims and de-duplicates the exporter list', () => {
    expect(readSettings({ OTEL_TRACES_EXPORTER: ' console , console,' }).exporters).toEqual(['console']);
  });

  it('exports nothing with OTEL_TRACES_EXPORTER=none, even with an endpoint set', () => {
    const settings = readSettings({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://localhost:4317' });
    expect(settings.exporters).toEqual([]);
    expect(settings.otlp).toBeUndefined();
  });

  it('does not check OTLP settings when no OTLP exporter is in use', () => {
    // An endpoint turns OTLP metrics and logs on by default: off here, nothing uses it.
    const settings = readSettings({ OTEL_TRACES_EXPORTER: 'console', OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' });
    expect(settings.otlp).toBeUndefined();
    expect(settings.metrics.otlp).toBeUndefined();
    expect(settings.logs.otlp).toBeUndefined();
  });

  it.each(['true', 'TRUE', ' True '])('is disabled with OTEL_SDK_DISABLED=%j', (value) => {
    const settings = readSettings({ OTEL_SDK_DISABLED: value, OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' });
    expect(settings.disabled).toBe(true);
    expect(settings.exporters).toEqual([]);
    expect(settings.otlp).toBeUndefined();
    expect(settings.instrumentations).toEqual([]);
  });

  it.each(['false', '1', 'yes'])('stays enabled with OTEL_SDK_DISABLED=%j', (value) => {
    expect(readSettings({ OTEL_SDK_DISABLED: value }).disabled).toBe(false);
  });

  it('applies enabled and disabled instrumentation lists', () => {
    expect(
      readSettings({ OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'http,koa,pg', OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'koa' }).instrumentations,
    ).toEqual(['http', 'pg']);
  });

  it('reads the export timeout, the traces one first, as the exporters do', () => {
    expect(readSettings({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TIMEOUT: '1500' }).otlp?.timeoutMillis).toBe(1500);
    expect(
      readSettings({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TIMEOUT: '1500', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '700' }).otlp?.timeoutMillis,
    ).toBe(700);
  });

  it('reads excluded paths, resource detectors, log level and batch sizes', () => {
    const settings = readSettings({
      OTEL_NODE_EXCLUDED_URLS: '/ping, /metrics',
      OTEL_NODE_RESOURCE_DETECTORS: 'env,aws',
      OTEL_LOG_LEVEL: 'DEBUG',
      OTEL_BSP_MAX_QUEUE_SIZE: '100',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '10',
      OTEL_BSP_SCHEDULE_DELAY: '0',
      OTEL_BSP_EXPORT_TIMEOUT: '1000',
    });
    expect(settings.excludedPaths).toEqual(['/ping', '/metrics']);
    expect(settings.resourceDetectors).toEqual(['env', 'aws']);
    expect(settings.logLevel).toBe('debug');
    expect(settings.batch).toEqual({ maxQueueSize: 100, maxExportBatchSize: 10, scheduledDelayMillis: 0, exportTimeoutMillis: 1000 });
  });

  it('accepts known samplers, ratios and propagators', () => {
    expect(() =>
      readSettings({
        OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
        OTEL_TRACES_SAMPLER_ARG: '0.25',
        OTEL_PROPAGATORS: 'tracecontext,baggage,b3',
      }),
    ).not.toThrow();
  });

  it('accepts gzip or none compression and a timeout in milliseconds, in both forms', () => {
    expect(() =>
      readSettings({
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_COMPRESSION: 'none',
        OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: ' gzip ',
        OTEL_EXPORTER_OTLP_TIMEOUT: '10000',
        OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '1',
      }),
    ).not.toThrow();
  });

  it('does not check compression and timeout when no OTLP exporter is in use', () => {
    expect(readSettings({ OTEL_TRACES_EXPORTER: 'console', OTEL_EXPORTER_OTLP_COMPRESSION: 'zstd', OTEL_EXPORTER_OTLP_TIMEOUT: 'soon' }).exporters).toEqual([
      'console',
    ]);
  });

  describe('rejects a bad value with one exact message naming the variable', () => {
    it.each<[string, Env, string]>([
      [
        'an endpoint that is not a URL',
        { OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' },
        'OTEL_EXPORTER_OTLP_ENDPOINT must be a URL such as http://localhost:4317, got "not a url"',
      ],
      [
        'an endpoint that is not http(s)',
        { OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://x' },
        'OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL, got "ftp://x"',
      ],
      [
        'a traces endpoint that is not a URL',
        { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'localhost:4317' },
        'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http:// or https:// URL, got "localhost:4317"',
      ],
      [
        'an export timeout that is not a number of milliseconds',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TIMEOUT: '10s' },
        'OTEL_EXPORTER_OTLP_TIMEOUT must be a whole number of milliseconds, 1 or more, got "10s"',
      ],
      [
        'an export timeout of 0',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '0' },
        'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT must be a whole number of milliseconds, 1 or more, got "0"',
      ],
      [
        'an unknown exporter',
        { OTEL_TRACES_EXPORTER: 'jaeger' },
        'OTEL_TRACES_EXPORTER: unknown value "jaeger", expected one of otlp, console, none',
      ],
      [
        'an unknown protocol',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http' },
        'OTEL_EXPORTER_OTLP_PROTOCOL: unknown value "http", expected one of grpc, http/protobuf, http/json',
      ],
      [
        'an unknown traces protocol',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'thrift' },
        'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: unknown value "thrift", expected one of grpc, http/protobuf, http/json',
      ],
      [
        'an unknown sampler',
        { OTEL_TRACES_SAMPLER: 'sometimes' },
        'OTEL_TRACES_SAMPLER: unknown value "sometimes", expected one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio',
      ],
      [
        'a sampler ratio above 1',
        { OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' },
        'OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got "2"',
      ],
      [
        'a sampler ratio that is not a number',
        { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: 'half' },
        'OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got "half"',
      ],
      [
        'an unknown propagator',
        { OTEL_PROPAGATORS: 'tracecontext,xray' },
        'OTEL_PROPAGATORS: unknown value "xray", expected one of tracecontext, baggage, b3, b3multi, none',
      ],
      [
        'an unknown resource detector',
        { OTEL_NODE_RESOURCE_DETECTORS: 'env,gcp' },
        'OTEL_NODE_RESOURCE_DETECTORS: unknown value "gcp", expected one of env, host, os, process, serviceinstance, container, aws, all, none',
      ],
      [
        'an unknown log level',
        { OTEL_LOG_LEVEL: 'loud' },
        'OTEL_LOG_LEVEL: unknown value "loud", expected one of none, error, warn, info, debug, verbose, all',
      ],
      [
        'a batch size that is not an integer',
        { OTEL_BSP_MAX_QUEUE_SIZE: '1.5' },
        'OTEL_BSP_MAX_QUEUE_SIZE must be a non-negative integer, got "1.5"',
      ],
      [
        'a batch larger than the queue',
        { OTEL_BSP_MAX_QUEUE_SIZE: '10', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '20' },
        'OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE',
      ],
      [
        'an excluded path without a leading slash',
        { OTEL_NODE_EXCLUDED_URLS: 'healthz' },
        'OTEL_NODE_EXCLUDED_URLS: "healthz" is not a path starting with /',
      ],
      [
        'an unknown compression',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_COMPRESSION: 'zstd' },
        'OTEL_EXPORTER_OTLP_COMPRESSION: unknown value "zstd", expected one of gzip, none',
      ],
      [
        'a traces compression in capitals, which the exporters would ignore',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: 'GZIP' },
        'OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: unknown value "GZIP", expected one of gzip, none',
      ],
      [
        'a timeout with a unit',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TIMEOUT: '10s' },
        'OTEL_EXPORTER_OTLP_TIMEOUT must be a whole number of milliseconds, 1 or more, got "10s"',
      ],
      [
        'a traces timeout of 0, which the exporters would ignore',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '0' },
        'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT must be a whole number of milliseconds, 1 or more, got "0"',
      ],
      [
        'a negative timeout',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TIMEOUT: '-5' },
        'OTEL_EXPORTER_OTLP_TIMEOUT must be a whole number of milliseconds, 1 or more, got "-5"',
      ],
      [
        'a fractional timeout',
        { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '2.5' },
        'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT must be a whole number of milliseconds, 1 or more, got "2.5"',
      ],
      [
        'an unknown metrics exporter',
        { OTEL_METRICS_EXPORTER: 'otlp,statsd' },
        'OTEL_METRICS_EXPORTER: unknown value "statsd", expected one of otlp, prometheus, console, none',
      ],
      [
        'an unknown metrics protocol',
        { OTEL_METRICS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'udp' },
        'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: unknown value "udp", expected one of grpc, http/protobuf, http/json',
      ],
      [
        'a metrics endpoint that is not a URL',
        { OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'collector 4317' },
        'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT must be a URL such as http://localhost:4317, got "collector 4317"',
      ],
      [
        'an unknown temporality preference',
        { OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: 'sometimes' },
        'OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: unknown value "sometimes", expected one of cumulative, delta, lowmemory',
      ],
      [
        'an unknown histogram aggregation',
        { OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION: 'exponential' },
        'OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION: unknown value "exponential", expected one of explicit_bucket_histogram, base2_exponential_bucket_histogram',
      ],
      [
        'an export interval that is not a positive integer',
        { OTEL_METRIC_EXPORT_INTERVAL: '0' },
        'OTEL_METRIC_EXPORT_INTERVAL must be a positive integer (milliseconds), got "0"',
      ],
      [
        'an export timeout that is not an integer',
        { OTEL_METRIC_EXPORT_TIMEOUT: '5s' },
        'OTEL_METRIC_EXPORT_TIMEOUT must be a positive integer (milliseconds), got "5s"',
      ],
      [
        'an export timeout longer than the interval',
        { OTEL_METRIC_EXPORT_INTERVAL: '1000', OTEL_METRIC_EXPORT_TIMEOUT: '5000' },
        'OTEL_METRIC_EXPORT_TIMEOUT (5000) must not exceed OTEL_METRIC_EXPORT_INTERVAL (1000)',
      ],
      [
        'a Prometheus port out of range',
        { OTEL_METRICS_EXPORTER: 'prometheus', OTEL_EXPORTER_PROMETHEUS_PORT: '99999' },
        'OTEL_EXPORTER_PROMETHEUS_PORT must be a port number from 0 to 65535, got "99999"',
      ],
      [
        'a malformed metrics header',
        { OTEL_METRICS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_METRICS_HEADERS: 'novalue' },
        'OTEL_EXPORTER_OTLP_METRICS_HEADERS: entry 1 of 1 is not key=value (values are not shown)',
      ],
      [
        'an unknown logs exporter',
        { OTEL_LOGS_EXPORTER: 'otlp,loki' },
        'OTEL_LOGS_EXPORTER: unknown value "loki", expected one of otlp, console, none',
      ],
      [
        'a logs protocol that is not one',
        { OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_LOGS_PROTOCOL: 'thrift' },
        'OTEL_EXPORTER_OTLP_LOGS_PROTOCOL: unknown value "thrift", expected one of grpc, http/protobuf, http/json',
      ],
      [
        'a logs endpoint that is not a URL',
        { OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: 'not a url' },
        'OTEL_EXPORTER_OTLP_LOGS_ENDPOINT must be a URL such as http://localhost:4317, got "not a url"',
      ],
      [
        'a malformed logs header',
        { OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_LOGS_HEADERS: 'novalue' },
        'OTEL_EXPORTER_OTLP_LOGS_HEADERS: entry 1 of 1 is not key=value (values are not shown)',
      ],
      [
        'a logs timeout that is not a number of milliseconds',
        { OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_LOGS_TIMEOUT: '10s' },
        'OTEL_EXPORTER_OTLP_LOGS_TIMEOUT must be a whole number of milliseconds, 1 or more, got "10s"',
      ],
      [
        'an unknown logs compression',
        { OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_LOGS_COMPRESSION: 'zstd' },
        'OTEL_EXPORTER_OTLP_LOGS_COMPRESSION: unknown value "zstd", expected one of gzip, none',
      ],
      [
        'a log batch delay that is not an integer',
        { OTEL_BLRP_SCHEDULE_DELAY: '1s' },
        'OTEL_BLRP_SCHEDULE_DELAY must be a non-negative integer, got "1s"',
      ],
      [
        'a log batch larger than the log queue',
        { OTEL_BLRP_MAX_QUEUE_SIZE: '10', OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: '20' },
        'OTEL_BLRP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BLRP_MAX_QUEUE_SIZE',
      ],
      [
        'an empty log queue',
        { OTEL_BLRP_MAX_QUEUE_SIZE: '0', OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: '0' },
        'OTEL_BLRP_MAX_QUEUE_SIZE and OTEL_BLRP_MAX_EXPORT_BATCH_SIZE must be 1 or more',
      ],
      [
        'a log export timeout that is not an integer',
        { OTEL_BLRP_EXPORT_TIMEOUT: '-1' },
        'OTEL_BLRP_EXPORT_TIMEOUT must be a non-negative integer, got "-1"',
      ],
      [
        'an instrumentation name that is not one',
        { OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'HTTP' },
        'OTEL_NODE_ENABLED_INSTRUMENTATIONS/OTEL_NODE_DISABLED_INSTRUMENTATIONS: "HTTP" is not an instrumentation name such as http or pg',
      ],
    ])('%s', (_case, env, message) => {
      expect(() => readSettings(env)).toThrow(new TelemetryConfigError(message));
      expect(() => readSettings(env)).toThrow(TelemetryConfigError);
    });
  });

  it('does not show the credentials of an endpoint it cannot parse', () => {
    const error = errorFrom(() => readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: `https://user:${SECRET}@host:bad` }));
    expect(error).toBeInstanceOf(TelemetryConfigError);
    expect(error.message).toBe('OTEL_EXPORTER_OTLP_ENDPOINT must be a URL such as http://localhost:4317, got "(not shown: it may hold credentials)"');
    expect(error.message).not.toContain(SECRET);
    expect(error.message).not.toContain('user');
  });

  it('does not show the credentials of an endpoint with the wrong scheme', () => {
    const error = errorFrom(() => readSettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `ftp://user:${SECRET}@host` }));
    expect(error.message).toBe('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http:// or https:// URL, got "(not shown: it may hold credentials)"');
    expect(error.message).not.toContain(SECRET);
  });

  it.each([`https://user:abc/${SECRET}@host`, `https://user:p@${SECRET}@host:bad`])(
    'does not show a password holding "/" or "@" in %s',
    (endpoint) => {
      const error = errorFrom(() => readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint }));
      expect(error).toBeInstanceOf(TelemetryConfigError);
      expect(error.message).not.toContain(SECRET);
    },
  );

  it('appends /v1/traces to the path of a base endpoint that has a query', () => {
    const settings = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otlp.example.com/?tenant=a',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    });
    expect(settings.otlp?.url).toBe('https://otlp.example.com/v1/traces?tenant=a');
  });

  it('does not show a header value that cannot be parsed', () => {
    const error = errorFrom(() =>
      readSettings({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_HEADERS: `authorization=${SECRET}%E0%A4%A` }),
    );
    expect(error).toBeInstanceOf(TelemetryConfigError);
    expect(error.message).not.toContain(SECRET);
    expect(error.message).toContain('OTEL_EXPORTER_OTLP_TRACES_HEADERS');
  });
});

describe('readSettings: metrics', () => {
  it('exports no metrics without an endpoint, so nothing retries against a missing collector', () => {
    expect(readSettings({}).metrics.exporters).toEqual([]);
    expect(readSettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://localhost:4317' }).metrics.exporters).toEqual([]);
  });

  it('sends metrics over OTLP/gRPC to the base endpoint, as the traces', () => {
    const { metrics } = readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317' });
    expect(metrics.exporters).toEqual(['otlp']);
    expect(metrics.otlp).toEqual({ protocol: 'grpc', url: 'http://collector:4317/', headers: {}, timeoutMillis: 10000 });
  });

  it('appends /v1/metrics for HTTP and prefers the metrics-specific protocol, endpoint and headers', () => {
    const http = readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otlp.example.com/base/', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' });
    expect(http.metrics.otlp?.url).toBe('https://otlp.example.com/base/v1/metrics');
    expect(http.otlp?.url).toBe('https://otlp.example.com/base/v1/traces');
    const specific = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://localhost:4317',
      OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'https://metrics.example.com/custom',
      OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json',
      OTEL_EXPORTER_OTLP_HEADERS: 'a=1,b=2',
      OTEL_EXPORTER_OTLP_METRICS_HEADERS: 'b=3',
    });
    expect(specific.metrics.otlp).toEqual({ protocol: 'http/json', url: 'https://metrics.example.com/custom', headers: { a: '1', b: '3' }, timeoutMillis: 10000 });
    expect(specific.otlp).toMatchObject({ protocol: 'grpc', headers: { a: '1', b: '2' } });
  });

  it('turns metrics on with only a metrics endpoint', () => {
    const { metrics, exporters } = readSettings({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://localhost:4317' });
    expect(metrics.exporters).toEqual(['otlp']);
    expect(exporters).toEqual(['console']);
  });

  it('reads exporter lists, none, temporality, timing and the Prometheus address', () => {
    const settings = readSettings({
      OTEL_METRICS_EXPORTER: ' prometheus , console,prometheus',
      OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: 'Delta',
      OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION: 'Base2_Exponential_Bucket_Histogram',
      OTEL_METRIC_EXPORT_INTERVAL: '10000',
      OTEL_METRIC_EXPORT_TIMEOUT: '5000',
      OTEL_EXPORTER_PROMETHEUS_HOST: '0.0.0.0',
      OTEL_EXPORTER_PROMETHEUS_PORT: '9100',
    });
    expect(settings.metrics).toEqual({
      exporters: ['prometheus', 'console'],
      otlp: undefined,
      temporality: 'delta',
      histogramAggregation: 'base2_exponential_bucket_histogram',
      exportIntervalMillis: 10000,
      exportTimeoutMillis: 5000,
      prometheus: { host: '0.0.0.0', port: 9100 },
    });
    expect(readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4317', OTEL_METRICS_EXPORTER: 'otlp,none' }).metrics.exporters).toEqual([]);
  });

  it('shortens the default timeout to a shorter interval', () => {
    const { metrics } = readSettings({ OTEL_METRIC_EXPORT_INTERVAL: '1000' });
    expect(metrics).toMatchObject({ exportIntervalMillis: 1000, exportTimeoutMillis: 1000 });
  });

  it('turns metrics off with the SDK', () => {
    const settings = readSettings({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4317', OTEL_METRICS_EXPORTER: 'otlp' });
    expect(settings.metrics.exporters).toEqual([]);
  });

  it('masks the metrics header values with the others', () => {
    expect(secretsIn({ OTEL_EXPORTER_OTLP_METRICS_HEADERS: `authorization=Bearer%20${SECRET}` })).toEqual([`Bearer%20${SECRET}`, `Bearer ${SECRET}`]);
  });

  it('does not show a metrics header value that cannot be parsed', () => {
    const error = errorFrom(() => readSettings({ OTEL_METRICS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_METRICS_HEADERS: `authorization=${SECRET}%E0%A4%A` }));
    expect(error).toBeInstanceOf(TelemetryConfigError);
    expect(error.message).not.toContain(SECRET);
    expect(error.message).toContain('OTEL_EXPORTER_OTLP_METRICS_HEADERS');
  });
});

describe('parseHeaders', () => {
  const NAME = 'OTEL_EXPORTER_OTLP_HEADERS';

  it('returns no headers for an undefined value', () => {
    expect(parseHeaders(NAME, undefined)).toEqual({});
  });

  it('decodes percent-encoded values and lowercases keys', () => {
    expect(parseHeaders(NAME, 'Authorization=Basic%20abc')).toEqual({ authorization: 'Basic abc' });
  });

  it('reads several entries', () => {
    expect(parseHeaders(NAME, 'a=1,B=two,x-api-key=k%3Dv')).toEqual({ a: '1', b: 'two', 'x-api-key': 'k=v' });
  });

  it('keeps everything after the first = in the value', () => {
    expect(parseHeaders(NAME, 'authorization=Basic dXNlcjpwYXNz==')).toEqual({ authorization: 'Basic dXNlcjpwYXNz==' });
  });

  it('trims whitespace around keys and values', () => {
    expect(parseHeaders(NAME, '  a = 1 ,  b=2  ')).toEqual({ a: '1', b: '2' });
  });

  it('accepts a trailing comma and empty entries', () => {
    expect(parseHeaders(NAME, 'a=1,,b=2,')).toEqual({ a: '1', b: '2' });
  });

  it('lets a later entry override an earlier one with the same key in another case', () => {
    expect(parseHeaders(NAME, 'X-Key=1,x-key=2')).toEqual({ 'x-key': '2' });
  });

  it('accepts an empty value', () => {
    expect(parseHeaders(NAME, 'a=')).toEqual({ a: '' });
  });

  describe('rejects a malformed entry, naming the variable and never the value', () => {
    it.each<[string, string, string]>([
      ['an entry without =', `${SECRET}`, `${NAME}: entry 1 of 1 is not key=value (values are not shown)`],
      ['an entry with a colon instead of =', `authorization: Bearer ${SECRET}`, `${NAME}: entry 1 of 1 is not key=value (values are not shown)`],
      ['an entry without a key', `=${SECRET}`, `${NAME}: entry 1 of 1 is not key=value (values are not shown)`],
      ['the second of three entries without =', `a=1,${SECRET},b=2`, `${NAME}: entry 2 of 3 is not key=value (values are not shown)`],
      [
        'a value with a malformed percent-encoding',
        `a=${SECRET}%E0%A4%A`,
        `${NAME}: the value of header "a" has a malformed percent-encoding (value not shown)`,
      ],
      ['a key with a malformed percent-encoding', `a%ZZ=${SECRET}`, `${NAME}: entry 1 of 1 has a malformed percent-encoding in its key`],
      ['a key with a space', `my key=${SECRET}`, `${NAME}: entry 1 of 1 has an invalid header name`],
      ['a key with an encoded space', `my%20key=${SECRET}`, `${NAME}: entry 1 of 1 has an invalid header name`],
      [
        'a value with an encoded line break',
        `a=${SECRET}%0D%0AX-Injected: 1`,
        `${NAME}: the value of header "a" has characters other than printable ASCII (value not shown)`,
      ],
      [
        'a value with an encoded NUL',
        `a=${SECRET}%00`,
        `${NAME}: the value of header "a" has characters other than printable ASCII (value not shown)`,
      ],
    ])('%s', (_case, value, message) => {
      const error = errorFrom(() => parseHeaders(NAME, value));
      expect(error).toBeInstanceOf(TelemetryConfigError);
      expect(error.message).toBe(message);
      expect(error.message).toContain(NAME);
      expect(error.message).not.toContain(SECRET);
      expect(error.message).not.toContain('S3CR3T');
    });
  });
});

describe('parseHeaders and the exporters agree', () => {
  it('rejects a raw ";" that the exporters would read as the start of baggage metadata', () => {
    expect(() => parseHeaders('OTEL_EXPORTER_OTLP_HEADERS', 'authorization=Bearer a;b-S3CR3T')).toThrow(
      'OTEL_EXPORTER_OTLP_HEADERS: entry 1 of 1 has a raw ";"; write it as %3B (value not shown)',
    );
  });

  it('keeps "=" padding after the first "="', () => {
    expect(parseHeaders('OTEL_EXPORTER_OTLP_HEADERS', 'authorization=Basic%20dXNlcjpwYQ==')).toEqual({ authorization: 'Basic dXNlcjpwYQ==' });
  });
});

describe('readSettings: logs', () => {
  it('exports no log records without an endpoint: the lines on stdout are the log', () => {
    expect(readSettings({}).logs.exporters).toEqual([]);
    expect(readSettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://localhost:4317' }).logs.exporters).toEqual([]);
  });

  it('sends log records over OTLP/gRPC to the base endpoint, with the spec\'s batch defaults', () => {
    const { logs } = readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317' });
    expect(logs).toEqual({
      exporters: ['otlp'],
      otlp: { protocol: 'grpc', url: 'http://collector:4317/', headers: {}, timeoutMillis: 10000 },
      batch: { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMillis: 1000, exportTimeoutMillis: 30000 },
    });
  });

  it('appends /v1/logs for HTTP and prefers the logs-specific protocol, endpoint, headers and timeout', () => {
    const http = readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otlp.example.com/base/', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' });
    expect(http.logs.otlp?.url).toBe('https://otlp.example.com/base/v1/logs');
    const specific = readSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://localhost:4317',
      OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: 'https://logs.example.com/custom',
      OTEL_EXPORTER_OTLP_LOGS_PROTOCOL: 'http/json',
      OTEL_EXPORTER_OTLP_HEADERS: 'a=1,b=2',
      OTEL_EXPORTER_OTLP_LOGS_HEADERS: 'b=3',
      OTEL_EXPORTER_OTLP_LOGS_TIMEOUT: '2500',
    });
    expect(specific.logs.otlp).toEqual({ protocol: 'http/json', url: 'https://logs.example.com/custom', headers: { a: '1', b: '3' }, timeoutMillis: 2500 });
    expect(specific.otlp).toMatchObject({ protocol: 'grpc', headers: { a: '1', b: '2' }, timeoutMillis: 10000 });
  });

  it('reads the exporter list, none, and the OTEL_BLRP_* batch settings', () => {
    const settings = readSettings({
      OTEL_LOGS_EXPORTER: 'console',
      OTEL_BLRP_SCHEDULE_DELAY: '200',
      OTEL_BLRP_MAX_QUEUE_SIZE: '100',
      OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: '10',
      OTEL_BLRP_EXPORT_TIMEOUT: '5000',
    });
    expect(settings.logs).toEqual({
      exporters: ['console'],
      otlp: undefined,
      batch: { maxQueueSize: 100, maxExportBatchSize: 10, scheduledDelayMillis: 200, exportTimeoutMillis: 5000 },
    });
    expect(readSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4317', OTEL_LOGS_EXPORTER: 'otlp,none' }).logs.exporters).toEqual([]);
  });

  it('turns logs off with the SDK', () => {
    expect(readSettings({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4317', OTEL_LOGS_EXPORTER: 'otlp' }).logs.exporters).toEqual([]);
  });

  it('masks the logs header values with the others', () => {
    expect(secretsIn({ OTEL_EXPORTER_OTLP_LOGS_HEADERS: `authorization=Bearer%20${SECRET}` })).toEqual([`Bearer%20${SECRET}`, `Bearer ${SECRET}`]);
  });

  it('does not show a logs header value that cannot be parsed', () => {
    const error = errorFrom(() => readSettings({ OTEL_LOGS_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_LOGS_HEADERS: `authorization=${SECRET}%E0%A4%A` }));
    expect(error).toBeInstanceOf(TelemetryConfigError);
    expect(error.message).not.toContain(SECRET);
    expect(error.message).toContain('OTEL_EXPORTER_OTLP_LOGS_HEADERS');
  });
});
