/**
 * Shows a worker's key figures in `pm2 monit` and `pm2 describe`, through
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
 * Deliberately not a metric reader: the runtime instrumentation resets its
 * event-loop delay histogram and utilisation window at every collection, so
 * a reader collecting every 2 s would leave the exporters' figures covering
 * only the last 2 s of their interval. The figures here come from the same
 * sources (the server instrumentation's totals, the span exporters' counts)
 * and from Node's own event-loop histogram and utilisation, read without
 * side effects on the exported metrics.
 */
import { monitorEventLoopDelay, performance, type EventLoopUtilization, type ELDHistogram } from 'node:perf_hooks';
import v8 from 'node:v8';

export interface Probe {
  readonly value: number;
  readonly unit: string;
}

/** What the monitor reads at each period. */
export interface Snapshot {
  /** Date.now() */
  readonly at: number;
  /** The server instrumentation's totals; undefined if it does not run. */
  readonly requests: { readonly requests: number; readonly seconds: number; readonly active: number } | undefined;
  /** Event-loop delay p99 over the period, ms; undefined with too few samples. */
  readonly delayP99Ms: number | undefined;
  /** Event-loop utilisation over the period, 0..1. */
  readonly utilization: number;
  readonly heapUsedBytes: number;
  /** The OTLP span exporters' counts; undefined without one. */
  readonly spans: { readonly delivered: number; readonly dropped: number; readonly held: number } | undefined;
  /** The OTLP log record exporters' counts; undefined without one. */
  readonly logs?: { readonly delivered: number; readonly dropped: number; readonly held: number } | undefined;
}

export interface MonitorSources {
  requests(): Snapshot['requests'];
  spans(): Snapshot['spans'];
  logs?(): Snapshot['logs'];
}

type Send = (message: { type: 'axm:monitor'; data: Record<string, Probe> }) => void;

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** Turns a snapshot, and the previous one for rates, into PM2 probes. */
export function toProbes(current: Snapshot, previous: Snapshot | undefined): Record<string, Probe> {
  const probes: Record<string, Probe> = {};
  const now = current.requests;
  const before = previous?.requests;
  if (now !== undefined) {
    if (previous !== undefined && before !== undefined && current.at > previous.at) {
      const requests = now.requests - before.requests;
      probes['HTTP req/s'] = { value: round((requests * 1000) / (current.at - previous.at), 1), unit: 'req/s' };
      probes['HTTP mean latency'] = { value: requests > 0 ? round(((now.seconds - before.seconds) / requests) * 1000, 2) : 0, unit: 'ms' };
    }
    probes['HTTP active'] = { value: now.active, unit: 'req' };
  }
  if (current.delayP99Ms !== undefined) probes['Event loop delay p99'] = { value: round(current.delayP99Ms, 2), unit: 'ms' };
  probes['Event loop utilization'] = { value: round(current.utilization * 100, 1), unit: '%' };
  probes['Heap used'] = { value: round(current.heapUsedBytes / 1048576, 1), unit: 'MiB' };
  if (current.spans !== undefined) {
    probes['Spans exported'] = { value: current.spans.delivered, unit: 'spans' };
    probes['Spans dropped'] = { value: current.spans.dropped, unit: 'spans' };
    probes['Spans held'] = { value: current.spans.held, unit: 'spans' };
  }
  if (current.logs !== undefined) {
    probes['Logs exported'] = { value: current.logs.delivered, unit: 'records' };
    probes['Logs dropped'] = { value: current.logs.dropped, unit: 'records' };
    probes['Logs held'] = { value: current.logs.held, unit: 'records' };
  }
  return probes;
}

/** Sends the probes to PM2 every `intervalMs`. */
export class Pm2Monitor {
  private readonly delay: ELDHistogram = monitorEventLoopDelay({ resolution: 10 });
  private utilization: EventLoopUtilization = performance.eventLoopUtilization();
  private previous: Snapshot | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly send: Send,
    private readonly sources: MonitorSources,
    intervalMs = 2000,
  ) {
    this.delay.enable();
    this.timer = setInterval(() => this.report(), intervalMs);
    // The monitor must never keep a finished worker alive.
    this.timer.unref();
  }

  private report(): void {
    const utilization = performance.eventLoopUtilization();
    const snapshot: Snapshot = {
      at: Date.now(),
      requests: this.sources.requests(),
      // Fewer than 5 samples of 10 ms: the period was too short to tell.
      delayP99Ms: this.delay.count >= 5 ? this.delay.percentile(99) / 1e6 : undefined,
      utilization: performance.eventLoopUtilization(utilization, this.utilization).utilization,
      heapUsedBytes: v8.getHeapStatistics().used_heap_size,
      spans: this.sources.spans(),
      logs: this.sources.logs?.(),
    };
    this.delay.reset();
    this.utilization = utilization;
    this.send({ type: 'axm:monitor', data: toProbes(snapshot, this.previous) });
    this.previous = snapshot;
  }

  stop(): void {
    clearInterval(this.timer);
    this.delay.disable();
  }
}
