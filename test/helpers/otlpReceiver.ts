/**
 * A real OTLP trace receiver for tests: an OTLP/gRPC server and an OTLP/HTTP server
 * (protobuf, optionally gzip, and best-effort JSON) on random local ports, decoding
 * every export into flat {@link ReceivedSpan}s. It takes OTLP metrics too (gRPC and
 * HTTP protobuf, `/v1/metrics`), as flat {@link ReceivedMetric} data points, and OTLP logs
 * (gRPC and HTTP protobuf, `/v1/logs`), as flat {@link ReceivedLogRecord}s.
 *
 * @example
 *   const receiver = await startReceiver();
 *   // point the exporter at receiver.grpcUrl or `${receiver.httpUrl}/v1/traces`
 *   const spans = await receiver.waitFor((s) => s.some((x) => x.kind === 2));
 *   await receiver.close();
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

/** One span as the receiver decoded it, flattened together with its resource and scope. */
export interface ReceivedSpan {
  /** Lowercase hex. */
  traceId: string;
  /** Lowercase hex. */
  spanId: string;
  /** Lowercase hex, `''` for a root span. */
  parentSpanId: string;
  name: string;
  /** OTLP SpanKind number: 1 INTERNAL, 2 SERVER, 3 CLIENT, 4 PRODUCER, 5 CONSUMER. */
  kind: number;
  /** Attribute values flattened to JS (int64 -> number, arrays -> arrays, kvlists -> objects, bytes -> Buffer). */
  attributes: Record<string, unknown>;
  /** OTLP StatusCode number (0 UNSET, 1 OK, 2 ERROR). */
  status: { code: number; message: string };
  events: { name: string; attributes: Record<string, unknown> }[];
  /** Resource attributes, flattened like `attributes`. */
  resource: Record<string, unknown>;
  /** Instrumentation scope name. */
  scope: string;
  startTimeUnixNano: bigint;
  endTimeUnixNano: bigint;
}

/** One metric data point as the receiver decoded it, flattened with its metric, resource and scope. */
export interface ReceivedMetric {
  name: string;
  unit: string;
  type: 'sum' | 'gauge' | 'histogram' | 'exponential_histogram' | 'summary';
  /** OTLP AggregationTemporality number (1 DELTA, 2 CUMULATIVE), 0 for gauges. */
  temporality: number;
  /** Sums only. */
  monotonic: boolean;
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
  scope: string;
  /** Sum and gauge points: the value; histograms: the sum of the observations. */
  value: number;
  /** Histograms: the number of observations (0 otherwise). */
  count: number;
  /** Histograms: the explicit bucket boundaries and counts. */
  explicitBounds: number[];
  bucketCounts: number[];
  startTimeUnixNano: bigint;
  timeUnixNano: bigint;
}

/** One log record as the receiver decoded it, flattened with its resource and scope. */
export interface ReceivedLogRecord {
  /** Resource attributes, flattened like span attributes. */
  resource: Record<string, unknown>;
  scope: string;
  /** OTLP SeverityNumber (9 INFO, 13 WARN, 17 ERROR, ...). */
  severityNumber: number;
  severityText: string;
  body: unknown;
  attributes: Record<string, unknown>;
  /** Lowercase hex, `''` without a span context. */
  traceId: string;
  spanId: string;
  /** The W3C trace flags (bit 0: sampled). */
  flags: number;
  timeUnixNano: bigint;
}

/** One logs export request as it arrived. */
export interface ReceivedLogRequest {
  transport: 'grpc' | 'http';
  headers: Record<string, string>;
  recordCount: number;
  accepted: boolean;
}

/** One metrics export request as it arrived. */
export interface ReceivedMetricRequest {
  transport: 'grpc' | 'http';
  headers: Record<string, string>;
  dataPointCount: number;
  accepted: boolean;
}

/** One export request as it arrived. */
export interface ReceivedRequest {
  transport: 'grpc' | 'http';
  /** The request path: for HTTP the URL path it was posted to, for gRPC the method path. */
  path: string;
  /**
   * Lower-cased header names. For gRPC this is the call metadata as grpc-js exposes it:
   * user-set entries plus `user-agent`, without reserved HTTP/2 headers (`content-type`,
   * `te`, `grpc-encoding`, ...); binary `-bin` values are base64.
   */
  headers: Record<string, string>;
  spanCount: number;
  /** False when the receiver answered with an error because of {@link OtlpReceiver.setFailure}. */
  accepted: boolean;
}

export interface OtlpReceiver {
  /** OTLP/gRPC endpoint, e.g. `http://127.0.0.1:43123`. */
  readonly grpcUrl: string;
  /** OTLP/HTTP base URL, e.g. `http://127.0.0.1:43124`; traces go to `${httpUrl}/v1/traces`. */
  readonly httpUrl: string;
  /** Every accepted span, in arrival order. */
  readonly spans: ReceivedSpan[];
  /** One entry per export request, including the ones refused by {@link setFailure}. */
  readonly requests: ReceivedRequest[];
  /**
   * Resolves with a snapshot of all spans once `predicate(spans)` is true (checked now and
   * after every accepted export). Rejects after `timeoutMs` (default 5000) with a message
   * saying how many spans arrived and which, or when the receiver is closed.
   */
  waitFor(predicate: (spans: ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>;
  /**
   * `'unavailable'`: answer every export with gRPC UNAVAILABLE (14) / HTTP 503 and record no
   * spans (requests are still recorded, with `accepted: false`). `'none'`: accept again.
   */
  setFailure(mode: 'none' | 'unavailable'): void;
  /** Every accepted metric data point, in arrival order. */
  readonly metrics: ReceivedMetric[];
  /** One entry per metrics export request, including refused ones. */
  readonly metricRequests: ReceivedMetricRequest[];
  /** Like {@link waitFor}, for metric data points. */
  waitForMetrics(predicate: (metrics: ReceivedMetric[]) => boolean, timeoutMs?: number): Promise<ReceivedMetric[]>;
  /** Every accepted log record, in arrival order. */
  readonly logs: ReceivedLogRecord[];
  /** One entry per logs export request, including refused ones. */
  readonly logRequests: ReceivedLogRequest[];
  /** Like {@link waitFor}, for log records. */
  waitForLogs(predicate: (logs: ReceivedLogRecord[]) => boolean, timeoutMs?: number): Promise<ReceivedLogRecord[]>;
  /** Forget recorded spans, metrics, log records and requests (arrays previously read stay untouched). */
  reset(): void;
  /** Stop both servers, dropping open connections, and reject pending `waitFor` calls. */
  close(): Promise<void>;
}

/** Where to listen; every field is optional and defaults to an ephemeral port on 127.0.0.1. */
export interface ReceiverOptions {
  host?: string;
  grpcPort?: number;
  httpPort?: number;
  /** HTTP paths that accept exports; default `['/v1/traces']`, anything else is a 404. */
  httpPaths?: string[];
  /**
   * Answer every export only this long after it arrived (a collector slower
   * than the exporter's timeout); the spans are recorded on arrival. Unset: at once.
   */
  answerAfterMs?: number;
}

const GRPC_EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';
const DEFAULT_WAIT_MS = 5000;
const GRPC_METRICS_EXPORT_PATH = '/opentelemetry.proto.collector.metrics.v1.MetricsService/Export';

const schema = protobuf.loadSync(path.join(__dirname, 'otlp-trace.proto'));
const ExportRequest = schema.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest');
const ExportResponse = schema.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse');
const EMPTY_RESPONSE = Buffer.from(ExportResponse.encode(ExportResponse.create({})).finish());

const metricsSchema = protobuf.loadSync(path.join(__dirname, 'otlp-metrics.proto'));
const ExportMetricsRequest = metricsSchema.lookupType('opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest');
const ExportMetricsResponse = metricsSchema.lookupType('opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse');
const EMPTY_METRICS_RESPONSE = Buffer.from(ExportMetricsResponse.encode(ExportMetricsResponse.create({})).finish());
const GRPC_LOGS_EXPORT_PATH = '/opentelemetry.proto.collector.logs.v1.LogsService/Export';
const logsSchema = protobuf.loadSync(path.join(__dirname, 'otlp-logs.proto'));
const ExportLogsRequest = logsSchema.lookupType('opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest');
const ExportLogsResponse = logsSchema.lookupType('opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse');
const EMPTY_LOGS_RESPONSE = Buffer.from(ExportLogsResponse.encode(ExportLogsResponse.create({})).finish());

// Shape of `Type.toObject(msg, TO_OBJECT)`: camelCase keys, bytes as Buffer, 64-bit ints as
// bigint, defaults filled in (unset sub-messages become null), oneof name in `value`.
const TO_OBJECT: protobuf.IConversionOptions = { longs: BigInt, defaults: true, arrays: true, oneofs: true };

interface PbAnyValue {
  value?: string;
  stringValue?: string;
  boolValue?: boolean;
  intValue?: bigint;
  doubleValue?: number;
  arrayValue?: { values: PbAnyValue[] };
  kvlistValue?: { values: PbKeyValue[] };
  bytesValue?: Buffer;
}
interface PbKeyValue {
  key: string;
  value: PbAnyValue | null;
}
interface PbSpan {
  traceId: Buffer;
  spanId: Buffer;
  parentSpanId: Buffer;
  name: string;
  kind: number;
  startTimeUnixNano: bigint;
  endTimeUnixNano: bigint;
  attributes: PbKeyValue[];
  events: { name: string; attributes: PbKeyValue[] }[];
  status: { code: number; message: string } | null;
}
interface PbExportRequest {
  resourceSpans: {
    resource: { attributes: PbKeyValue[] } | null;
    scopeSpans: { scope: { name: string } | null; spans: PbSpan[] }[];
  }[];
}

function anyValueToJs(v: PbAnyValue | null | undefined): unknown {
  switch (v?.value) {
    case 'stringValue':
      return v.stringValue;
    case 'boolValue':
      return v.boolValue;
    case 'intValue':
      return Number(v.intValue);
    case 'doubleValue':
      return v.doubleValue;
    case 'arrayValue':
      return (v.arrayValue?.values ?? []).map(anyValueToJs);
    case 'kvlistValue':
      return attributesToJs(v.kvlistValue?.values ?? []);
    case 'bytesValue':
      return v.bytesValue;
    default:
      return undefined;
  }
}

function attributesToJs(kvs: PbKeyValue[]): Record<string, unknown> {
  return Object.fromEntries(kvs.map((kv) => [kv.key, anyValueToJs(kv.value)]));
}

function flattenRequest(req: PbExportRequest): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  for (const rs of req.resourceSpans) {
    const resource = attributesToJs(rs.resource?.attributes ?? []);
    for (const ss of rs.scopeSpans) {
      for (const s of ss.spans) {
        out.push({
          traceId: s.traceId.toString('hex'),
          spanId: s.spanId.toString('hex'),
          parentSpanId: s.parentSpanId.toString('hex'),
          name: s.name,
          kind: s.kind,
          attributes: attributesToJs(s.attributes),
          status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
          events: s.events.map((e) => ({ name: e.name, attributes: attributesToJs(e.attributes) })),
          resource,
          scope: ss.scope?.name ?? '',
          startTimeUnixNano: s.startTimeUnixNano,
          endTimeUnixNano: s.endTimeUnixNano,
        });
      }
    }
  }
  return out;
}

interface PbNumberPoint {
  attributes: PbKeyValue[];
  startTimeUnixNano: bigint;
  timeUnixNano: bigint;
  value?: string;
  asDouble?: number;
  asInt?: bigint;
}
interface PbHistogramPoint {
  attributes: PbKeyValue[];
  startTimeUnixNano: bigint;
  timeUnixNano: bigint;
  count: bigint;
  sum?: number;
  bucketCounts: bigint[];
  explicitBounds: number[];
}
interface PbMetric {
  name: string;
  unit: string;
  data?: string;
  sum?: { dataPoints: PbNumberPoint[]; aggregationTemporality: number; isMonotonic: boolean } | null;
  gauge?: { dataPoints: PbNumberPoint[] } | null;
  histogram?: { dataPoints: PbHistogramPoint[]; aggregationTemporality: number } | null;
  exponentialHistogram?: { dataPoints: PbHistogramPoint[]; aggregationTemporality: number } | null;
  summary?: { dataPoints: PbHistogramPoint[] } | null;
}
interface PbExportMetricsRequest {
  resourceMetrics: {
    resource: { attributes: PbKeyValue[] } | null;
    scopeMetrics: { scope: { name: string } | null; metrics: PbMetric[] }[];
  }[];
}

function decodeMetrics(body: Uint8Array): ReceivedMetric[] {
  const req = ExportMetricsRequest.toObject(ExportMetricsRequest.decode(body), TO_OBJECT) as PbExportMetricsRequest;
  const out: ReceivedMetric[] = [];
  for (const rm of req.resourceMetrics) {
    const resource = attributesToJs(rm.resource?.attributes ?? []);
    for (const sm of rm.scopeMetrics) {
      for (const m of sm.metrics) {
        const base = { name: m.name, unit: m.unit, resource, scope: sm.scope?.name ?? '' };
        const number = (p: PbNumberPoint): number => (p.value === 'asInt' ? Number(p.asInt) : (p.asDouble ?? 0));
        if (m.data === 'sum' || m.data === 'gauge') {
          const data = m.data === 'sum' ? m.sum : m.gauge;
          const sum = m.data === 'sum' ? m.sum : undefined;
          for (const p of data?.dataPoints ?? []) {
            out.push({
              ...base,
              type: m.data,
              temporality: sum?.aggregationTemporality ?? 0,
              monotonic: sum?.isMonotonic ?? false,
              attributes: attributesToJs(p.attributes),
              value: number(p),
              count: 0,
              explicitBounds: [],
              bucketCounts: [],
              startTimeUnixNano: p.startTimeUnixNano,
              timeUnixNano: p.timeUnixNano,
            });
          }
        } else if (m.data === 'histogram' || m.data === 'exponentialHistogram' || m.data === 'summary') {
          const data = m.data === 'histogram' ? m.histogram : m.data === 'summary' ? m.summary : m.exponentialHistogram;
          for (const p of data?.dataPoints ?? []) {
            out.push({
              ...base,
              type: m.data === 'exponentialHistogram' ? 'exponential_histogram' : m.data,
              temporality: (data as { aggregationTemporality?: number } | null | undefined)?.aggregationTemporality ?? 0,
              monotonic: false,
              attributes: attributesToJs(p.attributes),
              value: p.sum ?? 0,
              count: Number(p.count),
              explicitBounds: p.explicitBounds ?? [],
              bucketCounts: (p.bucketCounts ?? []).map(Number),
              startTimeUnixNano: p.startTimeUnixNano,
              timeUnixNano: p.timeUnixNano,
            });
          }
        }
      }
    }
  }
  return out;
}

interface PbExportLogsRequest {
  resourceLogs: {
    resource: { attributes: PbKeyValue[] } | null;
    scopeLogs: {
      scope: { name: string } | null;
      logRecords: {
        timeUnixNano: bigint;
        severityNumber: number;
        severityText: string;
        body: PbAnyValue | null;
        attributes: PbKeyValue[];
        flags: number;
        traceId: Buffer;
        spanId: Buffer;
      }[];
    }[];
  }[];
}

function decodeLogs(body: Uint8Array): ReceivedLogRecord[] {
  const req = ExportLogsRequest.toObject(ExportLogsRequest.decode(body), TO_OBJECT) as PbExportLogsRequest;
  const out: ReceivedLogRecord[] = [];
  for (const rl of req.resourceLogs) {
    const resource = attributesToJs(rl.resource?.attributes ?? []);
    for (const sl of rl.scopeLogs) {
      for (const r of sl.logRecords) {
        out.push({
          resource,
          scope: sl.scope?.name ?? '',
          severityNumber: r.severityNumber,
          severityText: r.severityText,
          body: anyValueToJs(r.body),
          attributes: attributesToJs(r.attributes),
          traceId: Buffer.from(r.traceId).toString('hex'),
          spanId: Buffer.from(r.spanId).toString('hex'),
          flags: r.flags,
          timeUnixNano: r.timeUnixNano,
        });
      }
    }
  }
  return out;
}

function decodeProtobuf(body: Uint8Array): ReceivedSpan[] {
  const msg = ExportRequest.decode(body);
  return flattenRequest(ExportRequest.toObject(msg, TO_OBJECT) as PbExportRequest);
}

/**
 * OTLP/JSON differs from the protobuf JSON mapping that `fromObject` understands mainly in
 * trace/span ids, which are hex instead of base64; convert those and let `fromObject` do
 * the rest (camelCase keys, int64 as strings, enums as numbers or names).
 */
function decodeJson(body: Buffer): ReceivedSpan[] {
  const json = JSON.parse(body.toString('utf8')) as { resourceSpans?: { scopeSpans?: { spans?: unknown[] }[] }[] };
  const hexToBytes = (o: Record<string, unknown>, keys: string[]): void => {
    for (const k of keys) {
      const v = o[k];
      if (typeof v === 'string') o[k] = Buffer.from(v, 'hex');
    }
  };
  for (const rs of json.resourceSpans ?? []) {
    for (const ss of rs.scopeSpans ?? []) {
      for (const span of (ss.spans ?? []) as Record<string, unknown>[]) {
        hexToBytes(span, ['traceId', 'spanId', 'parentSpanId']);
        for (const link of (span['links'] ?? []) as Record<string, unknown>[]) hexToBytes(link, ['traceId', 'spanId']);
      }
    }
  }
  const msg = ExportRequest.fromObject(json);
  return flattenRequest(ExportRequest.toObject(msg, TO_OBJECT) as PbExportRequest);
}

const gunzip = promisify(zlib.gunzip);

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const raw = Buffer.concat(chunks);
  const encoding = (req.headers['content-encoding'] ?? '').toLowerCase();
  if (encoding === 'gzip') return gunzip(raw);
  if (encoding === '' || encoding === 'identity') return raw;
  throw new Error(`unsupported Content-Encoding: ${encoding}`);
}

function summarize(spans: ReceivedSpan[]): string {
  const MAX = 20;
  const items = spans.slice(0, MAX).map((s) => `${s.name} (${String(s.resource['service.name'] ?? '?')})`);
  if (spans.length > MAX) items.push(`… ${spans.length - MAX} more`);
  return items.length ? `: ${items.join(', ')}` : '';
}

function listen(server: http.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function bindGrpc(server: grpc.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, boundPort) =>
      err ? reject(err) : resolve(boundPort),
    );
  });
}

/** Graceful gRPC shutdown, forced if a client keeps a stream open past the grace period. */
function shutdownGrpc(server: grpc.Server, graceMs = 1000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Starts an OTLP receiver (gRPC + HTTP) on ephemeral local ports. Always `close()` it. */
export async function startReceiver(options: ReceiverOptions = {}): Promise<OtlpReceiver> {
  const host = options.host ?? '127.0.0.1';
  const httpPaths = options.httpPaths ?? ['/v1/traces'];
  let spans: ReceivedSpan[] = [];
  let requests: ReceivedRequest[] = [];
  let metrics: ReceivedMetric[] = [];
  let metricRequests: ReceivedMetricRequest[] = [];
  let logs: ReceivedLogRecord[] = [];
  let logRequests: ReceivedLogRequest[] = [];
  const logListeners = new Set<() => void>();
  let failure: 'none' | 'unavailable' = 'none';
  const listeners = new Set<() => void>();
  const metricListeners = new Set<() => void>();
  const closers = new Set<(err: Error) => void>();
  const answerTimers = new Set<NodeJS.Timeout>();
  /** Runs `answer` now, or `answerAfterMs` later. */
  const later = (answer: () => void): void => {
    if (options.answerAfterMs === undefined) return answer();
    const timer = setTimeout(() => {
      answerTimers.delete(timer);
      answer();
    }, options.answerAfterMs);
    answerTimers.add(timer);
  };

  /** Records one decoded export; returns whether it was accepted. */
  const record = (transport: ReceivedRequest['transport'], path: string, headers: Record<string, string>, received: ReceivedSpan[]): boolean => {
    const accepted = failure === 'none';
    requests.push({ transport, path, headers, spanCount: received.length, accepted });
    if (accepted) {
      spans.push(...received);
      for (const notify of [...listeners]) notify();
    }
    return accepted;
  };

  const recordMetrics = (transport: ReceivedMetricRequest['transport'], headers: Record<string, string>, received: ReceivedMetric[]): boolean => {
    const accepted = failure === 'none';
    metricRequests.push({ transport, headers, dataPointCount: received.length, accepted });
    if (accepted) {
      metrics.push(...received);
      for (const notify of [...metricListeners]) notify();
    }
    return accepted;
  };

  const recordLogs = (transport: ReceivedLogRequest['transport'], headers: Record<string, string>, received: ReceivedLogRecord[]): boolean => {
    const accepted = failure === 'none';
    logRequests.push({ transport, headers, recordCount: received.length, accepted });
    if (accepted) {
      logs.push(...received);
      for (const notify of [...logListeners]) notify();
    }
    return accepted;
  };

  const grpcServer = new grpc.Server();
  const exportMethod: grpc.MethodDefinition<Buffer, Buffer> = {
    path: GRPC_EXPORT_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: (b) => b,
    requestDeserialize: (b) => b,
    responseSerialize: (b) => b,
    responseDeserialize: (b) => b,
  };
  grpcServer.addService({ Export: exportMethod }, {
    Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      let received: ReceivedSpan[];
      try {
        received = decodeProtobuf(call.request);
      } catch (err) {
        callback({ code: grpc.status.INVALID_ARGUMENT, details: `cannot decode ExportTraceServiceRequest: ${String(err)}` });
        return;
      }
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(call.metadata.getMap())) headers[k] = typeof v === 'string' ? v : v.toString('base64');
      if (record('grpc', GRPC_EXPORT_PATH, headers, received)) later(() => callback(null, EMPTY_RESPONSE));
      else later(() => callback({ code: grpc.status.UNAVAILABLE, details: 'test receiver is set to fail' }));
    },
  });

  grpcServer.addService({ Export: { ...exportMethod, path: GRPC_METRICS_EXPORT_PATH } }, {
    Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      let received: ReceivedMetric[];
      try {
        received = decodeMetrics(call.request);
      } catch (err) {
        callback({ code: grpc.status.INVALID_ARGUMENT, details: `cannot decode ExportMetricsServiceRequest: ${String(err)}` });
        return;
      }
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(call.metadata.getMap())) headers[k] = typeof v === 'string' ? v : v.toString('base64');
      if (recordMetrics('grpc', headers, received)) callback(null, EMPTY_METRICS_RESPONSE);
      else callback({ code: grpc.status.UNAVAILABLE, details: 'test receiver is set to fail' });
    },
  });

  grpcServer.addService({ Export: { ...exportMethod, path: GRPC_LOGS_EXPORT_PATH } }, {
    Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      let received: ReceivedLogRecord[];
      try {
        received = decodeLogs(call.request);
      } catch (err) {
        callback({ code: grpc.status.INVALID_ARGUMENT, details: `cannot decode ExportLogsServiceRequest: ${String(err)}` });
        return;
      }
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(call.metadata.getMap())) headers[k] = typeof v === 'string' ? v : v.toString('base64');
      if (recordLogs('grpc', headers, received)) later(() => callback(null, EMPTY_LOGS_RESPONSE));
      else later(() => callback({ code: grpc.status.UNAVAILABLE, details: 'test receiver is set to fail' }));
    },
  });

  const httpServer = http.createServer((req, res) => {
    const reply = (status: number, contentType: string, body: string | Buffer): void => {
      res.writeHead(status, { 'Content-Type': contentType }).end(body);
    };
    void (async () => {
      const { pathname } = new URL(req.url ?? '/', 'http://receiver');
      if (pathname === '/v1/metrics' && req.method === 'POST') {
        let received: ReceivedMetric[];
        try {
          received = decodeMetrics(await readBody(req));
        } catch (err) {
          return reply(400, 'text/plain', `cannot decode ExportMetricsServiceRequest: ${String(err)}`);
        }
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
        if (!recordMetrics('http', headers, received)) return reply(503, 'text/plain', 'test receiver is set to fail');
        return reply(200, 'application/x-protobuf', EMPTY_METRICS_RESPONSE);
      }
      if (pathname === '/v1/logs' && req.method === 'POST') {
        let received: ReceivedLogRecord[];
        try {
          received = decodeLogs(await readBody(req));
        } catch (err) {
          return reply(400, 'text/plain', `cannot decode ExportLogsServiceRequest: ${String(err)}`);
        }
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
        if (!recordLogs('http', headers, received)) return later(() => reply(503, 'text/plain', 'test receiver is set to fail'));
        return later(() => reply(200, 'application/x-protobuf', EMPTY_LOGS_RESPONSE));
      }
      if (!httpPaths.includes(pathname)) return reply(404, 'text/plain', 'not found');
      if (req.method !== 'POST') return reply(405, 'text/plain', 'method not allowed');
      const contentType = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
      const isJson = contentType === 'application/json';
      if (!isJson && contentType !== 'application/x-protobuf') return reply(415, 'text/plain', `unsupported Content-Type: ${contentType}`);
      let received: ReceivedSpan[];
      try {
        const body = await readBody(req);
        received = isJson ? decodeJson(body) : decodeProtobuf(body);
      } catch (err) {
        return reply(400, 'text/plain', `cannot decode ExportTraceServiceRequest: ${String(err)}`);
      }
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
      if (!record('http', pathname, headers, received)) return later(() => reply(503, 'text/plain', 'test receiver is set to fail'));
      return later(() => (isJson ? reply(200, 'application/json', '{}') : reply(200, 'application/x-protobuf', EMPTY_RESPONSE)));
    })().catch((err: unknown) => {
      if (!res.headersSent) reply(500, 'text/plain', String(err));
    });
  });

  let grpcPort: number;
  let httpPort: number;
  try {
    grpcPort = await bindGrpc(grpcServer, options.grpcPort ?? 0, host);
    httpPort = await listen(httpServer, options.httpPort ?? 0, host);
  } catch (err) {
    grpcServer.forceShutdown();
    httpServer.close();
    throw err;
  }

  return {
    grpcUrl: `http://${host}:${grpcPort}`,
    httpUrl: `http://${host}:${httpPort}`,
    get spans() {
      return spans;
    },
    get requests() {
      return requests;
    },
    waitFor(predicate, timeoutMs = DEFAULT_WAIT_MS) {
      return new Promise<ReceivedSpan[]>((resolve, reject) => {
        const finish = (err?: Error): void => {
          clearTimeout(timer);
          listeners.delete(check);
          closers.delete(finish);
          if (err) reject(err);
          else resolve([...spans]);
        };
        const check = (): void => {
          try {
            if (predicate(spans)) finish();
          } catch (err) {
            finish(err instanceof Error ? err : new Error(String(err)));
          }
        };
        const timer = setTimeout(() => {
          finish(new Error(`OTLP receiver: condition not met within ${timeoutMs}ms; ${spans.length} span(s) received${summarize(spans)}`));
        }, timeoutMs);
        listeners.add(check);
        closers.add(finish);
        check();
      });
    },
    get metrics() {
      return metrics;
    },
    get metricRequests() {
      return metricRequests;
    },
    waitForMetrics(predicate, timeoutMs = DEFAULT_WAIT_MS) {
      return new Promise<ReceivedMetric[]>((resolve, reject) => {
        const finish = (err?: Error): void => {
          clearTimeout(timer);
          metricListeners.delete(check);
          closers.delete(finish);
          if (err) reject(err);
          else resolve([...metrics]);
        };
        const check = (): void => {
          try {
            if (predicate(metrics)) finish();
          } catch (err) {
            finish(err instanceof Error ? err : new Error(String(err)));
          }
        };
        const timer = setTimeout(() => {
          const names = [...new Set(metrics.map((m) => m.name))].slice(0, 20).join(', ');
          finish(new Error(`OTLP receiver: metrics condition not met within ${timeoutMs}ms; ${metrics.length} data point(s) received${names ? `: ${names}` : ''}`));
        }, timeoutMs);
        metricListeners.add(check);
        closers.add(finish);
        check();
      });
    },
    get logs() {
      return logs;
    },
    get logRequests() {
      return logRequests;
    },
    waitForLogs(predicate, timeoutMs = DEFAULT_WAIT_MS) {
      return new Promise<ReceivedLogRecord[]>((resolve, reject) => {
        const finish = (err?: Error): void => {
          clearTimeout(timer);
          logListeners.delete(check);
          closers.delete(finish);
          if (err) reject(err);
          else resolve([...logs]);
        };
        const check = (): void => {
          try {
            if (predicate(logs)) finish();
          } catch (err) {
            finish(err instanceof Error ? err : new Error(String(err)));
          }
        };
        const timer = setTimeout(() => {
          const bodies = logs.slice(-5).map((l) => JSON.stringify(l.body)).join(', ');
          finish(new Error(`OTLP receiver: logs condition not met within ${timeoutMs}ms; ${logs.length} log record(s) received${bodies ? `, last: ${bodies}` : ''}`));
        }, timeoutMs);
        logListeners.add(check);
        closers.add(finish);
        check();
      });
    },
    setFailure(mode) {
      failure = mode;
    },
    reset() {
      spans = [];
      requests = [];
      metrics = [];
      metricRequests = [];
      logs = [];
      logRequests = [];
    },
    async close() {
      for (const finish of [...closers]) finish(new Error('OTLP receiver closed while waiting for spans'));
      for (const timer of answerTimers) clearTimeout(timer);
      answerTimers.clear();
      const httpClosed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
      // close() only stops accepting; exporters' keep-alive sockets would hold it open.
      httpServer.closeAllConnections();
      await Promise.all([shutdownGrpc(grpcServer), httpClosed]);
    },
  };
}
