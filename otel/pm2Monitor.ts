/**
 * Shows a worker's key metrics in `pm2 monit` and `pm2 describe`, through
 * PM2's own channel and without its agent.
 *
 * PM2's daemon stores whatever a worker sends as an `axm:monitor` process
 * message (`{ type: 'axm:monitor', data: { <name>: { value, unit } } }`) in
 * the worker's `pm2_env.axm_monitor`, which `pm2 monit`, `pm2 describe` and
 * `pm2 jlist` show (pm2 `lib/Daemon.js`, `lib/God/ClusterMode.js`). That is
 * the protocol of `@pm2/io`'s metric API, which the kit does not load
 * (`pmx: false`: the agent would also wrap `http.Server`); the message needs
 * nothing but the IPC channel PM2 opens to each worker.
 *
 * This is a metric reader like the exporters': it collects the same
 * instruments every few seconds and turns them into the few figures a
 * console can show: request rate and mean latency over the last period,
 * requests in flight, event-loop delay, heap, and the span exporters' counts.
 */
import type { DataPoint, Histogram, MetricData, ResourceMetrics } from '@opentelemetry/sdk-metrics';

const { MetricReader, DataPointType } = require('@opentelemetry/sdk-metrics') as typeof import('@opentelemetry/sdk-metrics');

export interface Probe {
  readonly value: number | string;
  readonly unit?: string;
}

type Send = (message: { type: 'axm:monitor'; data: Record<string, Probe> }) => void;

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

function points(metric: MetricData): Array<DataPoint<unknown>> {
  return metric.dataPoints as Array<DataPoint<unknown>>;
}

function sumOf(metric: MetricData | undefined, filter: (attributes: DataPoint<unknown>['attributes']) => boolean = () => true): number | undefined {
  if (metric === undefined) return undefined;
  let total = 0;
  for (const point of points(metric)) if (filter(point.attributes) && typeof point.value === 'number') total += point.value;
  return total;
}

/**
 * Turns one collection into PM2 probes. `previous` holds the cumulative
 * request count and duration sum of the last collection, for rates.
 */
export function toProbes(resourceMetrics: ResourceMetrics, previous: { at: number; count: number; sum: number } | undefined, now: number): { probes: Record<string, Probe>; totals: { at: number; count: number; sum: number } } {
  const byName = new Map<string, MetricData>();
  for (const scope of resourceMetrics.scopeMetrics) for (const metric of scope.metrics) byName.set(metric.descriptor.name, metric);

  let count = 0;
  let sum = 0;
  const duration = byName.get('http.server.request.duration');
  if (duration?.dataPointType === DataPointType.HISTOGRAM) {
    for (const point of duration.dataPoints as Array<DataPoint<Histogram>>) {
      count += point.value.count;
      sum += point.value.sum ?? 0;
    }
  }
  const probes: Record<string, Probe> = {};
  if (previous !== undefined && now > previous.at) {
    const requests = count - previous.count;
    probes['HTTP req/s'] = { value: round((requests * 1000) / (now - previous.at), 1), unit: 'req/s' };
    probes['HTTP mean latency'] = { value: requests > 0 ? round(((sum - previous.sum) / requests) * 1000, 2) : 0, unit: 'ms' };
  }
  const active = sumOf(byName.get('http.server.active_requests'));
  if (active !== undefined) probes['HTTP active'] = { value: active, unit: 'req' };
  const delay = sumOf(byName.get('nodejs.eventloop.delay.p99'));
  if (delay !== undefined) probes['Event loop delay p99'] = { value: round(delay * 1000, 2), unit: 'ms' };
  const utilization = sumOf(byName.get('nodejs.eventloop.utilization'));
  if (utilization !== undefined) probes['Event loop utilization'] = { value: round(utilization * 100, 1), unit: '%' };
  const heap = sumOf(byName.get('v8js.memory.heap.used'));
  if (heap !== undefined) probes['Heap used'] = { value: round(heap / 1048576, 1), unit: 'MiB' };
  const exported = byName.get('otel.sdk.exporter.span.exported');
  if (exported !== undefined) {
    probes['Spans exported'] = { value: sumOf(exported, (attributes) => attributes['error.type'] === undefined) ?? 0, unit: 'spans' };
    probes['Spans dropped'] = { value: sumOf(exported, (attributes) => attributes['error.type'] !== undefined) ?? 0, unit: 'spans' };
  }
  const held = sumOf(byName.get('otel.sdk.exporter.span.inflight'));
  if (held !== undefined) probes['Spans held'] = { value: held, unit: 'spans' };
  return { probes, totals: { at: now, count, sum } };
}

/** Sends the probes to PM2 every `intervalMs` (cumulative temporality: rates are computed here). */
export class Pm2MonitorReader extends MetricReader {
  private timer: NodeJS.Timeout | undefined;
  private previous: { at: number; count: number; sum: number } | undefined;

  constructor(
    private readonly send: Send,
    private readonly intervalMs = 2000,
  ) {
    super();
  }

  protected override onInitialized(): void {
    this.timer = setInterval(() => void this.report(), this.intervalMs);
    // The monitor must never keep a finished worker alive.
    this.timer.unref();
  }

  private async report(): Promise<void> {
    try {
      const { resourceMetrics } = await this.collect();
      const { probes, totals } = toProbes(resourceMetrics, this.previous, Date.now());
      this.previous = totals;
      if (Object.keys(probes).length > 0) this.send({ type: 'axm:monitor', data: probes });
    } catch {
      // The channel to PM2 is gone (the worker is stopping): nothing to show.
    }
  }

  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }

  protected override onShutdown(): Promise<void> {
    clearInterval(this.timer);
    return Promise.resolve();
  }
}
