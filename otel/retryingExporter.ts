/**
 * Keeps spans through a collector outage, and says so when it cannot.
 *
 * The SDK's BatchSpanProcessor drops a batch as soon as its export fails,
 * and the OTLP exporters retry only within one export's timeout (gRPC
 * UNAVAILABLE not at all), each failure logged once per batch. A collector
 * restart or a network blip of a few seconds thus loses every span of that
 * time, in silence unless OTEL_LOG_LEVEL is raised, and floods the log if it is.
 *
 * This wrapper sits between the BatchSpanProcessor and the OTLP exporter.
 * While exports succeed it is transparent (the processor waits for each
 * export, as usual). When one fails it holds the spans, answers the processor
 * at once (so the processor never blocks and its queue does not fill), and
 * retries with exponential backoff; spans ended meanwhile join the held ones,
 * up to `maxHeldSpans`, beyond which the oldest are dropped and counted. Held
 * spans go out, oldest first, as soon as the collector answers again.
 *
 * The outage costs a handful of log lines: one when it starts, one every 30 s
 * while spans are being dropped, one when it ends with what was delivered and
 * dropped, and one at shutdown if spans are still held.
 */
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';

export interface RetryOptions {
  /** Most spans held during an outage; the memory bound. */
  readonly maxHeldSpans: number;
  /** Most spans sent in one export while catching up. */
  readonly maxBatchSize: number;
  /** First retry delay; doubles up to maxDelayMs. */
  readonly initialDelayMs?: number;
  readonly maxDelayMs?: number;
  /** Where the exporter sends to, for log lines (never with credentials). */
  readonly target: string;
  readonly report: (level: 'info' | 'warn' | 'error', message: string) => void;
  /**
   * Makes a fresh inner exporter, used after each failed export. gRPC's own
   * reconnect backoff (grpc-js: x1.6 per failed attempt up to 120 s, reset
   * only by a connection) would otherwise keep an old channel failing fast for
   * up to two minutes after the collector is back.
   */
  readonly renew?: () => SpanExporter;
}

export interface ExportStats {
  readonly delivered: number;
  readonly dropped: number;
  readonly held: number;
  readonly failures: number;
}

/** HTTP 400/413 and gRPC INVALID_ARGUMENT: the payload itself is refused; retrying cannot help. */
function isPermanent(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return code === 400 || code === 413 || code === 3;
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message.split('\n')[0] ?? error.name;
  return String(error);
}

export class RetryingExporter implements SpanExporter {
  private held: ReadableSpan[] = [];
  /** How many of the oldest held spans sendHeld is exporting right now. */
  private inFlight = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private delayMs: number;
  private sending: Promise<void> | undefined;
  private outageStartedAt: number | undefined;
  private outageDelivered = 0;
  private outageDropped = 0;
  private lastDropReport = 0;
  /** When the last outage was reported, and how many outages since went unreported (a flapping collector). */
  private lastOutageReport = -Infinity;
  private outageReported = false;
  private quietOutages = 0;
  private stopped = false;
  private stats = { delivered: 0, dropped: 0, failures: 0 };

  constructor(
    private inner: SpanExporter,
    private readonly options: RetryOptions,
  ) {
    this.delayMs = options.initialDelayMs ?? 500;
  }

  /** Counts since start, for tests and diagnostics. */
  getStats(): ExportStats {
    return { ...this.stats, held: this.held.length };
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    if (this.stopped) {
      resultCallback({ code: ExportResultCode.FAILED, error: new Error('exporter is shut down') });
      return;
    }
    if (this.outageStartedAt !== undefined) {
      // Keep order: while spans are held, new ones queue behind them.
      this.hold(spans);
      resultCallback({ code: ExportResultCode.SUCCESS });
      return;
    }
    this.inner.export(spans, (result) => {
      if (result.code === ExportResultCode.SUCCESS) {
        this.stats.delivered += spans.length;
      } else if (isPermanent(result.error)) {
        this.drop(spans.length);
        this.options.report('error', `collector at ${this.options.target} refused ${spans.length} spans: ${describe(result.error)}; they are dropped`);
      } else {
        this.startOutage(result.error);
        this.hold(spans);
      }
      // The spans are delivered, dropped with a report, or ours to retry.
      resultCallback({ code: ExportResultCode.SUCCESS });
    });
  }

  private startOutage(error: unknown): void {
    this.stats.failures += 1;
    this.renewInner();
    this.outageStartedAt = Date.now();
    this.outageDelivered = 0;
    this.outageDropped = 0;
    // A flapping collector starts an outage every few seconds: report at most
    // one start per 30 s; the next report counts the ones in between.
    this.outageReported = this.outageStartedAt - this.lastOutageReport >= 30_000;
    if (this.outageReported) {
      this.lastOutageReport = this.outageStartedAt;
      const since = this.quietOutages > 0 ? ` (${this.quietOutages} brief outages since the last report)` : '';
      this.quietOutages = 0;
      this.options.report(
        'warn',
        `cannot export spans to ${this.options.target}: ${describe(error)}; holding up to ${this.options.maxHeldSpans} spans and retrying${since}`,
      );
    } else {
      this.quietOutages += 1;
    }
    this.scheduleRetry();
  }

  private hold(spans: ReadableSpan[]): void {
    this.held.push(...spans);
    const excess = this.held.length - this.options.maxHeldSpans;
    if (excess > 0) {
      // The oldest spans not in flight: a batch being sent may yet be delivered,
      // and would then be counted twice. There are always enough of them, since
      // a batch is never larger than the hold (readSettings checks it).
      this.held.splice(this.inFlight, excess);
      this.drop(excess);
      this.outageDropped += excess;
      const now = Date.now();
      if (now - this.lastDropReport >= 30_000) {
        this.lastDropReport = now;
        this.options.report('warn', `collector still unreachable: dropped ${this.outageDropped} spans so far (more than ${this.options.maxHeldSpans} held)`);
      }
    }
  }

  /** Replaces the inner exporter by a fresh one (a new channel), if we can make one. */
  private renewInner(): void {
    if (this.options.renew === undefined || this.stopped) return;
    const old = this.inner;
    this.inner = this.options.renew();
    void old.shutdown().catch(() => undefined);
  }

  private drop(count: number): void {
    this.stats.dropped += count;
  }

  private scheduleRetry(): void {
    if (this.stopped || this.retryTimer !== undefined) return;
    // Jitter spreads the retries of many workers after a shared outage.
    const delay = this.delayMs * (0.75 + Math.random() * 0.5);
    this.delayMs = Math.min(this.delayMs * 2, this.options.maxDelayMs ?? 5000);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.sendHeld();
    }, delay);
    // A pending retry must not keep an otherwise finished process alive.
    this.retryTimer.unref();
  }

  /** Sends held spans oldest first; resolves when all went out or one export failed. */
  private sendHeld(): Promise<void> {
    this.sending ??= (async () => {
      while (this.held.length > 0) {
        const batch = this.held.slice(0, this.options.maxBatchSize);
        this.inFlight = batch.length;
        let result: ExportResult;
        try {
          result = await new Promise<ExportResult>((resolve) => this.inner.export(batch, resolve));
        } finally {
          this.inFlight = 0;
        }
        if (result.code !== ExportResultCode.SUCCESS && !isPermanent(result.error)) {
          this.stats.failures += 1;
          this.renewInner();
          this.scheduleRetry();
          return;
        }
        // Still at the front: hold() drops only spans behind the batch in flight.
        this.held.splice(0, batch.length);
        if (result.code === ExportResultCode.SUCCESS) {
          this.stats.delivered += batch.length;
          this.outageDelivered += batch.length;
        } else {
          this.drop(batch.length);
          this.outageDropped += batch.length;
        }
      }
      this.endOutage();
    })().finally(() => {
      this.sending = undefined;
    });
    return this.sending;
  }

  private endOutage(): void {
    if (this.outageStartedAt === undefined) return;
    const seconds = ((Date.now() - this.outageStartedAt) / 1000).toFixed(1);
    // An unreported brief outage ends in silence unless it lost spans.
    if (this.outageReported || this.outageDropped > 0) {
      this.options.report(
        'info',
        `export to ${this.options.target} recovered after ${seconds} s: delivered ${this.outageDelivered} held spans, dropped ${this.outageDropped}`,
      );
    }
    this.outageStartedAt = undefined;
    this.delayMs = this.options.initialDelayMs ?? 500;
    this.lastDropReport = 0;
  }

  /** Tries once more to deliver held spans (at shutdown); the caller bounds the time. */
  async forceFlush(): Promise<void> {
    if (this.held.length > 0) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      await this.sendHeld();
    }
    await this.inner.forceFlush?.();
  }

  async shutdown(): Promise<void> {
    await this.forceFlush().catch(() => undefined);
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.held.length > 0) {
      this.drop(this.held.length);
      this.options.report('error', `${this.held.length} spans not delivered at shutdown: collector at ${this.options.target} unreachable`);
      this.held = [];
    }
    await this.inner.shutdown();
  }
}
