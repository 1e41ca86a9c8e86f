/**
 * An OTLP collector that hangs, for tests, in one of three ways:
 *
 * - `silent`: accepts TCP connections, reads whatever is sent, never writes a
 *   byte (no HTTP answer, no HTTP/2 handshake);
 * - `late`: a real OTLP receiver (gRPC or HTTP, decoding every export) that
 *   answers success, but only `answerAfterMs` after each export arrived;
 * - `partial`: starts an answer and stalls: over HTTP, status line, headers
 *   and part of the body of a 200; over gRPC, the HTTP/2 handshake and the
 *   response headers, then nothing (no message, no trailers).
 *
 * `close()` destroys every socket it accepted.
 *
 * @example
 *   const collector = await startHangingCollector('partial', 'grpc');
 *   // OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint
 *   await collector.close();
 */
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { startReceiver, type ReceivedSpan } from './otlpReceiver';

export type HangMode = 'silent' | 'late' | 'partial';
export type HangProtocol = 'grpc' | 'http/protobuf';

export interface HangingCollector {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:<port>` (the HTTP exporter appends `/v1/traces`). */
  readonly endpoint: string;
  /** Export requests that reached the collector (for `silent`: connections accepted). */
  readonly exports: number;
  /** Spans decoded from the exports (`late` only: the others never read a request whole). */
  readonly spans: ReceivedSpan[];
  close(): Promise<void>;
}

function listening(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** Closes `server` and destroys `sockets`, which `close()` alone would wait for. */
function closeAll(server: net.Server, sockets: Set<net.Socket>): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const socket of sockets) socket.destroy();
  return closed;
}

/** Tracks the sockets `server` accepts, to destroy them at close. */
function trackSockets(server: net.Server): Set<net.Socket> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  return sockets;
}

export async function startHangingCollector(
  mode: HangMode,
  protocol: HangProtocol,
  options: { answerAfterMs?: number } = {},
): Promise<HangingCollector> {
  let exports = 0;
  if (mode === 'late') {
    const receiver = await startReceiver({ answerAfterMs: options.answerAfterMs ?? 2000 });
    return {
      endpoint: protocol === 'grpc' ? receiver.grpcUrl : receiver.httpUrl,
      get exports() {
        return receiver.requests.length;
      },
      get spans() {
        return receiver.spans;
      },
      close: () => receiver.close(),
    };
  }

  let server: net.Server;
  if (mode === 'silent') {
    server = net.createServer((socket) => {
      exports += 1;
      socket.on('error', () => undefined);
      socket.resume(); // read and discard, so the client's writes never block
    });
  } else if (protocol === 'grpc') {
    const h2 = http2.createServer();
    h2.on('session', (session) => session.on('error', () => undefined));
    h2.on('stream', (stream) => {
      exports += 1;
      stream.on('error', () => undefined);
      stream.resume();
      // Headers of an answer, then nothing: no message, no trailers.
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
    });
    server = h2;
  } else {
    server = http.createServer((req, res) => {
      exports += 1;
      req.resume();
      // A 200 whose body never arrives whole.
      res.writeHead(200, { 'Content-Type': 'application/x-protobuf', 'Content-Length': '64' });
      res.write(Buffer.alloc(8));
    });
  }
  const sockets = trackSockets(server);
  const port = await listening(server);
  return {
    endpoint: `http://127.0.0.1:${port}`,
    get exports() {
      return exports;
    },
    spans: [],
    close: () => closeAll(server, sockets),
  };
}
