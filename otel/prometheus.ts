/**
 * One Prometheus scrape target for the whole app, right under PM2 cluster mode.
 *
 * The problem: PM2's daemon is the cluster master and owns the listening
 * socket, so a per-worker `/metrics` on a shared port answers with one
 * random worker's numbers, and counters of different workers mix in one
 * series. prom-client's `AggregatorRegistry` needs code in the cluster
 * master, which PM2 does not run (prom-client #165, #203, #239; PM2 #2885
 * "won't fix"); `@opentelemetry/exporter-prometheus` has the same problem in
 * cluster mode (opentelemetry-js #1252).
 *
 * The design, after prometheus_client's multiprocess mode for Gunicorn (a
 * shared directory that every worker writes to, read by whichever worker
 * answers the scrape):
 *
 * - each worker serves its own exposition on a private loopback port
 *   (`exclusive: true`: without it Node's cluster would share that handle
 *   through the master too) and registers `{pid, port, workerId}` as
 *   `<pid>.json` in a registry directory keyed by the scrape port
 *   (`os.tmpdir()/otel-prometheus-<port>`, mode 0700); the file goes at the
 *   SDK's shutdown or at exit, and entries of dead pids (SIGKILL) are pruned
 *   by whoever reads them;
 * - every worker also listens on the scrape port (`OTEL_EXPORTER_PROMETHEUS_HOST`
 *   and `_PORT`, `localhost:9464` by default) through the cluster, so that it
 *   is one target that follows `pm2 scale` and `pm2 reload` by itself;
 * - the worker that gets a scrape collects itself and asks every other
 *   registered worker in parallel, each with a deadline (`workerTimeoutMs`,
 *   2 s by default, and at most the scrape timeout Prometheus sends in
 *   `X-Prometheus-Scrape-Timeout-Seconds` less 200 ms for the merge), and
 *   merges (`prometheusExposition.ts`): every series carries
 *   `service_instance_id`, which is new for every process (so a reload's old
 *   and new worker of one slot never share a series and no counter goes
 *   backwards; workers that share a pinned id get `<id>-<pid>`),
 *   `target_info` has one line per worker, and `kit_worker_up` is 0 for a
 *   live worker that did not answer in time. A worker that is gone (pid
 *   dead, registry file removed, its port answered by another process) is
 *   left out, like a target that left service discovery.
 *
 * Why not the alternatives: a separate aggregator app in the ecosystem file
 * costs a process and a second thing to start, watch and keep on the same
 * port; PM2's bus is read by a process connected to the daemon, so it needs
 * that extra process too, and it carries events, not answers within a
 * deadline. Why not files
 * written periodically (as prometheus_client does with mmap): serializing
 * every worker's metrics on a timer costs CPU when nobody scrapes, and the
 * numbers would be as old as the timer.
 *
 * What this cannot do: the scrape connection itself goes to a worker chosen
 * by the cluster (round-robin, and Prometheus keeps the connection alive).
 * If that worker's event loop is blocked, that scrape waits for it and
 * Prometheus times it out (`up` 0 for that scrape); Node's cluster hands the
 * next connections to the other workers, since a worker is skipped until it
 * has taken the connection it was given.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { diag } from '@opentelemetry/api';
import { MetricReader, type MetricProducer } from '@opentelemetry/sdk-metrics';
import { CONTENT_TYPE, createWorkerSerializer, distinctWorkerIds, mergeExpositions, type WorkerExposition, type WorkerSerializer, WORKER_LABEL } from './prometheusExposition';

export interface PrometheusReaderOptions {
  /** Where the app's one scrape target listens (`OTEL_EXPORTER_PROMETHEUS_HOST`). */
  readonly host: string;
  /** Its port (`OTEL_EXPORTER_PROMETHEUS_PORT`); also keys the registry directory. */
  readonly port: number;
  /** Where workers register; `os.tmpdir()/otel-prometheus-<port>` by default. */
  readonly registryDir?: string;
  /** Longest wait for another worker's answer, in ms (2000 by default). */
  readonly workerTimeoutMs?: number;
  /** Where its few log lines go (the preload's writer); the SDK's diag logger by default. */
  readonly report?: (level: 'info' | 'warn' | 'error', message: string) => void;
  /** Metrics aggregated outside the SDK that this reader collects too (the kit's duration histogram). */
  readonly metricProducers?: MetricProducer[];
}

/** A registered worker, as written in `<pid>.json`. */
export interface RegistryEntry {
  readonly pid: number;
  /** Its private exposition port on 127.0.0.1. */
  readonly port: number;
  /** Its `service.instance.id`: the `service_instance_id` label of its series. */
  readonly workerId: string;
}

const PID_HEADER = 'x-kit-worker-pid';
const DEFAULT_WORKER_TIMEOUT_MS = 2000;
const MAX_BODY_BYTES = 32 * 1024 * 1024;
const RETRY_LISTEN_MS = 5000;
const ANSWER_MARGIN_MS = 200;

export function defaultRegistryDir(port: number): string {
  return path.join(os.tmpdir(), `otel-prometheus-${port}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Creates the directory (0700) or checks that an existing one is ours and not a link. */
function ensureRegistryDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const stat = fs.lstatSync(dir);
  if (!stat.isDirectory()) throw new Error(`${dir} is not a directory`);
  if (typeof process.getuid === 'function' && stat.uid !== process.getuid()) throw new Error(`${dir} belongs to another user`);
}

function parseEntry(text: string): RegistryEntry | undefined {
  try {
    const value = JSON.parse(text) as Partial<RegistryEntry>;
    if (Number.isInteger(value.pid) && Number.isInteger(value.port) && typeof value.workerId === 'string') return value as RegistryEntry;
  } catch {
    // A file that is not ours: ignored.
  }
  return undefined;
}

/** The registered workers, oldest pid first; entries of dead processes are removed on the way. */
export function readRegistry(dir: string): RegistryEntry[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const entries: RegistryEntry[] = [];
  for (const name of names) {
    if (!/^\d+\.json$/.test(name)) continue;
    const file = path.join(dir, name);
    let entry: RegistryEntry | undefined;
    try {
      entry = parseEntry(fs.readFileSync(file, 'utf8'));
    } catch {
      continue; // removed meanwhile
    }
    if (entry === undefined) continue;
    if (!alive(entry.pid)) {
      fs.rmSync(file, { force: true });
      continue;
    }
    entries.push(entry);
  }
  return entries.sort((a, b) => a.pid - b.pid);
}

function entryFile(dir: string, pid: number): string {
  return path.join(dir, `${pid}.json`);
}

interface FetchResult {
  text?: string;
  error?: string;
  /** The worker is not there any more: leave it out. */
  gone?: boolean;
}

/** Another worker's exposition from its private port, within `timeoutMs`. */
function fetchWorker(dir: string, entry: RegistryEntry, timeoutMs: number): Promise<FetchResult> {
  return new Promise((resolve) => {
    let timedOut = false;
    const goneOr = (error: string): FetchResult => {
      if (!fs.existsSync(entryFile(dir, entry.pid))) return { gone: true }; // it left the registry meanwhile
      if (alive(entry.pid)) return { error };
      fs.rmSync(entryFile(dir, entry.pid), { force: true });
      return { gone: true };
    };
    const req = http.get({ host: '127.0.0.1', port: entry.port, path: '/metrics', agent: false }, (res) => {
      if (res.headers[PID_HEADER] !== String(entry.pid)) {
        // Another process on that port (the pid was reused): a stale entry.
        res.resume();
        clearTimeout(timer);
        fs.rmSync(entryFile(dir, entry.pid), { force: true });
        resolve({ gone: true });
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BODY_BYTES) req.destroy(new Error(`exposition larger than ${MAX_BODY_BYTES} bytes`));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        clearTimeout(timer);
        if (res.statusCode === 200) resolve({ text: Buffer.concat(chunks).toString('utf8') });
        else resolve(goneOr(`HTTP ${res.statusCode}`));
      });
      res.on('error', () => undefined); // reported through req
    });
    const timer = setTimeout(() => {
      timedOut = true;
      req.destroy();
    }, timeoutMs);
    req.on('error', (error) => {
      clearTimeout(timer);
      resolve(timedOut ? { error: `no answer within ${timeoutMs} ms` } : goneOr(error.message));
    });
  });
}

/**
 * A pull `MetricReader` that serves the whole app's metrics on one port
 * (see the header). Registered with the SDK like any reader; it starts its
 * servers once the SDK has initialized it.
 */
export class ClusterPrometheusReader extends MetricReader {
  private readonly host: string;
  private readonly port: number;
  private readonly dir: string;
  private readonly workerTimeoutMs: number;
  private readonly report: NonNullable<PrometheusReaderOptions['report']>;
  private readonly fallbackId = randomUUID();
  private serializer: WorkerSerializer | undefined;
  private privateServer: http.Server | undefined;
  private sharedServer: http.Server | undefined;
  private registered = false;
  private sharedIdReported = false;
  private stopping = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private started: Promise<void> | undefined;
  private readonly removeEntry = (): void => {
    if (this.registered) fs.rmSync(entryFile(this.dir, process.pid), { force: true });
    this.registered = false;
  };

  constructor(options: PrometheusReaderOptions) {
    super({ metricProducers: options.metricProducers });
    this.host = options.host;
    this.port = options.port;
    this.dir = options.registryDir ?? defaultRegistryDir(options.port);
    this.workerTimeoutMs = options.workerTimeoutMs ?? DEFAULT_WORKER_TIMEOUT_MS;
    this.report = options.report ?? ((level, message) => diag[level](message));
  }

  /** Resolves once this worker is registered and listening on the scrape port (or has reported why not). */
  ready(): Promise<void> {
    return this.started ?? Promise.resolve();
  }

  /** The private port of this worker's own exposition, once started. */
  privatePort(): number | undefined {
    const address = this.privateServer?.address();
    return typeof address === 'object' && address !== null ? address.port : undefined;
  }

  protected override onInitialized(): void {
    this.started = this.start().catch((error: unknown) => {
      this.report('error', `Prometheus endpoint on ${this.host}:${this.port} not started: ${error instanceof Error ? error.message : String(error)}`);
    });
  }

  protected override async onForceFlush(): Promise<void> {
    // Pull exporter: Prometheus reads when it wants.
  }

  protected override async onShutdown(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.retryTimer);
    // Leave the registry first, so that no other worker asks a worker whose
    // SDK is shut down, then stop taking scrapes: an idle keep-alive
    // connection is closed and Prometheus opens a new one to another worker.
    this.removeEntry();
    process.removeListener('exit', this.removeEntry);
    await Promise.all([this.sharedServer, this.privateServer].map((server) => closeServer(server)));
  }

  private async start(): Promise<void> {
    ensureRegistryDir(this.dir);
    readRegistry(this.dir); // prunes entries of dead workers

    const privateServer = untracedServer((req, res) => void this.answer(req, res, false));
    this.privateServer = privateServer;
    // exclusive: in a cluster worker, a listen is otherwise shared through
    // the master, and another worker could answer on this port.
    await listen(privateServer, { host: '127.0.0.1', port: 0, exclusive: true });
    privateServer.unref();

    const { workerId } = await this.ownExposition();
    if (this.stopping) return;
    const entry: RegistryEntry = { pid: process.pid, port: (privateServer.address() as AddressInfo).port, workerId };
    const file = entryFile(this.dir, process.pid);
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(entry), { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
    this.registered = true;
    process.once('exit', this.removeEntry);

    const sharedServer = untracedServer((req, res) => void this.answer(req, res, true));
    this.sharedServer = sharedServer;
    await this.listenShared(sharedServer);
  }

  /** Listens on the scrape port through the cluster; retries while another process holds it. */
  private async listenShared(server: http.Server): Promise<void> {
    try {
      await listen(server, { host: this.host, port: this.port });
      server.unref();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || this.stopping) throw error;
      if (this.retryTimer === undefined) {
        this.report('warn', `Prometheus port ${this.host}:${this.port} is in use by another process; retrying every ${RETRY_LISTEN_MS / 1000} s`);
      }
      this.retryTimer = setTimeout(() => {
        if (!this.stopping) void this.listenShared(server).catch(() => undefined);
      }, RETRY_LISTEN_MS).unref();
    }
  }

  private async ownExposition(): Promise<{ text: string; workerId: string }> {
    const { resourceMetrics, errors } = await this.collect();
    if (errors.length > 0) diag.warn('Prometheus: errors while collecting metrics', ...errors); // rate-limited by the kit's diag logger
    const resource = resourceMetrics.resource;
    if (resource.asyncAttributesPending) await resource.waitForAsyncAttributes?.();
    this.serializer ??= createWorkerSerializer(this.fallbackId);
    return this.serializer.serialize(resourceMetrics);
  }

  private async answer(req: http.IncomingMessage, res: http.ServerResponse, shared: boolean): Promise<void> {
    const pathname = (req.url ?? '').split('?')[0];
    if (pathname !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (this.stopping) res.setHeader('connection', 'close');
    try {
      const body = shared ? await this.aggregate(scrapeTimeoutMs(req)) : (await this.ownExposition()).text;
      res.writeHead(200, { 'content-type': CONTENT_TYPE, [PID_HEADER]: String(process.pid) });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch (error) {
      res.writeHead(503, { 'content-type': 'text/plain', [PID_HEADER]: String(process.pid) });
      res.end(`# metrics unavailable: ${error instanceof Error ? error.message : String(error)}\n`);
    }
  }

  /** This worker's exposition and every other registered worker's, merged. */
  private async aggregate(scrapeTimeout: number | undefined): Promise<string> {
    // Leave the merge and the answer 200 ms of the time Prometheus gives the scrape.
    const timeoutMs = Math.max(50, Math.min(this.workerTimeoutMs, scrapeTimeout === undefined ? Infinity : scrapeTimeout - ANSWER_MARGIN_MS));
    const others = readRegistry(this.dir).filter((entry) => entry.pid !== process.pid);
    const [own, ...answers] = await Promise.all([
      this.ownExposition().then(
        (exposition): FetchResult & { workerId?: string } => ({ text: exposition.text, workerId: exposition.workerId }),
        (error: unknown): FetchResult & { workerId?: string } => ({ error: error instanceof Error ? error.message : String(error) }),
      ),
      ...others.map((entry) => fetchWorker(this.dir, entry, timeoutMs)),
    ]);
    const workers: WorkerExposition[] = [
      { labels: { [WORKER_LABEL]: own.workerId ?? this.fallbackId, process_pid: String(process.pid) }, text: own.text, error: own.error },
    ];
    others.forEach((entry, index) => {
      const answer = answers[index];
      if (answer === undefined || answer.gone === true) return;
      workers.push({ labels: { [WORKER_LABEL]: entry.workerId, process_pid: String(entry.pid) }, text: answer.text, error: answer.error });
    });
    const shared = distinctWorkerIds(workers);
    if (shared.length > 0 && !this.sharedIdReported) {
      this.sharedIdReported = true;
      this.report('warn', `Prometheus: workers share service.instance.id ${shared.join(', ')} (set in OTEL_RESOURCE_ATTRIBUTES?); their series are labelled <id>-<pid> to stay apart`);
    }
    const merged = mergeExpositions(workers);
    if (merged.conflicts.length > 0) diag.warn(`Prometheus: workers disagree on the type of ${merged.conflicts.join(', ')}; kept the first`);
    return merged.text;
  }
}

/**
 * An HTTP server the kit's instrumentation does not see: it wraps
 * `http.Server.prototype.emit`, and a scrape (every worker's, every few
 * seconds) is no request of the app's: no span, no duration sample.
 */
function untracedServer(handler: http.RequestListener): http.Server {
  const server = http.createServer(handler);
  server.emit = EventEmitter.prototype.emit;
  return server;
}

/** The scrape timeout Prometheus announces, in ms. */
function scrapeTimeoutMs(req: http.IncomingMessage): number | undefined {
  const header = req.headers['x-prometheus-scrape-timeout-seconds'];
  const seconds = Number(Array.isArray(header) ? header[0] : header);
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined;
}

function listen(server: http.Server, options: { host: string; port: number; exclusive?: boolean }): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once('error', onError);
    server.listen(options, () => {
      server.removeListener('error', onError);
      resolve();
    });
  });
}

/** Stops listening, closes idle connections, and gives a scrape in flight `graceMs` to finish. */
function closeServer(server: http.Server | undefined, graceMs = 1000): Promise<void> {
  if (server === undefined || !server.listening) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.closeAllConnections();
      resolve();
    }, graceMs).unref();
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/**
 * The reader the preload registers when `OTEL_METRICS_EXPORTER` lists
 * `prometheus`. Needs `host` and `port`; `report` is used when given; other
 * fields the preload passes (`pm2`) are not needed: every label comes from
 * the resource. `registryDir` and `workerTimeoutMs` are for tests.
 */
export function createPrometheusReader(options: PrometheusReaderOptions): ClusterPrometheusReader {
  return new ClusterPrometheusReader(options);
}
