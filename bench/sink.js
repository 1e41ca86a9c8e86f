// @ts-check
'use strict';

/**
 * The benchmark's collector: an OTLP/gRPC trace receiver that only counts
 * (and takes metrics exports, counting only the calls).
 *
 * It runs in a child process of the bench driver (`fork`), so the work of
 * receiving spans is not done on the driver's event loop. It decodes nothing
 * it does not need: counting spans means walking three levels of the protobuf
 * wire format, and every Export is answered with an empty response (a
 * zero-length buffer is a valid, empty ExportTraceServiceResponse).
 *
 * IPC protocol (with the parent):
 *   child -> parent  { type: 'ready', port }
 *   parent -> child  { type: 'stats', id }  ->  { type: 'stats', id, stats }
 *
 * Run alone (`node bench/sink.js [port]`) it prints its counts every second.
 */
const grpc = require('@grpc/grpc-js');

const EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';
const METRICS_EXPORT_PATH = '/opentelemetry.proto.collector.metrics.v1.MetricsService/Export';
const LOGS_EXPORT_PATH = '/opentelemetry.proto.collector.logs.v1.LogsService/Export';
const EMPTY = Buffer.alloc(0);

/**
 * @typedef {object} SinkStats
 * @property {number} spans        spans received since the sink started
 * @property {number} exports      Export calls answered
 * @property {number} bytes        request payload bytes (after gRPC decompression)
 * @property {number} malformed    payloads the walker could not parse
 * @property {number} lastExportAt Date.now() of the last Export, 0 if none
 * @property {number} cpuMicros    the sink's own CPU time (user + system)
 * @property {number} metricExports  metrics Export calls answered
 * @property {number} logExports   logs Export calls answered
 * @property {number} logBytes     their payload bytes
 * @property {number} metricBytes    their payload bytes
 */

/** @type {SinkStats} */
const stats = { spans: 0, exports: 0, bytes: 0, malformed: 0, lastExportAt: 0, cpuMicros: 0, metricExports: 0, metricBytes: 0, logExports: 0, logBytes: 0 };

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
 * Calls `onField(start, end)` for every length-delimited occurrence of field
 * `wanted` in the message `buf[start, end)`, skipping all other fields.
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
      case 0: // varint
        pos = varint(buf, pos)[1];
        break;
      case 1: // fixed64
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
 * field 1 resource_spans -> ResourceSpans field 2 scope_spans -> ScopeSpans field 2 spans.
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
  return { ...stats, cpuMicros: cpu.user + cpu.system };
}

/** @param {Buffer} value */
const raw = (value) => value;

/**
 * The OTLP trace service with its one method, payloads left as raw bytes.
 * @type {grpc.ServiceDefinition}
 */
const RAW_TRACE_SERVICE = {
  Export: {
    path: EXPORT_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: raw,
    requestDeserialize: raw,
    responseSerialize: raw,
    responseDeserialize: raw,
  },
};

/** The OTLP metrics service, same raw shape. @type {grpc.ServiceDefinition} */
const RAW_METRICS_SERVICE = { Export: { ...RAW_TRACE_SERVICE.Export, path: METRICS_EXPORT_PATH } };
const RAW_LOGS_SERVICE = { Export: { ...RAW_TRACE_SERVICE.Export, path: LOGS_EXPORT_PATH } };

/**
 * Starts the gRPC server on 127.0.0.1.
 * @param {number} port 0 for any free port
 * @returns {Promise<{ server: grpc.Server, port: number }>}
 */
function listen(port) {
  const server = new grpc.Server();
  server.addService(RAW_TRACE_SERVICE, {
    /** @type {grpc.handleUnaryCall<Buffer, Buffer>} */
    Export(call, callback) {
      record(call.request);
      callback(null, EMPTY);
    },
  });
  server.addService(RAW_METRICS_SERVICE, {
    /** @type {grpc.handleUnaryCall<Buffer, Buffer>} */
    Export(call, callback) {
      stats.metricExports += 1;
      stats.metricBytes += call.request.length;
      callback(null, EMPTY);
    },
  });
  server.addService(RAW_LOGS_SERVICE, {
    /** @type {grpc.handleUnaryCall<Buffer, Buffer>} */
    Export(call, callback) {
      stats.logExports += 1;
      stats.logBytes += call.request.length;
      callback(null, EMPTY);
    },
  });
  return new Promise((resolve, reject) => {
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error, bound) => {
      if (error) reject(error);
      else resolve({ server, port: bound });
    });
  });
}

async function main() {
  const { server, port } = await listen(Number(process.argv[2] ?? 0));
  const send = process.send?.bind(process);
  if (send === undefined) {
    console.log(`OTLP/gRPC sink on 127.0.0.1:${port}`);
    setInterval(() => console.log(JSON.stringify(snapshot())), 1000);
  } else {
    process.on('message', (/** @type {{ type?: string, id?: number }} */ message) => {
      if (message.type === 'stats') send({ type: 'stats', id: message.id, stats: snapshot() });
    });
    // The driver going away (even by SIGKILL) closes the IPC channel: go with it.
    process.on('disconnect', () => server.forceShutdown());
    send({ type: 'ready', port });
  }
}

if (require.main === module) {
  main().catch((error) => {
    console.error(`sink failed: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  });
}

module.exports = { countSpans, RAW_TRACE_SERVICE };
