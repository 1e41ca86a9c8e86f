/**
 * The server's `http.server.request.duration` histogram, aggregated by the
 * kit and handed to each metric reader by a `MetricProducer` (the SDK's
 * public extension point for metrics it does not aggregate itself), instead
 * of an SDK `Histogram`.
 *
 * Why (measured, README "Performance"): the SDK's `record()` finds a
 * request's series by hashing its attributes (`hashAttributes`: the keys
 * sorted, then `JSON.stringify` of the pairs), once for each reader. In the
 * profile of one worker under load with OTLP metrics (one reader), the SDK's
 * record path took 3.0-3.3 % of the worker's CPU, about 2 µs a request; this
 * one 0.5-0.7 %, about 0.4 µs. The series of a server request are few and
 * known (method, scheme, status, route, error type), so this one finds a
 * series through a small map for each of those values, then counts the value
 * as the SDK would.
 *
 * Each reader gets the data points its own SDK storage would have given it
 * (compared record by record and collection by collection, cumulative and
 * delta, in `test/otel/durationHistogram.test.ts`): the SDK keeps one storage
 * per reader when no view is registered (NodeSDK registers none), so each
 * {@link DurationProducer} keeps its own series, with the SDK's explicit
 * bucket histogram arithmetic (bucket by `binarySearchUB`, sum, count, min,
 * max; cumulative points merged interval by interval, so sums add up in the
 * same order), start times (first record; for delta, the previous collection
 * for a series it reported), point order and cardinality limit (2,000 series
 * a reader, the rest in one `otel.metric.overflow` series).
 *
 * Used only where every reader would aggregate the histogram with the
 * instrument's advice (the SDK's default aggregation): a reader asking for
 * another (an OTLP exporter with
 * `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`) gets the SDK's
 * histogram (see `register.ts`).
 */
import { ValueType, diag, type Attributes, type HrTime } from '@opentelemetry/api';
import { millisToHrTime, type InstrumentationScope } from '@opentelemetry/core';
import type { AggregationTemporality, CollectionResult, HistogramMetricData, InstrumentType, MetricCollectOptions, MetricDescriptor, MetricProducer } from '@opentelemetry/sdk-metrics';

/** `InstrumentType.HISTOGRAM`, `AggregationTemporality.CUMULATIVE`, `DataPointType.HISTOGRAM`: read without loading the SDK here. */
export const HISTOGRAM = 'HISTOGRAM' as InstrumentType;
const CUMULATIVE = 1;
const HISTOGRAM_POINT = 0;

/** The SDK's default cardinality limit, less the overflow series (its `DeltaMetricProcessor`). */
const CARDINALITY_LIMIT = 2000 - 1;
const OVERFLOW_ID = -1;
const OVERFLOW_ATTRIBUTES: Attributes = { 'otel.metric.overflow': true };

/** What the SDK's `HistogramAccumulation` holds. */
interface Accumulation {
  startTime: HrTime;
  readonly buckets: { readonly boundaries: readonly number[]; readonly counts: number[] };
  sum: number;
  count: number;
  hasMinMax: boolean;
  min: number;
  max: number;
}

type Level = Map<unknown, unknown>;

function getOrAdd(level: Level, key: unknown): Level {
  let next = level.get(key) as Level | undefined;
  if (next === undefined) {
    next = new Map();
    level.set(key, next);
  }
  return next;
}

interface Series {
  readonly attributes: Attributes;
  accumulation: Accumulation;
}

function createAccumulation(startTime: HrTime, boundaries: readonly number[]): Accumulation {
  return { startTime, buckets: { boundaries, counts: new Array<number>(boundaries.length + 1).fill(0) }, sum: 0, count: 0, hasMinMax: false, min: Infinity, max: -Infinity };
}

/** The SDK's `binarySearchUB`: the first boundary at or above the value (a bucket's upper bound is inclusive). */
function bucketOf(boundaries: readonly number[], value: number): number {
  let lo = 0;
  let hi = boundaries.length - 1;
  let ret = boundaries.length;
  while (hi >= lo) {
    const mid = lo + Math.trunc((hi - lo) / 2);
    if ((boundaries[mid] as number) < value) lo = mid + 1;
    else {
      ret = mid;
      hi = mid - 1;
    }
  }
  return ret;
}

/** The SDK's `HistogramAccumulation.record`. */
function add(accumulation: Accumulation, value: number): void {
  if (Number.isNaN(value)) return;
  accumulation.count += 1;
  accumulation.sum += value;
  accumulation.min = Math.min(value, accumulation.min);
  accumulation.max = Math.max(value, accumulation.max);
  accumulation.hasMinMax = true;
  (accumulation.buckets.counts as number[])[bucketOf(accumulation.buckets.boundaries, value)]! += 1;
}

/** The SDK's `HistogramAggregator.merge` (min and max always recorded). */
function merge(previous: Accumulation, delta: Accumulation): Accumulation {
  const counts = new Array<number>(previous.buckets.counts.length);
  for (let i = 0; i < counts.length; i++) counts[i] = (previous.buckets.counts[i] as number) + (delta.buckets.counts[i] as number);
  let min = Infinity;
  let max = -Infinity;
  if (previous.hasMinMax && delta.hasMinMax) {
    min = Math.min(previous.min, delta.min);
    max = Math.max(previous.max, delta.max);
  } else if (previous.hasMinMax) {
    min = previous.min;
    max = previous.max;
  } else if (delta.hasMinMax) {
    min = delta.min;
    max = delta.max;
  }
  return {
    startTime: previous.startTime,
    buckets: { boundaries: previous.buckets.boundaries, counts },
    count: previous.count + delta.count,
    sum: previous.sum + delta.sum,
    hasMinMax: previous.hasMinMax || delta.hasMinMax,
    min,
    max,
  };
}

/**
 * One reader's view of the histogram: the SDK's per-reader storage
 * (`SyncMetricStorage` with its `DeltaMetricProcessor` and
 * `TemporalMetricProcessor`), collected by the reader as a producer.
 */
export class DurationProducer implements MetricProducer {
  /** Series recorded since this reader last collected, by series number, in first-record order. */
  private active = new Map<number, Series>();
  private history: { series: Map<number, Series>; collectionTime: HrTime; temporality: AggregationTemporality } | undefined;

  constructor(
    private readonly histogram: DurationHistogram,
    /** The reader's temporality for histograms, read at its first collection (as the SDK reads it). */
    private readonly temporality: () => AggregationTemporality,
  ) {}

  /** The series `id`'s accumulation for this interval, if it has one. */
  find(id: number): Accumulation | undefined {
    return this.active.get(id)?.accumulation;
  }

  /** Starts the series `id` in this interval (past the cardinality limit, the overflow series), at `now`. */
  start(id: number, attributes: Attributes, now: number): Accumulation {
    const boundaries = this.histogram.boundaries;
    if (this.active.size >= CARDINALITY_LIMIT) {
      let overflow = this.active.get(OVERFLOW_ID);
      if (overflow === undefined) {
        overflow = { attributes: OVERFLOW_ATTRIBUTES, accumulation: createAccumulation(millisToHrTime(now), boundaries) };
        this.active.set(OVERFLOW_ID, overflow);
      }
      return overflow.accumulation;
    }
    const series = { attributes, accumulation: createAccumulation(millisToHrTime(now), boundaries) };
    this.active.set(id, series);
    return series.accumulation;
  }

  async collect(_options?: MetricCollectOptions): Promise<CollectionResult> {
    const collectionTime = millisToHrTime(Date.now());
    const current = this.active;
    this.active = new Map();
    let result = current;
    let temporality: AggregationTemporality;
    const last = this.history;
    if (last !== undefined) {
      temporality = last.temporality;
      if (temporality === CUMULATIVE) {
        result = last.series;
        for (const [key, series] of current) {
          const previous = result.get(key);
          if (previous === undefined) result.set(key, series);
          else previous.accumulation = merge(previous.accumulation, series.accumulation);
        }
      } else {
        for (const key of last.series.keys()) {
          const series = current.get(key);
          if (series !== undefined) series.accumulation.startTime = last.collectionTime;
        }
      }
    } else {
      temporality = this.temporality();
    }
    this.history = { series: result, collectionTime, temporality };
    const histogram = this.histogram;
    if (result.size === 0) return { resourceMetrics: { resource: histogram.resource, scopeMetrics: [] }, errors: [] };
    const metric: HistogramMetricData = {
      descriptor: histogram.descriptor,
      aggregationTemporality: temporality,
      dataPointType: HISTOGRAM_POINT as HistogramMetricData['dataPointType'],
      dataPoints: Array.from(result.values(), ({ attributes, accumulation }) => ({
        attributes,
        startTime: accumulation.startTime,
        endTime: collectionTime,
        value: {
          min: accumulation.hasMinMax ? accumulation.min : undefined,
          max: accumulation.hasMinMax ? accumulation.max : undefined,
          sum: accumulation.sum,
          buckets: accumulation.buckets as { boundaries: number[]; counts: number[] },
          count: accumulation.count,
        },
      })),
    };
    return { resourceMetrics: { resource: histogram.resource, scopeMetrics: [{ scope: histogram.scope, metrics: [metric] }] }, errors: [] };
  }
}

/**
 * The histogram as an instrument: `record` counts a request's duration in
 * every reader's series. The readers are given their producers at
 * construction ({@link producer}); `enabled` is false until the preload has
 * checked that every reader takes the default aggregation.
 */
export class DurationHistogram {
  readonly descriptor: MetricDescriptor;
  readonly boundaries: readonly number[];
  /** The reader ignores a producer's resource (it writes its own); this one is empty. */
  readonly resource = { attributes: {} } as unknown as CollectionResult['resourceMetrics']['resource'];
  private readonly producers: DurationProducer[] = [];
  /** Series by method, scheme, status, route, then error type. */
  private readonly index: Level = new Map();
  private count = 0;
  enabled = false;

  constructor(
    readonly scope: InstrumentationScope,
    options: { name: string; description: string; unit: string; boundaries: readonly number[] },
  ) {
    this.boundaries = options.boundaries;
    // The SDK's instrument descriptor, advice included, as its data points carry it.
    this.descriptor = { name: options.name, type: HISTOGRAM, description: options.description, unit: options.unit, valueType: ValueType.DOUBLE, advice: { explicitBucketBoundaries: [...options.boundaries] } } as MetricDescriptor;
  }

  /** A producer for one reader, whose histogram temporality `temporality` reads. */
  producer(temporality: () => AggregationTemporality): DurationProducer {
    const producer = new DurationProducer(this, temporality);
    this.producers.push(producer);
    return producer;
  }

  /**
   * Counts a request's duration in every reader's series for its method,
   * scheme, status, route (none if empty) and error type.
   */
  record(seconds: number, method: string, scheme: string, status: number, route: string | undefined, error: string | undefined): void {
    // The SDK's `Histogram.record` refuses negative values.
    if (seconds < 0) {
      diag.warn(`negative value provided to histogram ${this.descriptor.name}: ${seconds}`);
      return;
    }
    const series = this.series(method, scheme, status, route || undefined, error);
    // The SDK reads the clock once a record, for the readers that start a series.
    let now = -1;
    for (const producer of this.producers) {
      let accumulation = producer.find(series.id);
      if (accumulation === undefined) {
        if (now < 0) now = Date.now();
        accumulation = producer.start(series.id, series.attributes, now);
      }
      add(accumulation, seconds);
    }
  }

  /**
   * The series of these values: found through one small map a value (each a
   * string the server keeps, or a number), not by hashing the attributes as
   * the SDK does; numbered, with its attributes made once.
   */
  private series(method: string, scheme: string, status: number, route: string | undefined, error: string | undefined): { readonly id: number; readonly attributes: Attributes } {
    const byScheme = getOrAdd(this.index, method);
    const byStatus = getOrAdd(byScheme, scheme);
    const byRoute = getOrAdd(byStatus, status);
    const byError = getOrAdd(byRoute, route);
    let series = byError.get(error) as { id: number; attributes: Attributes } | undefined;
    if (series === undefined) {
      const attributes: Attributes = { 'http.request.method': method, 'url.scheme': scheme, 'http.response.status_code': status };
      if (route !== undefined) attributes['http.route'] = route;
      if (error !== undefined) attributes['error.type'] = error;
      series = { id: this.count++, attributes };
      byError.set(error, series);
    }
    return series;
  }
}
