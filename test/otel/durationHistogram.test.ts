/**
 * The kit's aggregation of the server's duration histogram
 * (`otel/durationHistogram.ts`) against the SDK's histogram: the same
 * records and collections, through readers of either temporality, give each
 * reader the same metric, data point for data point (times, buckets, sums,
 * min and max, attributes, order), and the server records through it when
 * metrics are exported.
 */
import fc from 'fast-check';
import { diag, type Attributes } from '@opentelemetry/api';
import { AggregationTemporality, AggregationType, InstrumentType, MeterProvider, MetricReader, type MetricData, type MetricProducer } from '@opentelemetry/sdk-metrics';
import { DurationHistogram } from '../../otel/durationHistogram';
import { DURATION_BUCKETS, HttpServerInstrumentation } from '../../otel/httpServerInstrumentation';
import { enableDurations, withDurations } from '../../otel/metrics';

const NAME = 'http.server.request.duration';
const SCOPE = { name: 'koa-pm2-otel/http-server', version: '1.0.0', schemaUrl: undefined };

/** A reader collected by hand, with a fixed temporality. */
class HandReader extends MetricReader {
  constructor(temporality: AggregationTemporality, metricProducers: MetricProducer[] = []) {
    super({ aggregationTemporalitySelector: () => temporality, metricProducers });
  }
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

type Step = { op: 'record'; value: number; series: number; at: number } | { op: 'collect'; reader: number; at: number };

/** A few series as the server makes them: method, scheme, status, route (or none), error type (or none). */
type Values = [method: string, scheme: string, status: number, route: string | undefined, error: string | undefined];
const SERIES: Values[] = [
  ['GET', 'http', 200, '/items/:id', undefined],
  ['GET', 'http', 404, undefined, undefined],
  ['GET', 'http', 404, '', undefined],
  ['POST', 'https', 500, '/items', '500'],
  ['_OTHER', 'http', 200, undefined, 'AbortError'],
  ['_OTHER', 'http', 200, undefined, ''],
];

/** Series `i`: one of the above, or past them, a series of its own route. */
function valuesOf(i: number): Values {
  return i < SERIES.length ? SERIES[i]! : ['GET', 'http', 200, `/r/${i}`, undefined];
}

/** The attributes the server records with the SDK's histogram (httpServerInstrumentation.ts). */
function attributesOf([method, scheme, status, route, error]: Values): Attributes {
  const attributes: Attributes = { 'http.request.method': method, 'url.scheme': scheme, 'http.response.status_code': status };
  if (route) attributes['http.route'] = route;
  if (error !== undefined) attributes['error.type'] = error;
  return attributes;
}

const value = fc.oneof(
  { weight: 6, arbitrary: fc.double({ min: 0, max: 12, noNaN: true }) },
  { weight: 2, arbitrary: fc.constantFrom(...DURATION_BUCKETS, 0, 1e-9, 10.000001) },
  { weight: 1, arbitrary: fc.constantFrom(NaN, -0.001, Infinity, -0) },
);
const steps = fc.array(
  fc.oneof(
    { weight: 5, arbitrary: fc.record({ op: fc.constant('record' as const), value, series: fc.nat({ max: SERIES.length - 1 }), at: fc.nat({ max: 5 }) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('collect' as const), reader: fc.nat({ max: 1 }), at: fc.nat({ max: 5 }) }) },
  ),
  { maxLength: 40 },
);
const temporalities = fc.array(fc.constantFrom(AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA), { minLength: 1, maxLength: 2 });

/** The histogram each reader was handed, collection by collection, with a clock that moves only between steps. */
async function run(which: 'sdk' | 'kit', temporality: AggregationTemporality[], plan: Step[]): Promise<unknown[]> {
  let clock = 1_700_000_000_000;
  const now = jest.spyOn(Date, 'now').mockImplementation(() => clock);
  try {
    let readers: HandReader[];
    let record: (value: number, series: number) => void;
    if (which === 'sdk') {
      readers = temporality.map((t) => new HandReader(t));
      const meter = new MeterProvider({ readers }).getMeter(SCOPE.name, SCOPE.version);
      const histogram = meter.createHistogram(NAME, { unit: 's', description: 'Duration of HTTP server requests.', advice: { explicitBucketBoundaries: DURATION_BUCKETS } });
      record = (v, series) => histogram.record(v, attributesOf(valuesOf(series)));
    } else {
      const durations = new DurationHistogram(SCOPE, { name: NAME, unit: 's', description: 'Duration of HTTP server requests.', boundaries: DURATION_BUCKETS });
      durations.enabled = true;
      readers = temporality.map((t) => withDurations(durations, (producers) => new HandReader(t, producers)));
      new MeterProvider({ readers });
      record = (v, series) => durations.record(v, ...valuesOf(series));
    }
    const seen: unknown[] = [];
    for (const step of [...plan, ...temporality.map((_, reader) => ({ op: 'collect' as const, reader, at: 1 }))]) {
      clock += step.at;
      if (step.op === 'record') record(step.value, step.series);
      else if (step.reader < readers.length) {
        const { resourceMetrics, errors } = await readers[step.reader]!.collect();
        const found = resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics.map((metric) => ({ scope: scope.scope, metric })));
        seen.push({ reader: step.reader, errors, found: found.map(({ scope, metric }) => ({ scope: { ...scope }, metric: view(metric) })) });
      }
    }
    return seen;
  } finally {
    now.mockRestore();
  }
}

function view(metric: MetricData): unknown {
  return { descriptor: { ...metric.descriptor }, aggregationTemporality: metric.aggregationTemporality, dataPointType: metric.dataPointType, dataPoints: metric.dataPoints };
}

describe('DurationHistogram against the SDK histogram', () => {
  let warnings: string[];
  beforeEach(() => {
    warnings = [];
    diag.setLogger({ error: () => undefined, warn: (message: string) => void warnings.push(message), info: () => undefined, debug: () => undefined, verbose: () => undefined }, { suppressOverrideMessage: true });
  });
  afterEach(() => diag.disable());

  test('hands each reader the same data points for any records and collections, cumulative or delta', async () => {
    await fc.assert(
      fc.asyncProperty(temporalities, steps, async (temporality, plan) => {
        const kit = await run('kit', temporality, plan);
        const kitWarnings = warnings.splice(0);
        const sdk = await run('sdk', temporality, plan);
        expect(kit).toStrictEqual(sdk);
        expect(kitWarnings).toEqual(warnings.splice(0));
      }),
      { numRuns: 600 },
    );
  });

  test('a series of NaN only has no min and max, however many collections merge it', async () => {
    const plan: Step[] = [
      { op: 'record', value: NaN, series: 1, at: 1 },
      { op: 'collect', reader: 0, at: 1 },
      { op: 'record', value: NaN, series: 1, at: 1 },
      { op: 'collect', reader: 0, at: 1 },
      { op: 'record', value: 0.2, series: 1, at: 1 },
    ];
    const kit = await run('kit', [AggregationTemporality.CUMULATIVE], plan);
    expect(kit).toStrictEqual(await run('sdk', [AggregationTemporality.CUMULATIVE], plan));
    expect(kit).toMatchObject([{ found: [{ metric: { dataPoints: [{ value: { count: 0, min: undefined, max: undefined } }] } }] }, {}, {}]);
  });

  test('folds series past the cardinality limit into the overflow series, as the SDK does', async () => {
    const plan: Step[] = Array.from({ length: 2005 }, (_, i) => ({ op: 'record', value: i / 1000, series: SERIES.length + i, at: 0 }));
    const kit = (await run('kit', [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA], plan)) as Array<{ found: Array<{ metric: { dataPoints: Array<{ attributes: Attributes }> } }> }>;
    const sdk = await run('sdk', [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA], plan);
    expect(kit).toStrictEqual(sdk);
    const points = kit[0]!.found[0]!.metric.dataPoints;
    expect(points).toHaveLength(2000);
    expect(points[1999]!.attributes).toEqual({ 'otel.metric.overflow': true });
  });
});

describe('the server and the readers', () => {
  test('the server instrumentation aggregates through DurationHistogram only with metrics on', () => {
    expect(new HttpServerInstrumentation({ metrics: true, enabled: false }).durations).toBeInstanceOf(DurationHistogram);
    expect(new HttpServerInstrumentation({ metrics: false, enabled: false }).durations).toBeUndefined();
  });

  test('is enabled only where every reader takes the default aggregation for histograms', () => {
    const durations = new DurationHistogram(SCOPE, { name: NAME, unit: 's', description: '', boundaries: DURATION_BUCKETS });
    const exponential = new (class extends HandReader {
      override selectAggregation(): { type: AggregationType.EXPONENTIAL_HISTOGRAM } {
        return { type: AggregationType.EXPONENTIAL_HISTOGRAM };
      }
    })(AggregationTemporality.CUMULATIVE);
    enableDurations(durations, [new HandReader(AggregationTemporality.CUMULATIVE), new HandReader(AggregationTemporality.DELTA)]);
    expect(durations.enabled).toBe(true);
    enableDurations(durations, [new HandReader(AggregationTemporality.CUMULATIVE), exponential]);
    expect(durations.enabled).toBe(false);
    enableDurations(durations, []);
    expect(durations.enabled).toBe(false);
  });

  test('a producer follows its reader\'s temporality, read at the first collection', async () => {
    const durations = new DurationHistogram(SCOPE, { name: NAME, unit: 's', description: '', boundaries: DURATION_BUCKETS });
    durations.enabled = true;
    const reader = withDurations(durations, (producers) => new HandReader(AggregationTemporality.DELTA, producers));
    new MeterProvider({ readers: [reader] });
    durations.record(0.01, 'GET', 'http', 200, '/', undefined);
    const { resourceMetrics } = await reader.collect();
    expect(resourceMetrics.scopeMetrics[0]!.metrics[0]!.aggregationTemporality).toBe(AggregationTemporality.DELTA);
    expect(reader.selectAggregation(InstrumentType.HISTOGRAM).type).toBe(AggregationType.DEFAULT);
  });
});
