/**
 * The metrics side of the preload: the readers that `OTEL_METRICS_EXPORTER`
 * asks for, and the kit's own telemetry-health instruments.
 *
 * Loaded only when metrics are on (see `readSettings`): with no metrics
 * exporter, no MeterProvider exists and no instrument records anything, so
 * traces alone cost what they did.
 *
 * A metric export that fails is not held and retried as spans are: with the
 * default cumulative temporality the next export carries the totals again, so
 * an outage costs resolution, not counts, and memory stays what the series
 * need. It costs a few log lines: one when it starts (at most one per 30 s for
 * a flapping collector) and one when it ends.
 */
import type { Attributes, Meter } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { AggregationOption, AggregationTemporality, InstrumentType, MetricProducer, MetricReader, PushMetricExporter, ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { HISTOGRAM, type DurationHistogram } from './durationHistogram';
import type { ExportStats } from './retryingExporter';
import type { MetricsSettings, OtlpProtocol } from './settings';

type Report = (level: 'info' | 'warn' | 'error', message: string) => void;

/** Where an OTLP exporter sends to, for log lines (never with credentials). */
export function describeTarget(url: string): string {
  const parsed = new URL(url);
  return `${parsed.protocol}//${parsed.host}${parsed.pathname === '/' ? '' : parsed.pathname}`;
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message.split('\n')[0] ?? error.name;
  return String(error);
}

/**
 * Wraps an OTLP metric exporter: reports an outage in two lines instead of
 * one error per interval, and takes a fresh exporter (a new gRPC channel)
 * after a failure, as the span exporter does (see `retryingExporter.ts`).
 */
export class ReportingMetricExporter implements PushMetricExporter {
  private outageStartedAt: number | undefined;
  private failedExports = 0;
  private lastOutageReport = -Infinity;
  private outageReported = false;

  constructor(
    private inner: PushMetricExporter,
    private readonly options: { readonly target: string; readonly report: Report; readonly renew?: () => PushMetricExporter },
  ) {}

  export(metrics: ResourceMetrics, resultCallback: (result: ExportResult) => void): void {
    this.inner.export(metrics, (result) => {
      if (result.code === ExportResultCode.SUCCESS) this.endOutage();
      else this.failed(result.error);
      // Reported here: the reader would log an error for each failed interval.
      resultCallback({ code: ExportResultCode.SUCCESS });
    });
  }

  private failed(error: unknown): void {
    this.failedExports += 1;
    if (this.outageStartedAt === undefined) {
      this.outageStartedAt = Date.now();
      this.outageReported = this.outageStartedAt - this.lastOutageReport >= 30_000;
      if (this.outageReported) {
        this.lastOutageReport = this.outageStartedAt;
        this.options.report('warn', `cannot export metrics to ${this.options.target}: ${describe(error)}; trying again at each interval`);
      }
    }
    if (this.options.renew !== undefined) {
      const old = this.inner;
      this.inner = this.options.renew();
      void old.shutdown().catch(() => undefined);
    }
  }

  private endOutage(): void {
    if (this.outageStartedAt === undefined) return;
    if (this.outageReported) {
      const seconds = ((Date.now() - this.outageStartedAt) / 1000).toFixed(1);
      this.options.report('info', `metrics export to ${this.options.target} recovered after ${seconds} s (${this.failedExports} exports failed)`);
    }
    this.outageStartedAt = undefined;
    this.failedExports = 0;
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush();
  }

  shutdown(): Promise<void> {
    if (this.outageStartedAt !== undefined && this.outageReported) {
      this.options.report('warn', `metrics not delivered at shutdown: collector at ${this.options.target} unreachable`);
    }
    return this.inner.shutdown();
  }

  selectAggregationTemporality(instrumentType: InstrumentType): AggregationTemporality {
    return this.inner.selectAggregationTemporality!(instrumentType);
  }

  selectAggregation(instrumentType: InstrumentType): AggregationOption {
    return this.inner.selectAggregation!(instrumentType);
  }
}

const TEMPORALITY = { delta: 0, cumulative: 1, lowmemory: 2 } as const;

/**
 * The library's OTLP metric exporter for the protocol; it reads headers,
 * compression and timeout from the standard variables, and takes the
 * temporality and histogram aggregation the settings read (the library does
 * not read OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION).
 */
export function createOtlpMetricExporter(protocol: OtlpProtocol, url: string, temporality: MetricsSettings['temporality'], histograms: MetricsSettings['histogramAggregation']): PushMetricExporter {
  const config = { url, temporalityPreference: TEMPORALITY[temporality], aggregationPreference: histograms === 'explicit_bucket_histogram' ? undefined : exponentialHistograms() };
  switch (protocol) {
    case 'grpc': {
      const { OTLPMetricExporter } = require('@opentelemetry/exporter-metrics-otlp-grpc') as typeof import('@opentelemetry/exporter-metrics-otlp-grpc');
      return new OTLPMetricExporter(config);
    }
    case 'http/protobuf': {
      const { OTLPMetricExporter } = require('@opentelemetry/exporter-metrics-otlp-proto') as typeof import('@opentelemetry/exporter-metrics-otlp-proto');
      return new OTLPMetricExporter(config);
    }
    case 'http/json': {
      const { OTLPMetricExporter } = require('@opentelemetry/exporter-metrics-otlp-http') as typeof import('@opentelemetry/exporter-metrics-otlp-http');
      return new OTLPMetricExporter(config);
    }
  }
}

/** An aggregation selector: histograms as base-2 exponential histograms, the rest by default. */
function exponentialHistograms(): (type: InstrumentType) => AggregationOption {
  const { AggregationType } = require('@opentelemetry/sdk-metrics') as typeof import('@opentelemetry/sdk-metrics');
  return (type) => (type === HISTOGRAM ? { type: AggregationType.EXPONENTIAL_HISTOGRAM } : { type: AggregationType.DEFAULT });
}

/**
 * The readers for `OTEL_METRICS_EXPORTER`, except `prometheus`, which
 * `register.ts` asks `prometheus.ts` for.
 */
export function createPushReaders(settings: MetricsSettings, report: Report, durations?: DurationHistogram): MetricReader[] {
  const { PeriodicExportingMetricReader, ConsoleMetricExporter } = require('@opentelemetry/sdk-metrics') as typeof import('@opentelemetry/sdk-metrics');
  const timing = { exportIntervalMillis: settings.exportIntervalMillis, exportTimeoutMillis: settings.exportTimeoutMillis };
  const readers: MetricReader[] = [];
  for (const name of settings.exporters) {
    let exporter: PushMetricExporter | undefined;
    if (name === 'console') {
      exporter = new ConsoleMetricExporter();
    } else if (name === 'otlp') {
      const otlp = settings.otlp;
      if (otlp === undefined) throw new Error('OTLP metrics settings missing');
      const make = (): PushMetricExporter => createOtlpMetricExporter(otlp.protocol, otlp.url, settings.temporality, settings.histogramAggregation);
      exporter = new ReportingMetricExporter(make(), { target: describeTarget(otlp.url), report, renew: make });
    }
    if (exporter !== undefined) readers.push(withDurations(durations, (metricProducers) => new PeriodicExportingMetricReader({ exporter, ...timing, metricProducers })));
  }
  return readers;
}

/**
 * A reader made by `make` with a producer of the kit's duration histogram
 * (see durationHistogram.ts), which follows the reader's temporality.
 */
export function withDurations<R extends MetricReader>(durations: DurationHistogram | undefined, make: (metricProducers: MetricProducer[]) => R): R {
  if (durations === undefined) return make([]);
  // Read at the reader's first collection, once it exists.
  const reader: R = make([durations.producer(() => reader.selectAggregationTemporality(HISTOGRAM))]);
  return reader;
}

/**
 * Lets the kit aggregate the duration histogram where every reader would
 * aggregate it as the SDK does by default (explicit buckets from the
 * instrument's advice); a reader asking for another aggregation (an
 * exponential histogram) leaves it to the SDK's histogram.
 */
export function enableDurations(durations: DurationHistogram, readers: readonly MetricReader[]): void {
  const { AggregationType } = require('@opentelemetry/sdk-metrics') as typeof import('@opentelemetry/sdk-metrics');
  durations.enabled = readers.length > 0 && readers.every((reader) => reader.selectAggregation(HISTOGRAM).type === AggregationType.DEFAULT);
}


/** An exporter whose counts the health instruments observe, and what to call it. */
export interface ExporterHealth {
  /** `otel.component.type`, e.g. `otlp_grpc_span_exporter`. */
  readonly type: string;
  readonly getStats: () => ExportStats;
}

/** The signals whose OTLP exporters sit behind the outage wrapper, by their name in the conventions. */
export type ExportedSignal = 'span' | 'log';

const PROTOCOL_PARTS: Record<OtlpProtocol, string> = {
  grpc: 'otlp_grpc',
  'http/protobuf': 'otlp_http',
  'http/json': 'otlp_http_json',
};

/** `otel.component.type` by the conventions: `otlp_grpc_span_exporter`, `otlp_http_log_exporter`, … */
export function exporterType(signal: ExportedSignal, protocol: OtlpProtocol): string {
  return `${PROTOCOL_PARTS[protocol]}_${signal}_exporter`;
}

const UNITS: Record<ExportedSignal, { unit: string; items: string }> = {
  span: { unit: '{span}', items: 'spans' },
  log: { unit: '{log_record}', items: 'log records' },
};

/**
 * The kit's telemetry health, by the semantic conventions' SDK metrics, read
 * from the outage wrappers of the OTLP exporters of one signal when collected
 * (`span` or `log` in the names below):
 *
 * - `otel.sdk.exporter.<signal>.exported`: items whose export finished,
 *   without `error.type` when delivered, with `error.type=dropped` when lost
 *   (beyond the hold of an outage, refused by the collector, or still held at
 *   shutdown);
 * - `otel.sdk.exporter.<signal>.inflight`: items passed to the exporter and
 *   not yet exported, which is what the wrapper holds through an outage (the
 *   conventions count retries and backoff as in flight).
 */
export function observeExporters(meter: Meter, signal: ExportedSignal, exporters: readonly ExporterHealth[]): void {
  if (exporters.length === 0) return;
  const { unit, items } = UNITS[signal];
  const components = exporters.map((exporter, index) => {
    const attributes: Attributes = { 'otel.component.type': exporter.type, 'otel.component.name': `${exporter.type}/${index}` };
    return { exporter, attributes, dropped: { ...attributes, 'error.type': 'dropped' } };
  });
  meter
    .createObservableCounter(`otel.sdk.exporter.${signal}.exported`, {
      unit,
      description: `The number of ${items} for which the export has finished, either successful or failed.`,
    })
    .addCallback((result) => {
      for (const { exporter, attributes, dropped } of components) {
        const stats = exporter.getStats();
        result.observe(stats.delivered, attributes);
        result.observe(stats.dropped, dropped);
      }
    });
  meter
    .createObservableUpDownCounter(`otel.sdk.exporter.${signal}.inflight`, {
      unit,
      description: `The number of ${items} which were passed to the exporter, but that have not been exported yet.`,
    })
    .addCallback((result) => {
      for (const { exporter, attributes } of components) result.observe(exporter.getStats().held, attributes);
    });
}
