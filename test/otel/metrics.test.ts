/**
 * Metrics from the preload where it runs: in a child process started with
 * `node -r`, exporting to a real OTLP receiver; and the metric exporter's
 * outage reporting in-process.
 */
import path from 'node:path';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { AggregationTemporality, type PushMetricExporter, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { ReportingMetricExporter } from '../../otel/metrics';
import { startReceiver, type OtlpReceiver, type ReceivedMetric } from '../helpers/otlpReceiver';
import { FIXTURES, listeningPort, SERVER, startChild, type Child } from '../helpers/child';
import { get } from '../helpers/load';

jest.setTimeout(60_000);

let receiver: OtlpReceiver;
const children: Child[] = [];

function start(script: string, env: Record<string, string>): Child {
  const child = startChild(script, env);
  children.push(child);
  return child;
}

function startServer(env: Record<string, string>): Child {
  return start(SERVER, { HOST: '127.0.0.1', PORT: '0', ...env });
}

beforeAll(async () => {
  receiver = await startReceiver();
});

afterEach(async () => {
  await Promise.all(children.splice(0).map((child) => child.stop()));
  receiver.setFailure('none');
  receiver.reset();
});

afterAll(async () => {
  await receiver.close();
});

const SECRET = 'bWV0cmljcy10b2tlbi0xMjM0NQ';
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

function of(metrics: ReceivedMetric[], pid: number | undefined, name: string): ReceivedMetric[] {
  return metrics.filter((m) => m.name === name && m.resource['process.pid'] === pid);
}

/** The last data point of each attribute set (cumulative: the latest totals). */
function latest(points: ReceivedMetric[]): ReceivedMetric[] {
  const byKey = new Map<string, ReceivedMetric>();
  for (const point of points) byKey.set(JSON.stringify(Object.entries(point.attributes).sort()), point);
  return [...byKey.values()];
}

describe('OTLP metrics', () => {
  test('the HTTP server histogram, runtime and health metrics reach the collector over gRPC, flushed at SIGINT', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'metrics-grpc',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      // Only the shutdown flush can deliver within the test.
      OTEL_METRIC_EXPORT_INTERVAL: '60000',
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    for (const id of [1, 2, 3]) expect((await get(port, `/items/${id}`)).status).toBe(200);
    expect((await get(port, '/items/x')).status).toBe(422);
    expect((await get(port, '/no/such/path')).status).toBe(404);
    expect((await get(port, '/healthz')).status).toBe(200);
    expect(receiver.metrics).toHaveLength(0);

    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    const pid = child.process.pid;
    const duration = of(receiver.metrics, pid, 'http.server.request.duration');
    expect(duration[0]).toMatchObject({ type: 'histogram', unit: 's', temporality: 2, explicitBounds: BUCKETS, scope: 'koa-pm2-otel/http-server' });
    const points = duration.map((p) => [p.attributes, p.count]);
    const base = { 'http.request.method': 'GET', 'url.scheme': 'http' };
    expect(points).toEqual(
      expect.arrayContaining([
        [{ ...base, 'http.route': '/items/:id', 'http.response.status_code': 200 }, 3],
        [{ ...base, 'http.route': '/items/:id', 'http.response.status_code': 422 }, 1],
        // No route matched: no http.route, never the raw path.
        [{ ...base, 'http.response.status_code': 404 }, 1],
        // Excluded from traces, counted in metrics.
        [{ ...base, 'http.route': '/healthz', 'http.response.status_code': 200 }, 1],
      ]),
    );
    expect(points).toHaveLength(4);
    expect(duration[0]?.resource).toMatchObject({ 'service.name': 'metrics-grpc', 'process.pid': pid });
    expect(duration[0]?.resource['service.instance.id']).toEqual(expect.any(String));
    // Traces and metrics describe the same process.
    const span = receiver.spans.find((s) => s.kind === 2);
    expect(span?.resource['service.instance.id']).toBe(duration[0]?.resource['service.instance.id']);

    expect(of(receiver.metrics, pid, 'http.server.active_requests')).toEqual([
      expect.objectContaining({ type: 'sum', monotonic: false, attributes: base, value: 0 }),
    ]);
    // Event-loop delay needs 5 samples of 10 ms first: see the next test.
    for (const name of ['nodejs.eventloop.utilization', 'v8js.memory.heap.used']) {
      expect([name, of(receiver.metrics, pid, name).length > 0]).toEqual([name, true]);
    }
    const component = { 'otel.component.type': 'otlp_grpc_span_exporter', 'otel.component.name': 'otlp_grpc_span_exporter/0' };
    expect(of(receiver.metrics, pid, 'otel.sdk.exporter.span.exported').map((p) => p.attributes)).toEqual(
      expect.arrayContaining([component, { ...component, 'error.type': 'dropped' }]),
    );
    expect(of(receiver.metrics, pid, 'otel.sdk.exporter.span.inflight').map((p) => [p.attributes, p.type])).toEqual([[component, 'sum']]);
    // The log record exporter's health, by the same conventions (logs go where the endpoint is too).
    const logs = { 'otel.component.type': 'otlp_grpc_log_exporter', 'otel.component.name': 'otlp_grpc_log_exporter/0' };
    expect(of(receiver.metrics, pid, 'otel.sdk.exporter.log.exported').map((p) => [p.attributes, p.unit])).toEqual(
      expect.arrayContaining([
        [logs, '{log_record}'],
        [{ ...logs, 'error.type': 'dropped' }, '{log_record}'],
      ]),
    );
    expect(of(receiver.metrics, pid, 'otel.sdk.exporter.log.inflight').map((p) => [p.attributes, p.type])).toEqual([[logs, 'sum']]);
    expect(receiver.metricRequests.every((r) => r.transport === 'grpc')).toBe(true);
  });

  test('sends over http/protobuf with the metrics header, counts delivered spans, and never prints the header', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'metrics-http',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl,
      OTEL_EXPORTER_OTLP_METRICS_HEADERS: `Authorization=Bearer%20${SECRET}`,
      OTEL_METRIC_EXPORT_INTERVAL: '300',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_LOG_LEVEL: 'debug',
    });
    const port = await listeningPort(child);
    for (const id of [1, 2]) await get(port, `/items/${id}`);
    const pid = child.process.pid;
    // Spans delivered are counted once their export finished: at least the two requests'.
    await receiver.waitForMetrics(
      (metrics) =>
        of(metrics, pid, 'otel.sdk.exporter.span.exported').some((p) => p.attributes['error.type'] === undefined && p.value >= 2) &&
        of(metrics, pid, 'nodejs.eventloop.delay.p99').length > 0,
      20_000,
    );
    expect(latest(of(receiver.metrics, pid, 'nodejs.eventloop.delay.p99'))[0]).toMatchObject({ type: 'gauge', unit: 's' });
    const request = receiver.metricRequests.find((r) => r.transport === 'http');
    expect(request?.headers.authorization).toBe(`Bearer ${SECRET}`);
    expect(request?.headers['content-type']).toBe('application/x-protobuf');
    const duration = latest(of(receiver.metrics, pid, 'http.server.request.duration'));
    expect(duration.map((p) => [p.attributes['http.route'], p.count])).toEqual([['/items/:id', 2]]);
    const exported = latest(of(receiver.metrics, pid, 'otel.sdk.exporter.span.exported'));
    expect(exported.map((p) => p.attributes['otel.component.type'])).toEqual(['otlp_http_span_exporter', 'otlp_http_span_exporter']);
    child.process.kill('SIGINT');
    await child.exited;
    expect(child.stdout() + child.stderr()).not.toContain(SECRET);
  });

  test('the server histogram follows the exporter\'s temporality and histogram aggregation, as the SDK\'s would', async () => {
    const child = startServer({
      OTEL_SERVICE_NAME: 'metrics-aggregation',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_METRIC_EXPORT_INTERVAL: '60000',
      OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: 'delta',
      OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION: 'base2_exponential_bucket_histogram',
    });
    const port = await listeningPort(child);
    for (const id of [1, 2]) expect((await get(port, `/items/${id}`)).status).toBe(200);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    const duration = of(receiver.metrics, child.process.pid, 'http.server.request.duration');
    // The kit's own aggregation gives explicit buckets only: the exporter asked for exponential ones, so the SDK's histogram made these.
    expect(duration.map((p) => [p.type, p.temporality, p.count, p.attributes['http.route']])).toEqual([['exponential_histogram', 1, 2, '/items/:id']]);

    const explicit = startServer({ OTEL_SERVICE_NAME: 'metrics-delta', OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_METRIC_EXPORT_INTERVAL: '60000', OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: 'delta' });
    const explicitPort = await listeningPort(explicit);
    for (const id of [1, 2, 3]) expect((await get(explicitPort, `/items/${id}`)).status).toBe(200);
    explicit.process.kill('SIGINT');
    expect(await explicit.exited).toEqual({ code: 0, signal: null });
    expect(of(receiver.metrics, explicit.process.pid, 'http.server.request.duration').map((p) => [p.type, p.temporality, p.count, p.explicitBounds])).toEqual([['histogram', 1, 3, BUCKETS]]);
  });

  test('outgoing calls give http.client.request.duration', async () => {
    const child = start(path.join(FIXTURES, 'outgoing.js'), {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_METRIC_EXPORT_INTERVAL: '60000',
    });
    const port = Number((await child.waitForLine(/^READY \d+/)).split(' ')[1]);
    await get(port, '/');
    child.process.kill('SIGTERM');
    await child.exited;
    const client = of(receiver.metrics, child.process.pid, 'http.client.request.duration');
    expect(client.map((p) => p.scope).sort()).toEqual(['@opentelemetry/instrumentation-http', '@opentelemetry/instrumentation-undici']);
    expect(client.every((p) => p.unit === 's' && p.count === 1 && p.attributes['http.response.status_code'] === 200)).toBe(true);
  });
});

describe('metrics off', () => {
  test('OTEL_METRICS_EXPORTER=none sends no metrics, while the same shutdown flushes the spans', async () => {
    const child = startServer({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_METRIC_EXPORT_INTERVAL: '60000',
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    await get(port, '/items/1');
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    // The marker: the flush at SIGINT that would have carried metrics delivered the span.
    expect(receiver.spans.filter((s) => s.kind === 2)).toHaveLength(1);
    expect(receiver.metricRequests).toHaveLength(0);
  });

  test('no endpoint, no metrics exporter: nothing is sent anywhere', async () => {
    const child = startServer({ OTEL_METRIC_EXPORT_INTERVAL: '100', OTEL_BSP_SCHEDULE_DELAY: '60000' });
    const port = await listeningPort(child);
    await get(port, '/items/1');
    child.process.kill('SIGINT');
    await child.exited;
    // The console span exporter ran and flushed; no metric was printed.
    expect(child.stdout()).toContain('otel.span ');
    expect(child.stdout()).not.toContain('http.server.request.duration');
  });

  test('OTEL_SDK_DISABLED=true sends nothing, while a process with metrics on sends within the same time', async () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_METRIC_EXPORT_INTERVAL: '200' };
    const disabled = startServer({ ...env, OTEL_SDK_DISABLED: 'true' });
    const enabled = startServer(env);
    const [disabledPort, enabledPort] = await Promise.all([listeningPort(disabled), listeningPort(enabled)]);
    await get(disabledPort, '/items/1');
    await get(enabledPort, '/items/1');
    disabled.process.kill('SIGINT');
    await disabled.exited;
    // The marker: the enabled process exported twice since (interval 200 ms).
    const since = receiver.metricRequests.length;
    await receiver.waitForMetrics(() => receiver.metricRequests.length >= since + 2, 20_000);
    const pids = new Set(receiver.metrics.map((m) => m.resource['process.pid']));
    expect(pids).toEqual(new Set([enabled.process.pid]));
    expect(disabled.stderr()).toBe('');
  });
});

describe('a bad metrics setting', () => {
  test.each([
    ['OTEL_METRICS_EXPORTER', { OTEL_METRICS_EXPORTER: 'otlp,statsd' }],
    ['OTEL_METRIC_EXPORT_INTERVAL', { OTEL_METRIC_EXPORT_INTERVAL: '10s' }],
    ['OTEL_EXPORTER_OTLP_METRICS_HEADERS', { OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://127.0.0.1:4317', OTEL_EXPORTER_OTLP_METRICS_HEADERS: `Authorization Bearer ${SECRET}` }],
  ])('%s yields one clear line and a serving, uninstrumented app', async (variable, env) => {
    const child = startServer(env);
    const port = await listeningPort(child);
    expect((await get(port, '/')).status).toBe(200);
    const lines = child.stderr().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(variable);
    expect(lines[0]).toContain('telemetry is off');
    expect(child.stderr()).not.toContain(SECRET);
    child.process.kill('SIGINT');
    await child.exited;
  });
});

describe('a collector outage', () => {
  test('holds nothing, logs two lines, and the totals catch up when it is back', async () => {
    receiver.setFailure('unavailable');
    const child = startServer({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
      OTEL_METRIC_EXPORT_INTERVAL: '250',
      OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: '200',
    });
    const port = await listeningPort(child);
    let sent = 0;
    const until = Date.now() + 3000;
    while (Date.now() < until || receiver.metricRequests.length < 5) {
      await get(port, `/items/${sent}`);
      sent += 1;
    }
    const refused = receiver.metricRequests.length;
    expect(refused).toBeGreaterThanOrEqual(5);
    receiver.setFailure('none');
    const pid = child.process.pid;
    const counted = (all: ReceivedMetric[]): number => latest(of(all, pid, 'http.server.request.duration')).reduce((n, p) => n + p.count, 0);
    // The last response's count may miss the first export after it (the client can read it before the server's 'close'): wait.
    const metrics = await receiver.waitForMetrics((all) => counted(all) >= sent, 20_000);
    // One snapshot a request, not a backlog of the failed intervals.
    const first = receiver.metricRequests.find((r) => r.accepted);
    const later = await receiver.waitForMetrics(() => receiver.metricRequests.filter((r) => r.accepted).length >= 3, 20_000);
    expect(later.length).toBeGreaterThan(0);
    const accepted = receiver.metricRequests.filter((r) => r.accepted);
    expect(first?.dataPointCount).toBeLessThanOrEqual(Math.max(...accepted.slice(1).map((r) => r.dataPointCount)));
    // Cumulative totals: every request is counted once the collector is back.
    expect(counted(metrics)).toBe(sent);

    await receiver.waitForMetrics(() => child.stderr().includes('recovered'), 10_000).catch(() => undefined);
    const lines = child.stderr().trim().split('\n').filter((line) => line !== '');
    expect(lines.filter((line) => line.includes('cannot export metrics'))).toHaveLength(1);
    expect(lines.filter((line) => line.includes('metrics export to') && line.includes('recovered'))).toHaveLength(1);
    expect(lines.length).toBeLessThanOrEqual(3);
    child.process.kill('SIGINT');
    await child.exited;
  });
});

describe('ReportingMetricExporter', () => {
  /** An inner exporter whose next results the test sets; counts the instances made. */
  function fakes(): { make: () => PushMetricExporter; results: ExportResult[]; made: number; shutdowns: number } {
    const state = { results: [] as ExportResult[], made: 0, shutdowns: 0, make: (): PushMetricExporter => undefined as unknown as PushMetricExporter };
    state.make = () => {
      state.made += 1;
      return {
        export: (_metrics, callback) => callback(state.results.shift() ?? { code: ExportResultCode.SUCCESS }),
        forceFlush: () => Promise.resolve(),
        shutdown: () => {
          state.shutdowns += 1;
          return Promise.resolve();
        },
        selectAggregationTemporality: () => AggregationTemporality.CUMULATIVE,
      };
    };
    return state;
  }

  const batch = {} as ResourceMetrics;

  function exportOnce(exporter: ReportingMetricExporter): ExportResult {
    let result: ExportResult | undefined;
    exporter.export(batch, (r) => (result = r));
    if (result === undefined) throw new Error('no result');
    return result;
  }

  it('reports an outage once when it starts and once when it ends, and takes a fresh exporter after each failure', () => {
    const inner = fakes();
    const lines: string[] = [];
    const exporter = new ReportingMetricExporter(inner.make(), { target: 'http://collector:4317', report: (level, message) => lines.push(`${level} ${message}`), renew: inner.make });
    const failure = { code: ExportResultCode.FAILED, error: new Error('14 UNAVAILABLE: no connection\nstack') };
    inner.results.push(failure, failure, failure);
    for (let i = 0; i < 4; i += 1) expect(exportOnce(exporter)).toEqual({ code: ExportResultCode.SUCCESS });
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe('warn cannot export metrics to http://collector:4317: 14 UNAVAILABLE: no connection; trying again at each interval');
    expect(lines[1]).toMatch(/^info metrics export to http:\/\/collector:4317 recovered after \d+\.\d s \(3 exports failed\)$/);
    expect(inner.made).toBe(4);
    expect(inner.shutdowns).toBe(3);
    expect(exporter.selectAggregationTemporality('HISTOGRAM' as never)).toBe(AggregationTemporality.CUMULATIVE);
  });

  it('reports a flapping collector at most once per 30 s', () => {
    const inner = fakes();
    const lines: string[] = [];
    const exporter = new ReportingMetricExporter(inner.make(), { target: 'x', report: (_level, message) => lines.push(message) });
    for (let i = 0; i < 10; i += 1) {
      inner.results.push({ code: ExportResultCode.FAILED, error: new Error('down') });
      exportOnce(exporter);
      exportOnce(exporter);
    }
    expect(lines).toHaveLength(2);
  });
});
