import { DataPointType, type MetricData, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { toProbes } from '../../otel/pm2Monitor';

function sum(name: string, points: Array<[number, Record<string, string>]>): MetricData {
  return {
    descriptor: { name, description: '', unit: '', type: 'COUNTER', valueType: 1 },
    aggregationTemporality: 1,
    dataPointType: DataPointType.SUM,
    isMonotonic: true,
    dataPoints: points.map(([value, attributes]) => ({ attributes, startTime: [0, 0], endTime: [0, 0], value })),
  } as unknown as MetricData;
}

function histogram(points: Array<[count: number, sum: number]>): MetricData {
  return {
    descriptor: { name: 'http.server.request.duration', description: '', unit: 's', type: 'HISTOGRAM', valueType: 1 },
    aggregationTemporality: 1,
    dataPointType: DataPointType.HISTOGRAM,
    dataPoints: points.map(([count, total]) => ({
      attributes: {},
      startTime: [0, 0],
      endTime: [0, 0],
      value: { count, sum: total, buckets: { boundaries: [], counts: [] } },
    })),
  } as unknown as MetricData;
}

function collection(metrics: MetricData[]): ResourceMetrics {
  return { resource: resourceFromAttributes({}), scopeMetrics: [{ scope: { name: 'x' }, metrics }] };
}

describe('toProbes', () => {
  const component = { 'otel.component.type': 'otlp_grpc_span_exporter' };

  it('turns cumulative totals into a rate and a mean latency over the period, and reports the gauges', () => {
    const metrics = collection([
      histogram([
        [150, 1.5],
        [50, 0.5],
      ]),
      sum('http.server.active_requests', [[3, {}]]),
      sum('nodejs.eventloop.delay.p99', [[0.0123, {}]]),
      sum('nodejs.eventloop.utilization', [[0.256, {}]]),
      sum('v8js.memory.heap.used', [
        [10 * 1048576, { space: 'a' }],
        [5 * 1048576, { space: 'b' }],
      ]),
      sum('otel.sdk.exporter.span.exported', [
        [190, component],
        [4, { ...component, 'error.type': 'dropped' }],
      ]),
      sum('otel.sdk.exporter.span.inflight', [[7, component]]),
    ]);
    const { probes, totals } = toProbes(metrics, { at: 1000, count: 100, sum: 1 }, 3000);
    expect(totals).toEqual({ at: 3000, count: 200, sum: 2 });
    expect(probes).toEqual({
      'HTTP req/s': { value: 50, unit: 'req/s' },
      'HTTP mean latency': { value: 10, unit: 'ms' },
      'HTTP active': { value: 3, unit: 'req' },
      'Event loop delay p99': { value: 12.3, unit: 'ms' },
      'Event loop utilization': { value: 25.6, unit: '%' },
      'Heap used': { value: 15, unit: 'MiB' },
      'Spans exported': { value: 190, unit: 'spans' },
      'Spans dropped': { value: 4, unit: 'spans' },
      'Spans held': { value: 7, unit: 'spans' },
    });
  });

  it('shows no rate before a second collection, and a zero latency for an idle period', () => {
    const metrics = collection([histogram([[5, 0.05]])]);
    expect(toProbes(metrics, undefined, 1000).probes).toEqual({});
    expect(toProbes(metrics, { at: 1000, count: 5, sum: 0.05 }, 3000).probes).toEqual({
      'HTTP req/s': { value: 0, unit: 'req/s' },
      'HTTP mean latency': { value: 0, unit: 'ms' },
    });
  });
});
