/**
 * The OTLP/gRPC transport on `node:http2`, in place of grpc-js.
 *
 * Why: per export, the library's gRPC transport copies the request
 * (`Buffer.from`) and grpc-js copies it again to frame it. Those two dead
 * ~200 KB buffers per batch are most of the `ArrayBuffer` churn that drives
 * V8's mark-compacts under load, and so the p99 of a traced service over
 * gRPC (README, Performance). This transport sends the serializer's bytes
 * as they are, behind a 5-byte gRPC frame header, on one HTTP/2 session.
 *
 * What it keeps of grpc-js's unary call, as the OTLP exporter uses it:
 * - `http://` targets over cleartext HTTP/2 (prior knowledge), `https://`
 *   over TLS with the `OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE`,
 *   `CLIENT_KEY` and `CLIENT_CERTIFICATE` files;
 * - `OTEL_EXPORTER_OTLP_[SIGNAL_]HEADERS` as metadata, gzip compression
 *   (`OTEL_EXPORTER_OTLP_[SIGNAL_]COMPRESSION`), the deadline sent as
 *   `grpc-timeout` and enforced here, the library's user agent;
 * - gRPC status from trailers (or a trailers-only answer), HTTP statuses and
 *   stream resets mapped to gRPC codes as grpc-js maps them, and errors
 *   shaped as grpc-js's (`code`, `details`, message `14 UNAVAILABLE: …`), so
 *   the outage wrapper and the exporter's self-metrics read them the same;
 * - an HTTP CONNECT proxy from `grpc_proxy` / `https_proxy` / `http_proxy`
 *   unless `no_grpc_proxy` / `no_proxy` lists the host, as grpc-js reads them;
 * - a session reopened after the collector closes it (GOAWAY, reset,
 *   refused), and kept from holding the process open while idle.
 *
 * Not kept, as the OTLP exporter does not use them: streaming calls, name
 * resolution beyond the system's (grpc-js's `dns:`/`xds:` schemes, load
 * balancing over several addresses), keepalive pings (off by default in
 * grpc-js too), `unix:` targets (the kit's settings take http(s) URLs only).
 *
 * It is plugged in through `createOtlpNetworkExportDelegate`, the library's
 * public seam for transports; everything above it (the delegate, the
 * exporter base, self-metrics) is the library's, as before.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';

import { diag } from '@opentelemetry/api';
import { parseKeyPairsIntoRecord } from '@opentelemetry/core';
import type { ExportResponse, IExporterTransport, IOtlpExportDelegate } from '@opentelemetry/otlp-exporter-base';
import type { IExporterMetricsHelper, ISerializer } from '@opentelemetry/otlp-transformer';

const gzip = promisify(zlib.gzip);
const gunzip = promisify(zlib.gunzip);

/** gRPC status codes, by number (grpc-js's `status` enum). */
export const GRPC_STATUS = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
] as const;

const CANCELLED = 1;
const UNKNOWN = 2;
const DEADLINE_EXCEEDED = 4;
const RESOURCE_EXHAUSTED = 8;
const PERMISSION_DENIED = 7;
const UNIMPLEMENTED = 12;
const INTERNAL = 13;
const UNAVAILABLE = 14;
const UNAUTHENTICATED = 16;

/** Largest answer accepted (grpc-js's default receive limit). */
const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

/** An error as grpc-js gives one to the exporter: `code`, `details`, and a message that names both. */
export class GrpcCallError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
  ) {
    super(`${code} ${GRPC_STATUS[code] ?? 'UNKNOWN'}: ${details}`);
    this.name = 'GrpcCallError';
  }
}

/** HTTP statuses of a non-gRPC answer, as gRPC codes (gRPC's http-grpc-status-mapping, as grpc-js applies it). */
function statusFromHttp(httpStatus: number): number {
  switch (httpStatus) {
    case 400:
      return INTERNAL;
    case 401:
      return UNAUTHENTICATED;
    case 403:
      return PERMISSION_DENIED;
    case 404:
      return UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return UNAVAILABLE;
    default:
      return UNKNOWN;
  }
}

/** An HTTP/2 stream reset, as a gRPC code (as grpc-js maps RST_STREAM). */
function statusFromReset(rstCode: number): number {
  const c = http2.constants;
  switch (rstCode) {
    case c.NGHTTP2_REFUSED_STREAM:
      return UNAVAILABLE;
    case c.NGHTTP2_CANCEL:
      return CANCELLED;
    case c.NGHTTP2_ENHANCE_YOUR_CALM:
      return RESOURCE_EXHAUSTED;
    case c.NGHTTP2_INADEQUATE_SECURITY:
      return PERMISSION_DENIED;
    default:
      return INTERNAL;
  }
}

/** `grpc-message` is percent-encoded (gRPC over HTTP/2). */
function decodeMessage(value: string | string[] | undefined): string {
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

export interface GrpcTransportOptions {
  /** `http://host:port` or `https://host:port`; a path is ignored, as grpc-js ignores it. */
  readonly url: string;
  /** The method's path, e.g. `/opentelemetry.proto.collector.trace.v1.TraceService/Export`. */
  readonly method: string;
  /** Metadata sent with every call; names in lower case. */
  readonly metadata?: Readonly<Record<string, string>>;
  readonly compression?: 'gzip' | 'none';
  readonly userAgent?: string;
  /** TLS material for `https://` (PEM); the system's roots when `ca` is unset. */
  readonly tls?: { readonly ca?: Buffer; readonly key?: Buffer; readonly cert?: Buffer };
}

/** An HTTP proxy for CONNECT tunnels, as grpc-js reads it from the environment. */
interface Proxy {
  readonly host: string;
  readonly port: number;
  /** `user:password`, decoded, for `Proxy-Authorization`; never printed. */
  readonly credentials: string | undefined;
}

/**
 * The proxy grpc-js would use for `host`: `grpc_proxy`, else `https_proxy`,
 * else `http_proxy` (an `http://` URL), unless `no_grpc_proxy` (else
 * `no_proxy`) lists the host: an IPv4 CIDR that contains it, or a suffix of
 * its name or address. As in grpc-js, only the lower-case names count, and
 * loopback is not exempt unless listed.
 */
export function proxyFor(host: string, env: NodeJS.ProcessEnv = process.env): Proxy | undefined {
  const name = env.grpc_proxy ? 'grpc_proxy' : env.https_proxy ? 'https_proxy' : env.http_proxy ? 'http_proxy' : undefined;
  if (name === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(env[name] as string);
  } catch {
    diag.error(`cannot parse value of "${name}" env var`);
    return undefined;
  }
  if (url.protocol !== 'http:') {
    diag.error(`"${url.protocol}" scheme not supported in proxy URI`);
    return undefined;
  }
  const exempt = env.no_grpc_proxy || env.no_proxy;
  for (const entry of exempt ? exempt.split(',') : []) {
    const cidr = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(entry);
    if (cidr !== null && net.isIPv4(host) && Number(cidr[2]) <= 32) {
      const mask = Number(cidr[2]) === 0 ? 0 : (-1 << (32 - Number(cidr[2]))) >>> 0;
      if (((ipv4(host) & mask) >>> 0) === ((ipv4(cidr[1] as string) & mask) >>> 0)) return undefined;
    } else if (host.endsWith(entry)) {
      return undefined;
    }
  }
  const user = url.username ? decodeURIComponent(url.username) : '';
  const credentials = user === '' ? undefined : url.password ? `${user}:${decodeURIComponent(url.password)}` : user;
  return { host: url.hostname, port: Number(url.port || 80), credentials };
}

function ipv4(address: string): number {
  return address.split('.').reduce((value, octet) => ((value << 8) + Number(octet)) >>> 0, 0);
}

/** A CONNECT tunnel to `authority` through `proxy`: the socket once the proxy answered 200. */
function tunnel(proxy: Proxy, authority: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { host: authority };
    if (proxy.credentials !== undefined) headers['proxy-authorization'] = `Basic ${Buffer.from(proxy.credentials).toString('base64')}`;
    const request = http.request({ host: proxy.host, port: proxy.port, method: 'CONNECT', path: authority, headers, agent: false });
    request.once('connect', (response, socket, head) => {
      request.removeAllListeners();
      if (response.statusCode === 200) {
        if (head.length > 0) socket.unshift(head);
        resolve(socket);
      } else {
        socket.destroy();
        reject(new Error(`proxy ${proxy.host}:${proxy.port} answered CONNECT ${authority} with HTTP ${response.statusCode}`));
      }
    });
    request.once('error', (error) => {
      request.removeAllListeners();
      reject(new Error(`proxy ${proxy.host}:${proxy.port}: ${error.message}`));
    });
    request.end();
  });
}

export class Http2GrpcTransport implements IExporterTransport {
  /** The session being opened or open; unset before the first call and after the collector closed it. */
  private opening: Promise<http2.ClientHttp2Session> | undefined;
  private session: http2.ClientHttp2Session | undefined;
  /** Why the current session failed, for the calls it fails. */
  private sessionError: Error | undefined;
  private inFlight = 0;
  private closed = false;
  private readonly target: URL;
  /** The target's host name or address, without an IPv6 address's brackets. */
  private readonly host: string;
  private readonly headers: http2.OutgoingHttpHeaders;
  private readonly proxy: Proxy | undefined;

  constructor(private readonly options: GrpcTransportOptions) {
    this.target = new URL(options.url);
    this.host = this.target.hostname.replace(/^\[(.*)\]$/, '$1');
    this.proxy = proxyFor(this.host);
    this.headers = {
      ...options.metadata,
      [http2.constants.HTTP2_HEADER_METHOD]: 'POST',
      [http2.constants.HTTP2_HEADER_PATH]: options.method,
      'content-type': 'application/grpc',
      te: 'trailers',
      'grpc-accept-encoding': 'identity,gzip',
      ...(options.compression === 'gzip' ? { 'grpc-encoding': 'gzip' } : {}),
      ...(options.userAgent === undefined ? {} : { 'user-agent': options.userAgent }),
    };
  }

  async send(data: Uint8Array, timeoutMillis: number): Promise<ExportResponse> {
    if (this.closed) return { status: 'failure', error: new GrpcCallError(UNAVAILABLE, 'transport shut down') };
    let body: Buffer = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const compressed = this.options.compression === 'gzip';
    if (compressed) body = await gzip(body);
    return new Promise((resolve) => this.call(body, compressed, timeoutMillis, resolve));
  }

  shutdown(): void {
    this.closed = true;
    const session = this.session;
    this.forget(session);
    // Calls in flight finish; the session closes after them.
    session?.close();
  }

  private forget(session: http2.ClientHttp2Session | undefined): void {
    if (session !== undefined && this.session !== session) return;
    this.session = undefined;
    this.opening = undefined;
  }

  /** The open session, or a new one (through the proxy's tunnel when there is one). */
  private connect(): Promise<http2.ClientHttp2Session> {
    const current = this.session;
    if (this.opening !== undefined && (current === undefined || (!current.closed && !current.destroyed))) return this.opening;
    this.sessionError = undefined;
    const opening = this.open();
    this.opening = opening;
    opening.catch(() => {
      if (this.opening === opening) this.opening = undefined;
    });
    return opening;
  }

  private async open(): Promise<http2.ClientHttp2Session> {
    const secure = this.target.protocol === 'https:';
    const tlsOptions = secure
      ? {
          ca: this.options.tls?.ca,
          key: this.options.tls?.key,
          cert: this.options.tls?.cert,
          ALPNProtocols: ['h2'],
          ...(net.isIP(this.host) === 0 ? { servername: this.host } : {}),
        }
      : {};
    let createConnection: (() => Duplex) | undefined;
    if (this.proxy !== undefined) {
      const socket = await tunnel(this.proxy, `${this.target.hostname}:${this.target.port || (secure ? '443' : '80')}`);
      if (this.closed) {
        socket.destroy();
        throw new Error('transport shut down');
      }
      createConnection = () => (secure ? tls.connect({ ...tlsOptions, socket }) : socket);
    }
    const session = http2.connect(`${this.target.protocol}//${this.target.host}`, {
      ...tlsOptions,
      ...(createConnection === undefined ? {} : { createConnection }),
      settings: { enablePush: false },
    });
    session.on('error', (error: Error) => {
      this.sessionError = error;
      this.forget(session);
    });
    session.on('goaway', () => this.forget(session));
    session.on('close', () => this.forget(session));
    if (this.inFlight === 0) session.unref();
    this.session = session;
    if (this.closed) session.close();
    return session;
  }

  private call(body: Buffer, compressed: boolean, timeoutMillis: number, resolve: (response: ExportResponse) => void): void {
    const timeout = Math.max(1, Math.min(Math.ceil(timeoutMillis), 99_999_999));
    let stream: http2.ClientHttp2Stream | undefined;
    let settled = false;
    this.inFlight++;
    const finish = (response: ExportResponse): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (--this.inFlight === 0) this.session?.unref();
      resolve(response);
    };
    const fail = (code: number, details: string): void => finish({ status: 'failure', error: new GrpcCallError(code, details) });
    const timer = setTimeout(() => {
      fail(DEADLINE_EXCEEDED, `Deadline exceeded after ${timeout} ms`);
      stream?.close(http2.constants.NGHTTP2_CANCEL);
    }, timeout);

    this.connect().then(
      (session) => {
        if (settled) return;
        try {
          session.ref();
          stream = session.request({ ...this.headers, 'grpc-timeout': `${timeout}m` });
        } catch (error) {
          // A session that failed before this call reached it: say why it failed.
          const reason = this.sessionError ?? (error instanceof Error ? error : new Error(String(error)));
          fail(UNAVAILABLE, `No connection established. Last error: ${reason.message}`);
          return;
        }
        this.exchange(stream, body, compressed, fail, finish);
      },
      (error: Error) => fail(UNAVAILABLE, `No connection established. Last error: ${error.message}`),
    );
  }

  /** Sends the framed request on `stream` and settles the call by its answer. */
  private exchange(
    stream: http2.ClientHttp2Stream,
    body: Buffer,
    compressed: boolean,
    fail: (code: number, details: string) => void,
    finish: (response: ExportResponse) => void,
  ): void {
    let httpStatus = 0;
    let grpcStatus: number | undefined;
    let grpcMessage = '';
    let encoding = 'identity';
    const chunks: Buffer[] = [];
    let received = 0;

    const readStatus = (headers: http2.IncomingHttpHeaders): void => {
      const value = headers['grpc-status'];
      if (value === undefined) return;
      const code = Number(value);
      grpcStatus = Number.isInteger(code) && code >= 0 && code <= 16 ? code : UNKNOWN;
      grpcMessage = decodeMessage(headers['grpc-message']);
    };

    stream.on('response', (headers) => {
      httpStatus = Number(headers[http2.constants.HTTP2_HEADER_STATUS]);
      const enc = headers['grpc-encoding'];
      if (typeof enc === 'string') encoding = enc;
      readStatus(headers);
    });
    stream.on('trailers', readStatus);
    stream.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > MAX_RESPONSE_BYTES + 5) {
        fail(RESOURCE_EXHAUSTED, `Received message larger than max (${received} vs ${MAX_RESPONSE_BYTES})`);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        return;
      }
      chunks.push(chunk);
    });
    let streamError: (Error & { code?: string }) | undefined;
    stream.on('error', (error: Error) => {
      // Settled on 'close', where the reason is known.
      streamError = error;
    });
    stream.on('close', () => {
      if (httpStatus === 0) {
        // No answer: either the peer reset this stream (its code says why),
        // or the connection failed (refused, TLS, closed), which gRPC calls UNAVAILABLE.
        const reset = streamError === undefined || streamError.code === 'ERR_HTTP2_STREAM_ERROR';
        if (reset && this.sessionError === undefined && stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
          fail(statusFromReset(stream.rstCode), `Received RST_STREAM with code ${stream.rstCode}`);
        } else {
          // A stream cancelled because its session failed carries that failure as its cause.
          const cause = streamError?.cause as { message?: unknown } | undefined;
          const reason = this.sessionError?.message ?? (typeof cause?.message === 'string' ? cause.message : streamError?.message);
          fail(UNAVAILABLE, reason === undefined ? 'Connection closed before an answer' : `No connection established. Last error: ${reason}`);
        }
      } else if (httpStatus !== 200) {
        fail(statusFromHttp(httpStatus), `Received HTTP status code ${httpStatus}`);
      } else if (grpcStatus === undefined) {
        fail(statusFromReset(stream.rstCode ?? http2.constants.NGHTTP2_INTERNAL_ERROR), 'Received no status from the server');
      } else if (grpcStatus !== 0) {
        fail(grpcStatus, grpcMessage);
      } else {
        this.unframe(Buffer.concat(chunks, received), encoding).then(
          (message) => finish({ status: 'success', data: message }),
          (error: Error) => fail(INTERNAL, error.message),
        );
      }
    });

    const header = Buffer.allocUnsafe(5);
    header[0] = compressed ? 1 : 0;
    header.writeUInt32BE(body.length, 1);
    stream.write(header);
    stream.end(body);
  }

  /** The answer's message, out of its gRPC frame (an empty answer is an empty message). */
  private async unframe(frame: Buffer, encoding: string): Promise<Uint8Array> {
    if (frame.length === 0) return new Uint8Array(0);
    if (frame.length < 5) throw new Error('Truncated message frame');
    const length = frame.readUInt32BE(1);
    const message = frame.subarray(5, 5 + length);
    if (message.length !== length) throw new Error('Truncated message frame');
    if (frame[0] === 0) return message;
    if (encoding === 'gzip') return gunzip(message);
    throw new Error(`Received a message compressed with unsupported encoding "${encoding}"`);
  }
}

type Signal = 'TRACES' | 'METRICS' | 'LOGS';

/** A signal's variable, over the generic one (the OTLP exporter spec); blank counts as unset. */
function fromEnv(signal: Signal, suffix: string): string | undefined {
  for (const name of [`OTEL_EXPORTER_OTLP_${signal}_${suffix}`, `OTEL_EXPORTER_OTLP_${suffix}`]) {
    const value = process.env[name]?.trim();
    if (value !== undefined && value !== '') return value;
  }
  return undefined;
}

function readPem(signal: Signal, suffix: string, what: string): Buffer | undefined {
  const file = fromEnv(signal, suffix);
  if (file === undefined) return undefined;
  try {
    return fs.readFileSync(path.resolve(process.cwd(), file));
  } catch {
    diag.warn(`Failed to read ${what} file`);
    return undefined;
  }
}

/**
 * The transport's options for a signal's URL, from the same variables, with
 * the same precedence and defaults, as the library's gRPC exporters read
 * them (`@opentelemetry/otlp-grpc-exporter-base`'s env configuration).
 */
export function grpcTransportOptionsFromEnv(url: string, signal: Signal, method: string, userAgent: string): GrpcTransportOptions {
  const metadata: Record<string, string> = {};
  const generic = parseKeyPairsIntoRecord(process.env.OTEL_EXPORTER_OTLP_HEADERS?.trim());
  const specific = parseKeyPairsIntoRecord(process.env[`OTEL_EXPORTER_OTLP_${signal}_HEADERS`]?.trim());
  for (const [name, value] of Object.entries({ ...generic, ...specific })) metadata[name.toLowerCase()] = value;
  const compression = fromEnv(signal, 'COMPRESSION') === 'gzip' ? 'gzip' : 'none';
  let tls: GrpcTransportOptions['tls'];
  if (url.startsWith('https://')) {
    const ca = readPem(signal, 'CERTIFICATE', 'root certificate');
    let key = readPem(signal, 'CLIENT_KEY', 'client certificate private key');
    let cert = readPem(signal, 'CLIENT_CERTIFICATE', 'client certificate chain');
    if ((key === undefined) !== (cert === undefined)) {
      diag.warn('Client key and certificate must both be provided, but one was missing - attempting to create credentials from just the root certificate');
      key = cert = undefined;
    }
    tls = { ca, key, cert };
  }
  return { url, method, metadata, compression, userAgent, tls };
}

/** The library's user agent, `OTel-OTLP-Exporter-JavaScript/<version>`, as its gRPC exporters send it. */
function libraryUserAgent(): string {
  try {
    const manifest = path.join(path.dirname(require.resolve('@opentelemetry/otlp-grpc-exporter-base')), '..', 'package.json');
    const { version } = JSON.parse(fs.readFileSync(manifest, 'utf8')) as { version: string };
    return `OTel-OTLP-Exporter-JavaScript/${version}`;
  } catch {
    return 'OTel-OTLP-Exporter-JavaScript';
  }
}

/**
 * The export delegate of an OTLP/gRPC exporter, as
 * `createOtlpGrpcExportDelegate` makes it (the same configuration from the
 * environment, concurrency limit, timeout and self-metrics), on this
 * transport instead of grpc-js.
 */
export function createHttp2GrpcExportDelegate<Internal, Response>(
  url: string,
  signal: Signal,
  serializer: ISerializer<Internal, Response>,
  componentType: string,
  metricsHelper: IExporterMetricsHelper<Internal>,
  method: string,
): IOtlpExportDelegate<Internal> {
  const { createOtlpNetworkExportDelegate } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
  const grpcBase = require('@opentelemetry/otlp-grpc-exporter-base') as typeof import('@opentelemetry/otlp-grpc-exporter-base');
  const options = grpcBase.convertLegacyOtlpGrpcOptions({ url }, signal);
  return createOtlpNetworkExportDelegate(
    options,
    serializer,
    grpcBase.createOtlpGrpcExporterMetrics<Internal>(componentType, metricsHelper, options.url, undefined),
    new Http2GrpcTransport(grpcTransportOptionsFromEnv(url, signal, method, libraryUserAgent())),
  );
}
