/**
 * Server spans for incoming HTTP requests, at a fraction of the cost of
 * `@opentelemetry/instrumentation-http`'s incoming side, with the same span.
 *
 * Why (measured on this kit, see README "Performance"): for each request the
 * library binds the request and response emitters to the context (patching
 * six methods of each with `Object.defineProperty`), parses the URL with
 * `new URL()`, and registers listeners through closures it allocates per
 * request. That was a third of the tracing overhead of a hello-world route.
 * This class produces the same server span (name, kind, parent, attributes,
 * status, exception events; compared side by side in
 * `test/otel/httpServer.test.ts`) and:
 *
 * - runs the request handler in the request's context, as the library does,
 *   but does not bind the emitters: listeners added to `req`/`res` run in the
 *   context they were added in only through promises (`await`), which is how
 *   Koa and modern handlers consume them;
 * - takes the path as is when it needs no normalisation (the common case),
 *   and falls back to the library's exact `new URL()` logic otherwise;
 * - sets the request attributes once the span is started and sampled (the
 *   SDK would validate start attributes twice), and skips them for an
 *   unsampled request;
 * - runs the handler in one light context holding the span and the RPC
 *   metadata (`RequestContext` below) instead of two copied ones.
 *
 * With metrics on, it also records the stable HTTP server metrics the
 * library would (`http.server.request.duration`) and the one it does not
 * (`http.server.active_requests`), from the same request, at the cost of one
 * histogram record and two counter updates: see {@link ServerMetrics}.
 *
 * The library still instruments outgoing requests (`http.request`/`get`),
 * configured with `disableIncomingRequestInstrumentation: true`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { errorMonitor } from 'node:events';
import { performance } from 'node:perf_hooks';
import { INVALID_SPAN_CONTEXT, ROOT_CONTEXT, SpanKind, SpanStatusCode, context, createContextKey, propagation, trace, type Attributes, type Context, type Histogram, type Meter, type Span } from '@opentelemetry/api';
import { RPCType, getRPCMetadata, setRPCMetadata, suppressTracing, type RPCMetadata } from '@opentelemetry/core';
import { InstrumentationBase, InstrumentationNodeModuleDefinition, isWrapped, type InstrumentationConfig } from '@opentelemetry/instrumentation';
import forwardedParse from 'forwarded-parse';
import { DurationHistogram } from './durationHistogram';

export interface HttpServerInstrumentationConfig extends InstrumentationConfig {
  /** Request paths (without query) that produce no span. */
  excludedPaths?: readonly string[];
  /**
   * Records the HTTP server metrics. Off unless a metrics exporter runs, so
   * that traces alone cost what they did.
   */
  metrics?: boolean;
}

type Component = 'http' | 'https';
type Emit = (this: unknown, event: string | symbol, ...args: unknown[]) => boolean;

const SERVER_SPAN = { kind: SpanKind.SERVER } as const;
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY']);
const QUERY_KEYS_TO_REDACT = ['sig', 'Signature', 'AWSAccessKeyId', 'X-Goog-Signature', 'X-Amz-Signature', 'X-Amz-Credential', 'X-Amz-Security-Token'];

/** A path the WHATWG URL parser returns unchanged: no dot segments, no characters it would encode. */
const PLAIN_PATH = /^\/(?:[A-Za-z0-9\-_~!$&()*+,;=:@/]|%(?![2][eE])[0-9A-Fa-f]{2}|\.(?![./]|$))*$/;
/** A host name (not all-numeric labels, which the URL parser reads as IPv4) or IPv4 address, with an optional valid port. */
function isPlainHost(host: string): boolean {
  const match = /^([A-Za-z0-9\-.]+)(?::(\d{1,5}))?$/.exec(host);
  if (match === null || Number(match[2] ?? 0) > 65535) return false;
  const name = match[1] ?? '';
  const labels = name.split('.');
  if (!/^\d+$/.test(labels[labels.length - 1] ?? '')) return !name.startsWith('.') && !name.includes('..');
  return labels.length === 4 && labels.every((label) => /^(?:0|[1-9]\d{0,2})$/.test(label) && Number(label) <= 255);
}

function normalizeMethod(method: string | undefined): string {
  if (method == null) return 'GET';
  const upper = method.toUpperCase();
  return KNOWN_METHODS.has(upper) ? upper : '_OTHER';
}

/** `host[:port]` as the library parses it (semconv 1.27 server.address/port). */
function parseHostHeader(hostHeader: string, proto?: string): { host: string; port?: string } {
  const parts = hostHeader.split(':');
  const defaultPort = proto === 'http' ? '80' : proto === 'https' ? '443' : undefined;
  if (parts.length === 1) return defaultPort === undefined ? { host: hostHeader } : { host: hostHeader, port: defaultPort };
  if (parts.length === 2) return { host: parts[0] ?? '', port: parts[1] };
  if (parts[0]?.startsWith('[')) {
    if (parts[parts.length - 1]?.endsWith(']')) {
      if (defaultPort !== undefined) return { host: hostHeader, port: defaultPort };
    } else if (parts[parts.length - 2]?.endsWith(']')) {
      return { host: parts.slice(0, -1).join(':'), port: parts[parts.length - 1] };
    }
  }
  return { host: hostHeader };
}

/** The `Forwarded` header's entries, or none when it does not parse (the library's `parseForwardedHeader`). */
function parseForwarded(header: string): Array<{ host?: string; proto?: string; for?: string }> {
  try {
    return forwardedParse(header);
  } catch {
    return [];
  }
}

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function serverAddress(request: IncomingMessage, component: Component): { host: string; port?: string } | null {
  const headers = request.headers;
  const forwarded = headers.forwarded;
  if (forwarded) {
    for (const entry of parseForwarded(forwarded)) if (entry.host) return parseHostHeader(entry.host, entry.proto);
  }
  const forwardedHost = headers['x-forwarded-host'];
  const forwardedHostValue = typeof forwardedHost === 'string' ? forwardedHost : Array.isArray(forwardedHost) && forwardedHost[0] ? forwardedHost[0] : undefined;
  if (forwardedHostValue !== undefined) return parseHostHeader(forwardedHostValue, first(headers['x-forwarded-proto']));
  const host = headers.host;
  return typeof host === 'string' && host.length > 0 ? parseRequestHost(host, component) : null;
}

/**
 * The `Host` header of nearly every request to a server is one of a few
 * values: the last one's parse is kept (read-only) for the next request.
 */
let lastHost: { header: string; component: Component; parsed: { host: string; port?: string }; plain: boolean } | undefined;

function hostInfo(header: string, component: Component): NonNullable<typeof lastHost> {
  if (lastHost?.header === header && lastHost.component === component) return lastHost;
  lastHost = { header, component, parsed: parseHostHeader(header, component), plain: isPlainHost(header) };
  return lastHost;
}

function parseRequestHost(header: string, component: Component): { host: string; port?: string } {
  return hostInfo(header, component).parsed;
}

function removePortFromAddress(input: string): string {
  try {
    const { hostname } = new URL(`http://${input}`);
    return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  } catch {
    return input;
  }
}

function clientAddress(request: IncomingMessage): string | null {
  const headers = request.headers;
  if (headers.forwarded) {
    for (const entry of parseForwarded(headers.forwarded)) if (entry.for) return removePortFromAddress(entry.for);
  }
  const forwardedFor = first(headers['x-forwarded-for']);
  if (typeof forwardedFor === 'string') return removePortFromAddress(forwardedFor.split(',')[0]?.trim() ?? '');
  return request.socket.remoteAddress ?? null;
}

/** Path and query of the request target, exactly as the library derives them. */
function target(request: IncomingMessage, component: Component): { pathname?: string; search?: string } {
  const url = request.url ?? '/';
  const host = request.headers.host;
  if ((host === undefined || hostInfo(host, component).plain) && url.indexOf('?') === -1 && PLAIN_PATH.test(url)) return { pathname: url, search: '' };
  try {
    if (host) return new URL(url, `${component}://${host}`);
    const parsed = new URL(url, `${component}://localhost`);
    return { pathname: parsed.pathname, search: parsed.search };
  } catch {
    return {};
  }
}

function redactQuery(search: string): string {
  const params = new URLSearchParams(search);
  for (const key of QUERY_KEYS_TO_REDACT) if (params.has(key)) params.set(key, 'REDACTED');
  return params.toString();
}

function requestAttributes(request: IncomingMessage, component: Component): Attributes {
  const method = request.method;
  const normalized = normalizeMethod(method);
  const server = serverAddress(request, component);
  const client = clientAddress(request);
  const { pathname, search } = target(request, component);
  const attributes: Attributes = {
    'http.request.method': normalized,
    'url.scheme': component,
    'server.address': server?.host,
    'network.peer.address': request.socket.remoteAddress,
    'network.peer.port': request.socket.remotePort,
    'network.protocol.version': request.httpVersion,
    'user_agent.original': request.headers['user-agent'],
  };
  if (pathname != null) attributes['url.path'] = pathname;
  if (search) attributes['url.query'] = redactQuery(search.slice(1));
  if (client != null) attributes['client.address'] = client;
  if (server?.port != null) attributes['server.port'] = Number(server.port);
  if (method !== normalized) attributes['http.request.method_original'] = method;
  return attributes;
}

const SPAN_KEY = createContextKey('OpenTelemetry Context Key SPAN');
const RPC_METADATA_KEY = createContextKey('OpenTelemetry SDK Context Key RPC_METADATA');

/**
 * The request's context: its parent's values plus the server span and the
 * RPC metadata, as `setRPCMetadata(trace.setSpan(parent, span), rpc)` would
 * give, in one small object instead of two `BaseContext`s (each a copied Map
 * and three closures; ~2 µs a request here). The full context is built only
 * if a value is set on it (a child span, say).
 */
class RequestContext implements Context {
  private full: Context | undefined;

  constructor(
    private readonly parent: Context,
    private readonly span: Span,
    private readonly rpc: RPCMetadata,
  ) {}

  getValue(key: symbol): unknown {
    if (key === SPAN_KEY) return this.span;
    if (key === RPC_METADATA_KEY) return this.rpc;
    return this.parent.getValue(key);
  }

  setValue(key: symbol, value: unknown): Context {
    return this.standard().setValue(key, value);
  }

  deleteValue(key: symbol): Context {
    return this.standard().deleteValue(key);
  }

  private standard(): Context {
    return (this.full ??= setRPCMetadata(trace.setSpan(this.parent, this.span), this.rpc));
  }
}

/** Whether the API reads the keys above (checked on the first request); if not, its own context is used. */
let lightContexts: boolean | undefined;

function requestContext(parent: Context, span: Span, rpc: RPCMetadata): Context {
  const light = new RequestContext(parent, span, rpc);
  lightContexts ??= trace.getSpan(light) === span && getRPCMetadata(light) === rpc;
  return lightContexts ? light : setRPCMetadata(trace.setSpan(parent, span), rpc);
}

/** Semantic conventions' recommended boundaries for `http.server.request.duration`, in seconds. */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];
const DURATION = { name: 'http.server.request.duration', unit: 's', description: 'Duration of HTTP server requests.' };

/**
 * The stable HTTP server metrics, by the semantic conventions:
 *
 * - `http.server.request.duration` (histogram, seconds), with
 *   `http.request.method` (known methods, else `_OTHER`), `url.scheme`,
 *   `http.response.status_code`, `http.route` (the route template the app
 *   matched, never the raw path: absent when none matched) and `error.type`
 *   on a 5xx. Every attribute comes from a closed set, so hostile paths add
 *   no series.
 * - `http.server.active_requests` (up-down counter, method and scheme),
 *   observed from a plain number per method rather than recorded twice a
 *   request: the same data, without two attribute hashes on the request path.
 */
class ServerMetrics {
  private readonly active = new Map<string, { count: number; readonly attributes: Attributes }>();
  /** Totals since start, for PM2's monitor (see pm2Monitor.ts). */
  readonly totals = { requests: 0, seconds: 0 };

  constructor(
    /** The kit's aggregation of the histogram (durationHistogram.ts), or the SDK's histogram where the readers need it. */
    private readonly duration: DurationHistogram | Histogram,
    meter: Meter,
  ) {
    meter
      .createObservableUpDownCounter('http.server.active_requests', {
        unit: '{request}',
        description: 'Number of active HTTP server requests.',
      })
      .addCallback((result) => {
        for (const { count, attributes } of this.active.values()) result.observe(count, attributes);
      });
  }

  /** Counts a request as active; returns its slot, to release when it ends. */
  begin(method: string, component: Component): { count: number } {
    const key = component === 'http' ? method : `${method} https`;
    let slot = this.active.get(key);
    if (slot === undefined) {
      slot = { count: 0, attributes: { 'http.request.method': method, 'url.scheme': component } };
      this.active.set(key, slot);
    }
    slot.count += 1;
    return slot;
  }

  end(slot: { count: number }, startedAt: number, method: string, component: Component, status: number, route: string | undefined, errorType: string | undefined): void {
    slot.count -= 1;
    const error = status >= 500 ? String(status) : errorType;
    const seconds = (performance.now() - startedAt) / 1000;
    this.totals.requests += 1;
    this.totals.seconds += seconds;
    const duration = this.duration;
    if (duration instanceof DurationHistogram) {
      duration.record(seconds, method, component, status, route, error);
      return;
    }
    const attributes: Attributes = { 'http.request.method': method, 'url.scheme': component, 'http.response.status_code': status };
    if (route) attributes['http.route'] = route;
    if (error !== undefined) attributes['error.type'] = error;
    duration.record(seconds, attributes);
  }

  activeRequests(): number {
    let total = 0;
    for (const { count } of this.active.values()) total += count;
    return total;
  }
}

function setError(span: Span, error: Error): void {
  span.setAttribute('error.type', error.name);
  span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
  span.recordException(error);
}

export class HttpServerInstrumentation extends InstrumentationBase<HttpServerInstrumentationConfig> {
  /** Set once a real MeterProvider is given (NodeSDK does it at start), if metrics are on. */
  declare private serverMetrics: ServerMetrics | undefined;

  /**
   * The kit's aggregation of `http.server.request.duration` (see
   * durationHistogram.ts), with metrics on: the preload gives each metric
   * reader a producer of it, and enables it where every reader takes the
   * default aggregation.
   */
  readonly durations: DurationHistogram | undefined;

  constructor(config: HttpServerInstrumentationConfig = {}) {
    super('koa-pm2-otel/http-server', '1.0.0', config);
    this.durations = config.metrics === true ? new DurationHistogram({ name: this.instrumentationName, version: this.instrumentationVersion, schemaUrl: undefined }, { ...DURATION, boundaries: DURATION_BUCKETS }) : undefined;
  }

  /** Requests answered and their total duration since start, and requests in flight; undefined with metrics off. */
  requestTotals(): { requests: number; seconds: number; active: number } | undefined {
    const metrics = this.serverMetrics;
    return metrics === undefined ? undefined : { ...metrics.totals, active: metrics.activeRequests() };
  }

  protected override _updateMetricInstruments(): void {
    if (this.getConfig().metrics !== true) return;
    // The preload has enabled the kit's aggregation (or not) by now: it decides when it makes the readers, before NodeSDK starts.
    const duration = this.durations?.enabled === true ? this.durations : this.meter.createHistogram(DURATION.name, { unit: DURATION.unit, description: DURATION.description, advice: { explicitBucketBoundaries: DURATION_BUCKETS } });
    this.serverMetrics = new ServerMetrics(duration, this.meter);
  }

  protected init(): InstrumentationNodeModuleDefinition[] {
    return (['http', 'https'] as const).map(
      (component) =>
        new InstrumentationNodeModuleDefinition(
          component,
          ['*'],
          (exports: typeof import('node:http')) => {
            const prototype = exports.Server.prototype as unknown as { emit: Emit };
            if (isWrapped(prototype.emit)) this._unwrap(prototype, 'emit');
            this._wrap(prototype, 'emit', (original: Emit) => this.patchEmit(original, component));
            return exports;
          },
          (exports: typeof import('node:http')) => {
            this._unwrap(exports.Server.prototype, 'emit');
            return exports;
          },
        ),
    );
  }

  private patchEmit(original: Emit, component: Component): Emit {
    const tracer = (): typeof this.tracer => this.tracer;
    const metrics = (): ServerMetrics | undefined => this.serverMetrics;
    const excluded = new Set(this.getConfig().excludedPaths ?? []);
    return function emit(this: unknown, event: string | symbol): boolean {
      // eslint-disable-next-line prefer-rest-params -- no array is allocated for the many other events
      const args = arguments as unknown as unknown[];
      if (event !== 'request') return original.apply(this, args as [string]);
      const request = args[1] as IncomingMessage;
      const response = args[2] as ServerResponse;

      const serverMetrics = metrics();
      if (excluded.size > 0) {
        const url = request.url ?? '';
        const end = url.indexOf('?');
        if (excluded.has(end === -1 ? url : url.slice(0, end))) {
          if (serverMetrics === undefined) return context.with(suppressTracing(context.active()), () => original.apply(this, args as [string]));
          // No span, but the request counts: the duration metric covers every
          // request the server answered (semantic conventions), and a slow or
          // failing health check is worth seeing. The RPC metadata lets the
          // app name its route, as for any request.
          const rpc: RPCMetadata = { type: RPCType.HTTP, span: trace.wrapSpanContext(INVALID_SPAN_CONTEXT) };
          const methodName = normalizeMethod(request.method);
          const slot = serverMetrics.begin(methodName, component);
          const startedAt = performance.now();
          response.once('close', () => serverMetrics.end(slot, startedAt, methodName, component, response.statusCode, rpc.route, undefined));
          return context.with(setRPCMetadata(suppressTracing(context.active()), rpc), () => original.apply(this, args as [string]));
        }
      }

      const method = request.method || 'GET';
      const parent = propagation.extract(ROOT_CONTEXT, request.headers);
      // The attributes are set on the started span rather than passed to
      // startSpan: the SDK validates start attributes twice (for the sampler,
      // then for the span), ~5 µs a request here, and no sampler the kit can
      // be configured with (OTEL_TRACES_SAMPLER) reads them. An unsampled
      // request then skips computing them at all.
      const span = tracer().startSpan(method, SERVER_SPAN, parent);
      if (span.isRecording()) span.setAttributes(requestAttributes(request, component));
      const rpc: RPCMetadata = { type: RPCType.HTTP, span };
      let ended = false;
      let errorType: string | undefined;
      const methodName = serverMetrics === undefined ? '' : normalizeMethod(method);
      const slot = serverMetrics?.begin(methodName, component);
      const startedAt = serverMetrics === undefined ? 0 : performance.now();
      response.on('close', () => {
        if (slot !== undefined) serverMetrics?.end(slot, startedAt, methodName, component, response.statusCode, rpc.route, errorType);
        if (ended) return;
        ended = true;
        const status = response.statusCode;
        const attributes: Attributes = { 'http.response.status_code': status };
        if (rpc.route !== undefined) attributes['http.route'] = rpc.route;
        span.setAttributes(attributes).setStatus({ code: status >= 100 && status < 500 ? SpanStatusCode.UNSET : SpanStatusCode.ERROR });
        if (status >= 500 && status < 600) span.setAttribute('error.type', String(status));
        if (rpc.route) span.updateName(`${method} ${rpc.route}`);
        span.end();
      });
      response.on(errorMonitor, (error: Error) => {
        errorType ??= error.name;
        if (ended) return;
        ended = true;
        setError(span, error);
        span.end();
      });

      return context.with(requestContext(parent, span, rpc), () => {
        try {
          return original.apply(this, args as [string]);
        } catch (error) {
          if (!ended && error instanceof Error) {
            errorType ??= error.name;
            ended = true;
            setError(span, error);
            span.end();
          }
          throw error;
        }
      });
    };
  }
}
