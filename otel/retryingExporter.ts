/**
 * Keeps spans through a collector outage, and says so when it cannot.
 * Generic over the item: the OTLP log record exporter is wrapped the same way
 * (`signal: 'logs'`), behind the batch log record processor.
 *
 * The SDK's BatchSpanProcessor drops a batch as soon as its export fails,
 * and the OTLP exporters retry only within one export's timeout (gRPC
 * UNAVAILABLE not at all), each failure logged once per batch. A collector
 * restart or a network blip of a few seconds thus loses every span of that
 * time, in silence unless OTEL_LOG_LEVEL is raised, and floods the log if it is.
 *
 * This wrapper sits between the BatchSpanProcessor and the OTLP exporter. It
 * takes each batch into its own queue (the hold) and answers the processor at
 * once, so the processor never waits on the network and its own queue never
 * fills (spans it dropped there would be in no count); it sends the hold,
 * oldest first, one export at a time. When an export fails, or gets no
 * answer within `exportTimeoutMs` (a collector that accepts the connection
 * and hangs is an outage too), it keeps the spans and retries with
 * exponential backoff; spans ended meanwhile join the held ones,
 * up to `maxHeldSpans`, beyond which the oldest are dropped and counted.
 *
 * Each span is counted once, by what became of it here: delivered (its
 * export was answered success in time), dropped, or not delivered at
 * shutdown. An export that timed out is a failed one whatever its late answer
 * says: its spans are sent again, so the collector may receive them twice
 * (OTLP is at-least-once), but they are counted once.
 *
 * The outage costs a handful of log lines: one when it starts, one every 30 s
 * while spans are being dropped, one when it ends with what was delivered and
 * dropped, and one at shutdown if spans are still held. At shutdown the
 * preload gives the flush a budget; past it, `abandon()` stops waiting for a
 * hanging export and reports the spans held or in flight, so the worker
 * exits in time with an exact count.
 */
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';

/**
 * What the wrapper needs of an exporter: the shape the SDK's span and log
 * record exporters share, over the item they export.
 */
export interface ItemExporter<T> {
  export(items: T[], resultCallback: (result: ExportResult) => void): void;
  shutdown(): Promise<void>;
  forceFlush?(): Promise<void>;
}

/** The words the wrapper's lines use for its items, by signal. */
const NOUNS = { spans: { items: 'spans', ended: 'spans are ended' }, logs: { items: 'log records', ended: 'records are emitted' } } as const;

export interface RetryOptions<T = ReadableSpan> {
  /** Most spans (or log records) held during an outage; the memory bound. */
  readonly maxHeldSpans: number;
  /** Most spans sent in one export. */
  readonly maxBatchSize: number;
  /** First retry delay; doubles up to maxDelayMs. */
  readonly initialDelayMs?: number;
  readonly maxDelayMs?: number;
  /**
   * Longest wait for one export's answer; then it counts as failed. The OTLP
   * exporters have timeouts of their own, but an HTTP one is an idle timeout
   * (a collector trickling bytes never trips it), and the batch processor
   * gives up on an export without failing it; this one always fires.
   */
  readonly exportTimeoutMs?: number;
  /** Where the exporter sends to, for log lines (never with credentials). */
  readonly target: string;
  readonly report: (level: 'info' | 'warn' | 'error', message: string) => void;
  /**
   * Makes a fresh inner exporter, used after each failed export. gRPC's own
   * reconnect backoff (grpc-js: x1.6 per failed attempt up to 120 s, reset
   * only by a connection) would otherwise keep an old channel failing fast for
   * up to two minutes after the collector is back.
   */
  readonly renew?: () => ItemExporter<T>;
  /** What the items are called in its lines; spans by default. */
  readonly signal?: keyof typeof NOUNS;
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

export class RetryingExporter<T = ReadableSpan> implements ItemExporter<T> {
  /** Spans not yet delivered, oldest first; the first `inFlight` of them are being exported. */
  private held: T[] = [];
  private inFlight = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private delayMs: number;
  /** forceFlush() callers waiting for the pump to stop. */
  private idleWaiters: Array<() => void> = [];
  /** Ends the export in flight at once (with a failure), for abandon(). */
  private settleInFlight: ((result: ExportResult) => void) | undefined;
  /** Exports of the current inner exporter that have not answered yet, even if we stopped waiting. */
  private innerPending = 0;
  private outageStartedAt: number | undefined;
  private outageDelivered = 0;
  private outageDropped = 0;
  /** Spans dropped outside an outage, since start (see hold()). */
  private behindDropped = 0;
  private lastDropReport = 0;
  /** When the last outage was reported, and how many outages since went unreported (a flapping collector). */
  private lastOutageReport = -Infinity;
  private outageReported = false;
  private quietOutages = 0;
  private stopped = false;
  /** Whether the spans not delivered at shutdown were counted and reported. */
  private reportedAtShutdown = false;
  private stats = { delivered: 0, dropped: 0, failures: 0 };
  private readonly nouns: (typeof NOUNS)[keyof typeof NOUNS];

  constructor(
    private inner: ItemExporter<T>,
    private readonly options: RetryOptions<T>,
  ) {
    this.delayMs = options.initialDelayMs ?? 500;
    this.nouns = NOUNS[options.signal ?? 'spans'];
  }

  /** Counts since start, for tests and diagnostics. */
  getStats(): ExportStats {
    return { ...this.stats, held: this.held.length };
  }

  export(spans: T[], resultCallback: (result: ExportResult) => void): void {
    if (this.stopped) {
      resultCallback({ code: ExportResultCode.FAILED, error: new Error('exporter is shut down') });
      return;
    }
    // Keep order: new spans queue behind the held ones.
    this.hold(spans);
    // The spans are ours now: delivered, dropped with a report, or reported at shutdown.
    resultCallback({ code: ExportResultCode.SUCCESS });
    // During an outage, the retry timer sends them.
    if (this.outageStartedAt === undefined) this.pump();
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
        `cannot export ${this.nouns.items} to ${this.options.target}: ${describe(error)}; holding up to ${this.options.maxHeldSpans} ${this.nouns.items} and retrying${since}`,
      );
    } else {
      this.quietOutages += 1;
    }
    this.scheduleRetry();
  }

  private hold(spans: T[]): void {
    this.held.push(...spans);
    const excess = this.held.length - this.options.maxHeldSpans;
    if (excess > 0) {
      // The oldest spans not in flight: a batch being sent may yet be delivered,
      // and would then be counted twice. There are always enough of them, since
      // a batch is never larger than the hold (readSettings checks it).
      this.held.splice(this.inFlight, excess);
      this.drop(excess);
      // Outside an outage: an export is taking long, and more spans ended meanwhile than the hold keeps.
      const inOutage = this.outageStartedAt !== undefined;
      if (inOutage) this.outageDropped += excess;
      else this.behindDropped += excess;
      const now = Date.now();
      if (now - this.lastDropReport >= 30_000) {
        this.lastDropReport = now;
        this.options.report(
          'warn',
          inOutage
            ? `collector still unreachable: dropped ${this.outageDropped} ${this.nouns.items} so far (more than ${this.options.maxHeldSpans} held)`
            : `collector at ${this.options.target} slower than ${this.nouns.ended}: dropped ${this.behindDropped} ${this.nouns.items} so far (more than ${this.options.maxHeldSpans} held)`,
        );
      }
    }
  }

  /** Replaces the inner exporter by a fresh one (a new channel), if we can make one. */
  private renewInner(): void {
    if (this.options.renew === undefined || this.stopped) return;
    const old = this.inner;
    this.inner = this.options.renew();
    this.innerPending = 0;
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
      this.pump();
    }, delay);
    // A pending retry must not keep an otherwise finished process alive.
    this.retryTimer.unref();
  }

  /**
   * Exports `batch` once and calls `done` with its answer, or with a failure
   * once `exportTimeoutMs` has passed or abandon() is called; an answer after
   * that is ignored (see the class comment).
   */
  private exportOnce(batch: T[], done: (result: ExportResult) => void): void {
    const inner = this.inner;
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    const settle = (result: ExportResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (this.settleInFlight === settle) this.settleInFlight = undefined;
      done(result);
    };
    const timeoutMs = this.options.exportTimeoutMs;
    if (timeoutMs !== undefined && timeoutMs > 0) {
      timer = setTimeout(() => settle({ code: ExportResultCode.FAILED, error: new Error(`no answer within ${timeoutMs} ms`) }), timeoutMs);
    }
    this.settleInFlight = settle;
    this.innerPending += 1;
    const answered = (result: ExportResult): void => {
      if (inner === this.inner) this.innerPending -= 1;
      settle(result);
    };
    try {
      inner.export(batch, answered);
    } catch (error) {
      answered({ code: ExportResultCode.FAILED, error: error instanceof Error ? error : new Error(String(error)) });
    }
  }

  /**
   * Sends held spans oldest first, one export at a time, until none is left
   * or an export fails (then the retry timer takes over).
   */
  private pump(): void {
    if (this.inFlight > 0) return; // its answer goes on
    if (this.stopped || this.held.length === 0) {
      if (!this.stopped) this.endOutage();
      this.settleIdle();
      return;
    }
    const batch = this.held.slice(0, this.options.maxBatchSize);
    this.inFlight = batch.length;
    this.exportOnce(batch, (result) => {
      this.inFlight = 0;
      // abandon() has counted and reported the batch with the rest.
      if (this.reportedAtShutdown) return this.settleIdle();
      if (result.code !== ExportResultCode.SUCCESS && !isPermanent(result.error)) {
        if (this.outageStartedAt === undefined) {
          this.startOutage(result.error);
        } else {
          this.stats.failures += 1;
          this.renewInner();
          this.scheduleRetry();
        }
        return this.settleIdle();
      }
      // Still at the front: hold() drops only spans behind the batch in flight.
      this.held.splice(0, batch.length);
      if (result.code === ExportResultCode.SUCCESS) {
        this.stats.delivered += batch.length;
        this.outageDelivered += batch.length;
      } else if (this.outageStartedAt === undefined) {
        this.drop(batch.length);
        this.options.report('error', `collector at ${this.options.target} refused ${batch.length} ${this.nouns.items}: ${describe(result.error)}; they are dropped`);
      } else {
        this.drop(batch.length);
        this.outageDropped += batch.length;
      }
      // Not from within the answer: an exporter that answers at once would recurse per batch.
      queueMicrotask(() => this.pump());
    });
  }

  /** Resolves once the pump stops: nothing held, waiting for a retry, or stopped. */
  private whenIdle(): Promise<void> {
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private settleIdle(): void {
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private endOutage(): void {
    if (this.outageStartedAt === undefined) return;
    const seconds = ((Date.now() - this.outageStartedAt) / 1000).toFixed(1);
    // An unreported brief outage ends in silence unless it lost spans.
    if (this.outageReported || this.outageDropped > 0) {
      this.options.report(
        'info',
        `export to ${this.options.target} recovered after ${seconds} s: delivered ${this.outageDelivered} held ${this.nouns.items}, dropped ${this.outageDropped}`,
      );
    }
    this.outageStartedAt = undefined;
    this.delayMs = this.options.initialDelayMs ?? 500;
    this.lastDropReport = 0;
  }

  /** Tries once more to deliver held spans (at shutdown); the caller bounds the time, see abandon(). */
  async forceFlush(): Promise<void> {
    if (this.held.length > 0 && !this.stopped) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      const idle = this.whenIdle();
      this.pump();
      await idle;
    }
    // An inner exporter's flush waits for its hanging exports too.
    if (this.innerPending === 0) await this.inner.forceFlush?.();
  }

  /**
   * At the flush deadline: stops waiting for the export in flight and for
   * retries, counts the spans held or in flight as not delivered and reports
   * them (once), so that a pending shutdown() finishes at once. Returns how
   * many spans it reported.
   */
  abandon(): number {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const count = this.reportUndelivered();
    this.settleInFlight?.({ code: ExportResultCode.FAILED, error: new Error('given up at shutdown') });
    this.settleIdle();
    return count;
  }

  /** Counts and reports the spans still held (the batch in flight among them), once. */
  private reportUndelivered(): number {
    if (this.reportedAtShutdown) return 0;
    this.reportedAtShutdown = true;
    const count = this.held.length;
    if (count > 0) {
      this.drop(count);
      this.options.report('error', `${count} ${this.nouns.items} not delivered at shutdown: collector at ${this.options.target} unreachable`);
      this.held = [];
    }
    return count;
  }

  async shutdown(): Promise<void> {
    await this.forceFlush().catch(() => undefined);
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.reportUndelivered();
    // Its shutdown would wait for an export that hangs: let it finish on its own.
    if (this.innerPending > 0) void this.inner.shutdown().catch(() => undefined);
    else await this.inner.shutdown();
  }
}
