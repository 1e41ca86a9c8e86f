import { toProbes, type Snapshot } from '../../otel/pm2Monitor';

const base: Snapshot = {
  at: 1000,
  requests: { requests: 100, seconds: 1, active: 0 },
  delayP99Ms: 12.345,
  utilization: 0.256,
  heapUsedBytes: 15 * 1048576,
  spans: { delivered: 190, dropped: 4, held: 7 },
};

describe('toProbes', () => {
  it('turns totals into a rate and a mean latency over the period, and reports the rest', () => {
    const current: Snapshot = { ...base, at: 3000, requests: { requests: 200, seconds: 2, active: 3 } };
    expect(toProbes(current, base)).toEqual({
      'HTTP req/s': { value: 50, unit: 'req/s' },
      'HTTP mean latency': { value: 10, unit: 'ms' },
      'HTTP active': { value: 3, unit: 'req' },
      'Event loop delay p99': { value: 12.35, unit: 'ms' },
      'Event loop utilization': { value: 25.6, unit: '%' },
      'Heap used': { value: 15, unit: 'MiB' },
      'Spans exported': { value: 190, unit: 'spans' },
      'Spans dropped': { value: 4, unit: 'spans' },
      'Spans held': { value: 7, unit: 'spans' },
    });
  });

  it('shows no rate before a second period, and a zero latency for an idle one', () => {
    expect(Object.keys(toProbes(base, undefined))).not.toContain('HTTP req/s');
    expect(toProbes({ ...base, at: 3000 }, base)).toMatchObject({
      'HTTP req/s': { value: 0, unit: 'req/s' },
      'HTTP mean latency': { value: 0, unit: 'ms' },
    });
  });

  it('shows the OTLP log record exporters’ counts beside the spans’', () => {
    expect(toProbes({ ...base, logs: { delivered: 300, dropped: 2, held: 5 } }, undefined)).toMatchObject({
      'Logs exported': { value: 300, unit: 'records' },
      'Logs dropped': { value: 2, unit: 'records' },
      'Logs held': { value: 5, unit: 'records' },
    });
    expect(Object.keys(toProbes(base, undefined))).not.toContain('Logs exported');
  });

  it('leaves out what it cannot know: requests without the server instrumentation, spans without an OTLP exporter, delay without samples', () => {
    const probes = toProbes({ ...base, at: 3000, requests: undefined, spans: undefined, delayP99Ms: undefined }, base);
    expect(Object.keys(probes).sort()).toEqual(['Event loop utilization', 'Heap used']);
  });
});
