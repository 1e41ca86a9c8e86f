// @ts-check
'use strict';

/**
 * The benchmark's collector: an OTLP/gRPC receiver that only counts spans,
 * log records and metrics exports; beside it, on a second port, an HTTP/1.1
 * server that counts the same OTLP payloads over http/protobuf (`/v1/…`),
 * and stands in for the peers' agents: Datadog's (`/v0.4/traces`, msgpack:
 * counts traces) and Elastic's APM server (`/intake/v2/events`, ndjson:
 * counts transactions). A third port, gRPC again, refuses every other second
 * (UNAVAILABLE): the flapping collector of the outage scenario.
 *
 * It runs in a child process of the bench driver (`fork`), so the work of
 * receiving spans is not done on the driver's event loop. It decodes nothing
 * it does not need: counting spans means walking three levels of the protobuf
 * wire format, and every Export is answered with an empty response (a
 * zero-length buffer is a valid, empty ExportTraceServiceResponse). Of the
 * metrics it reads one figure: the requests counted by the servers'
 * `http.server.request.duration` histograms (the count of each data point),
 * which must come to one a request, as spans do.
 *
 * IPC protocol (with the parent):
 *   child -> parent  { type: 'ready', port, httpPort, flappingPort }
 *   parent -> child  { type: 'stats', id }  ->  { type: 'stats', id, stats }
 *
 * Run alone (`node bench/sink.js [port]`) it prints its counts every second.
 */
const http = require('node:http');
const zlib = require('node:zlib');
const grpc = require('@grpc/grpc-js');

const EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';
const METRICS_EXPORT_PATH = '/opentelemetry.proto.collector.metrics.v1.MetricsService/Export';
const LOGS_EXPORT_PATH = '/opentelemetry.proto.collector.logs.v1.LogsService/Export';
/** The flapping collector refuses for this long, then accepts for as long. */
const FLAP_MS = 1000;
const EMPTY = Buffer.alloc(0);

/**
 * @typedef {object} SinkStats
 * @property {number} spans        spans received since the sink started; with the peers' units
 *                                 added in (each config runs alone): Datadog traces, Elastic transactions
 * @property {number} exports      Export calls answered
 * @property {number} bytes        request payload bytes (after gRPC decompression)
 * @property {number} malformed    payloads the walker could not parse
 * @property {number} lastExportAt Date.now() of the last Export, 0 if none
 * @property {number} cpuMicros    the sink's own CPU time (user + system)
 * @property {number} metricExports  metrics Export calls answered
 * @property {number} metricBytes    their payload bytes
 * @property {number} requestsCounted  requests counted by every `http.server.request.duration` series
 *                                   received: the latest count of each cumulative series (one a worker's
 *                                   resource, attributes and start time), plus the counts of delta points
 * @property {number} logRecords     OTLP log records received
 * @property {number} logExports     logs Export calls answered
 * @property {number} logBytes       their payload bytes
 * @property {number} ddTraces       Datadog traces received (also in spans)
 * @property {number} apmTransactions  Elastic transactions received (also in spans)
 * @property {number} refused        exports the flapping collector refused
 */

/** @type {SinkStats} */
const stats = { spans: 0, exports: 0, bytes: 0, malformed: 0, lastExportAt: 0, cpuMicros: 0, metricExports: 0, metricBytes: 0, requestsCounted: 0, logRecords: 0, logExports: 0, logBytes: 0, ddTraces: 0, apmTransactions: 0, refused: 0 };

/**
 * Reads a base-128 varint at `offset`.
 * @param {Buffer} buf
 * @param {number} offset
 * @returns {[value: number, next: number]}
 */
function varint(buf, offset) {
  let value = 0;
  let scale = 1;
  let pos = offset;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const byte = /** @type {number} */ (buf[pos++]);
    // Multiplication, not <<: lengths and tags fit in 53 bits, not in 31.
    value += (byte & 0x7f) * scale;
    if ((byte & 0x80) === 0) return [value, pos];
    scale *= 128;
    if (scale > 2 ** 63) throw new Error('varint too long');
  }
}

/**
 * Calls `onField(start, end)` for every occurrence of field `wanted` in the
 * message `buf[start, end)`, skipping all other fields: the bytes of its
 * value (a length-delimited field's content; a varint's or a fixed field's
 * own bytes).
 * @param {Buffer} buf
 * @param {number} start
 * @param {number} end
 * @param {number} wanted
 * @param {(start: number, end: number) => void} onField
 */
function eachField(buf, start, end, wanted, onField) {
  let pos = start;
  while (pos < end) {
    const [tag, afterTag] = varint(buf, pos);
    const field = Math.floor(tag / 8);
    const wireType = tag & 7;
    pos = afterTag;
    switch (wireType) {
      case 0: {
        // varint
        const next = varint(buf, pos)[1];
        if (field === wanted) onField(pos, next);
        pos = next;
        break;
      }
      case 1: // fixed64
        if (field === wanted) onField(pos, pos + 8);
        pos += 8;
        break;
      case 2: {
        // length-delimited: the only kind that holds messages
        const [length, afterLength] = varint(buf, pos);
        const fieldEnd = afterLength + length;
        if (fieldEnd > end) throw new Error('field overruns its message');
        if (field === wanted) onField(afterLength, fieldEnd);
        pos = fieldEnd;
        break;
      }
      case 5: // fixed32
        if (field === wanted) onField(pos, pos + 4);
        pos += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${wireType}`);
    }
  }
  if (pos !== end) throw new Error('message overruns its length');
}

/**
 * Counts the spans of an ExportTraceServiceRequest:
 * field 1 resource_spans -> ResourceSpans field 2 scope_spans -> ScopeSpans field 2 spans;
 * or the log records of an ExportLogsServiceRequest, which has the same shape
 * (resource_logs -> scope_logs -> log_records).
 * @param {Buffer} buf
 * @returns {number}
 */
function countSpans(buf) {
  let spans = 0;
  eachField(buf, 0, buf.length, 1, (rsStart, rsEnd) => {
    eachField(buf, rsStart, rsEnd, 2, (ssStart, ssEnd) => {
      eachField(buf, ssStart, ssEnd, 2, () => {
        spans += 1;
      });
    });
  });
  return spans;
}

/** @param {Buffer} payload */
function recordLogs(payload) {
  stats.logExports += 1;
  stats.logBytes += payload.length;
  try {
    stats.logRecords += countSpans(payload);
  } catch {
    stats.malformed += 1;
  }
}

const REQUEST_DURATION = 'http.server.request.duration';
const DELTA = 1;
/** The latest count of each cumulative `http.server.request.duration` series, by resource, attributes and start time. */
const cumulativeCounts = new Map();
/** The counts of its delta data points, added up. */
let deltaCount = 0;

/**
 * Reads the data points of `http.server.request.duration` in an
 * ExportMetricsServiceRequest: resource_metrics (1) -> resource (1) and
 * scope_metrics (2) -> metrics (2) -> name (1), histogram (9) ->
 * aggregation_temporality (2), data_points (1) -> attributes (9),
 * start_time_unix_nano (2), count (4).
 * @param {Buffer} buf
 */
function countRequests(buf) {
  eachField(buf, 0, buf.length, 1, (rmStart, rmEnd) => {
    let resource = '';
    eachField(buf, rmStart, rmEnd, 1, (start, end) => (resource = buf.toString('hex', start, end)));
    eachField(buf, rmStart, rmEnd, 2, (smStart, smEnd) => {
      eachField(buf, smStart, smEnd, 2, (mStart, mEnd) => {
        let name = '';
        eachField(buf, mStart, mEnd, 1, (start, end) => (name = buf.toString('utf8', start, end)));
        if (name !== REQUEST_DURATION) return;
        eachField(buf, mStart, mEnd, 9, (hStart, hEnd) => {
          let temporality = 0;
          eachField(buf, hStart, hEnd, 2, (start) => (temporality = varint(buf, start)[0]));
          eachField(buf, hStart, hEnd, 1, (pStart, pEnd) => {
            let attributes = '';
            let startTime = '';
            let count = 0;
            eachField(buf, pStart, pEnd, 9, (start, end) => (attributes += `${buf.toString('hex', start, end)},`));
            eachField(buf, pStart, pEnd, 2, (start) => (startTime = buf.readBigUInt64LE(start).toString()));
            eachField(buf, pStart, pEnd, 4, (start) => (count = Number(buf.readBigUInt64LE(start))));
            if (temporality === DELTA) deltaCount += count;
            else cumulativeCounts.set(`${resource}|${attributes}|${startTime}`, count);
          });
        });
      });
    });
  });
}

/** @returns {number} see {@link SinkStats} `requestsCounted` */
function requestsCounted() {
  let counted = deltaCount;
  for (const count of cumulativeCounts.values()) counted += count;
  return counted;
}

/** @param {Buffer} payload */
function recordMetrics(payload) {
  stats.metricExports += 1;
  stats.metricBytes += payload.length;
  try {
    countRequests(payload);
  } catch {
    stats.malformed += 1;
  }
}

/**
 * Datadog traces in a v0.4 payload: a msgpack array of traces (fixarray,
 * array16 or array32 header), each an array of spans.
 * @param {Buffer} buf
 */
function countDdTraces(buf) {
  const first = buf[0] ?? 0;
  if (first >= 0x90 && first <= 0x9f) return first - 0x90;
  if (first === 0xdc) return buf.readUInt16BE(1);
  if (first === 0xdd) return buf.readUInt32BE(1);
  throw new Error('not a msgpack array');
}

/** @param {Buffer} payload */
function record(payload) {
  stats.exports += 1;
  stats.bytes += payload.length;
  stats.lastExportAt = Date.now();
  try {
    stats.spans += countSpans(payload);
  } catch {
    stats.malformed += 1;
  }
}

/** @returns {SinkStats} */
function snapshot() {
  const cpu = process.cpuUsage();
  return { ...stats, cpuMicros: cpu.user + cpu.system, requestsCounted: requestsCounted() };
}

/** @param {Buffer} value */
const raw = (value) => value;

/**
 * An OTLP service with its one method, payloads left as raw bytes.
 * @param {string} path
 * @returns {grpc.ServiceDefinition}
 */
function rawService(path) {
  return { Export: { path, requestStream: false, responseStream: false, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw } };
}
const RAW_TRACE_SERVICE = rawService(EXPORT_PATH);
const RAW_METRICS_SERVICE = rawService(METRICS_EXPORT_PATH);
const RAW_LOGS_SERVICE = rawService(LOGS_EXPORT_PATH);

/**
 * @param {(payload: Buffer) => void} onPayload
 * @param {() => boolean} [refusing]
 * @returns {{ Export: grpc.handleUnaryCall<Buffer, Buffer> }}
 */
function handler(onPayload, refusing = () => false) {
  return {
    Export(call, callback) {
      if (refusing()) {
        stats.refused += 1;
        callback({ code: grpc.status.UNAVAILABLE, details: 'bench collector is flapping' });
        return;
      }
      onPayload(call.request);
      callback(null, EMPTY);
    },
  };
}

/**
 * Starts a gRPC server on 127.0.0.1 with the three OTLP services.
 * @param {number} port 0 for any free port
 * @param {() => boolean} [refusing] answer UNAVAILABLE while this says so
 * @returns {Promise<{ server: grpc.Server, port: number }>}
 */
function listen(port, refusing) {
  const server = new grpc.Server();
  server.addService(RAW_TRACE_SERVICE, handler(record, refusing));
  server.addService(RAW_METRICS_SERVICE, handler(recordMetrics, refusing));
  server.addService(RAW_LOGS_SERVICE, handler(recordLogs, refusing));
  return new Promise((resolve, reject) => {
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error, bound) => {
      if (error) reject(error);
      else resolve({ server, port: bound });
    });
  });
}

/**
 * The HTTP/1.1 side: OTLP http/protobuf, Datadog's agent, Elastic's APM server.
 * @param {import('node:http').IncomingMessage} req
 * @param {import('node:http').ServerResponse} res
 */
function onHttp(req, res) {
  const url = (req.url ?? '/').split('?')[0];
  const encoding = req.headers['content-encoding'];
  const body = encoding === 'gzip' ? req.pipe(zlib.createGunzip()) : encoding === 'deflate' ? req.pipe(zlib.createInflate()) : req;
  /** @type {Buffer[]} */
  const chunks = [];
  body.on('data', (chunk) => chunks.push(chunk));
  body.on('error', () => {
    stats.malformed += 1;
    res.writeHead(400).end();
  });
  body.on('end', () => {
    const payload = Buffer.concat(chunks);
    const reply = (/** @type {number} */ status, /** @type {string} */ type = 'application/json', /** @type {string | Buffer} */ text = '') => res.writeHead(status, { 'content-type': type }).end(text);
    try {
      if (url === '/v1/traces') record(payload);
      else if (url === '/v1/metrics') recordMetrics(payload);
      else if (url === '/v1/logs') recordLogs(payload);
      else if (url === '/v0.4/traces') {
        const traces = countDdTraces(payload);
        stats.ddTraces += traces;
        stats.spans += traces;
        stats.lastExportAt = Date.now();
        return reply(200, 'application/json', '{"rate_by_service":{}}');
      } else if (url === '/intake/v2/events') {
        const transactions = payload.toString('utf8').split('\n').filter((line) => line.startsWith('{"transaction"')).length;
        stats.apmTransactions += transactions;
        stats.spans += transactions;
        stats.lastExportAt = Date.now();
        return reply(202);
      } else if (url === '/' && req.method === 'GET') return reply(200, 'application/json', '{"version":"8.15.0","build_date":"2024-08-01T00:00:00Z","build_sha":"bench"}');
      else return reply(404);
      // An empty protobuf body is a valid, empty Export*ServiceResponse.
      reply(200, 'application/x-protobuf', EMPTY);
    } catch {
      stats.malformed += 1;
      reply(400);
    }
  });
}

async function main() {
  const { server, port } = await listen(Number(process.argv[2] ?? 0));
  const flapStarted = Date.now();
  const flapping = await listen(0, () => Math.floor((Date.now() - flapStarted) / FLAP_MS) % 2 === 0);
  const web = http.createServer(onHttp);
  await new Promise((resolve) => web.listen(0, '127.0.0.1', () => resolve(undefined)));
  const httpPort = /** @type {import('node:net').AddressInfo} */ (web.address()).port;
  const send = process.send?.bind(process);
  if (send === undefined) {
    console.log(`OTLP/gRPC sink on 127.0.0.1:${port}, HTTP on ${httpPort}, flapping gRPC on ${flapping.port}`);
    setInterval(() => console.log(JSON.stringify(snapshot())), 1000);
  } else {
    process.on('message', (/** @type {{ type?: string, id?: number }} */ message) => {
      if (message.type === 'stats') send({ type: 'stats', id: message.id, stats: snapshot() });
    });
    // The driver going away (even by SIGKILL) closes the IPC channel: go with it.
    process.on('disconnect', () => {
      server.forceShutdown();
      flapping.server.forceShutdown();
      web.closeAllConnections();
      web.close();
    });
    send({ type: 'ready', port, httpPort, flappingPort: flapping.port });
  }
}

if (require.main === module) {
  main().catch((error) => {
    console.error(`sink failed: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  });
}

module.exports = { countSpans, RAW_TRACE_SERVICE };
