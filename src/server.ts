/**
 * The server lifecycle: listen, tell PM2 we are ready, and shut down
 * gracefully. This is the script PM2 runs in every cluster worker, and what
 * `npm run dev` runs on its own.
 *
 * Shutdown order (PM2 sends SIGINT, then SIGKILL after `kill_timeout`):
 *   1. stop accepting connections, `/readyz` answers 503;
 *   2. let in-flight requests finish (at most DRAIN_TIMEOUT_MS), answering
 *      them with `Connection: close` and closing keep-alive sockets as soon
 *      as they are idle;
 *   3. flush telemetry (at most FLUSH_TIMEOUT_MS);
 *   4. exit 0.
 * The ecosystem file sets `kill_timeout` above the sum of both timeouts.
 */
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { createApp, MAX_URL_LENGTH } from './app';
import { ConfigError, loadConfig, type Config } from './config';
import { log } from './log';
import { recordError, shutdownTelemetry } from './telemetry';

export interface RunningServer {
  readonly server: http.Server;
  /** Resolves once the server is closed and telemetry flushed. Safe to call twice. */
  close(): Promise<void>;
}

/** Starts listening with the given config; resolves once the port is bound. */
export async function startServer(config: Config): Promise<RunningServer> {
  let shuttingDown = false;
  const app = createApp({ isShuttingDown: () => shuttingDown, testRoutes: config.testRoutes });
  const handle = app.callback();

  // Responses not yet started: told `Connection: close` once shutdown begins.
  const inFlight = new Set<http.ServerResponse>();
  // Node checks the request and headers timeouts only every 30 s by default,
  // so a 1 s REQUEST_TIMEOUT_MS would answer 408 after up to 31 s: check at a
  // tenth of the timeout instead (at most 10 % late).
  const connectionsCheckingInterval = Math.min(30_000, Math.max(250, Math.ceil((config.requestTimeoutMs || 60_000) / 10)));
  const server = http.createServer({ maxHeaderSize: MAX_HEADER_SIZE, connectionsCheckingInterval }, (req, res) => {
    // Keep-alive clients of a worker that is going away are told so, rather than reset.
    if (shuttingDown) res.setHeader('Connection', 'close');
    else {
      inFlight.add(res);
      res.once('close', () => inFlight.delete(res));
    }
    void handle(req, res);
  });
  server.on('clientError', answerClientError);
  server.on('connect', answerConnect);
  server.keepAliveTimeout = config.keepAliveTimeoutMs;
  server.requestTimeout = config.requestTimeoutMs;
  // headersTimeout must not exceed requestTimeout (Node rejects the pair otherwise).
  server.headersTimeout = Math.min(server.headersTimeout, config.requestTimeoutMs || server.headersTimeout);
  server.maxConnections = config.maxConnections;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: config.host, port: config.port, backlog: config.backlog }, () => {
      server.off('error', reject);
      resolve();
    });
  });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      shuttingDown = true;
      for (const res of inFlight) if (!res.headersSent) res.setHeader('Connection', 'close');
      // Stop accepting, but do not close idle keep-alive sockets now as
      // http.Server#close() would: a client may be sending its next request
      // on one at this very moment, and would see a reset. Each socket closes
      // after its next response (`Connection: close`) or its keep-alive
      // timeout, which the client knows from the `Keep-Alive` header.
      const closed = new Promise<void>((resolve) => net.Server.prototype.close.call(server, () => resolve()));
      const drained = await Promise.race([closed.then(() => true), delay(config.drainTimeoutMs).then(() => false)]);
      if (!drained) {
        log.warn('drain timeout: closing remaining connections', { drainTimeoutMs: config.drainTimeoutMs });
        server.closeAllConnections();
      }
      await shutdownTelemetry(config.flushTimeoutMs);
    })();
    return closing;
  };

  return { server, close };
}

/**
 * Request line plus headers, in bytes (Node's default is 16 KiB). Above
 * MAX_URL_LENGTH and below this, the app answers 414 for a long URL; above
 * this, Node's parser gives up and `answerClientError` answers.
 */
const MAX_HEADER_SIZE = 64 * 1024;

/**
 * Answers a request Node's HTTP parser rejected, as JSON like every other
 * error, instead of Node's bare 400/431.
 */
/**
 * Whether a header overflow came from the request line (414) rather than the
 * headers (431), judged from the chunk the parser failed on: it ends the
 * request line (` HTTP/1.1`) after MAX_URL_LENGTH bytes or after the chunk's
 * start, or holds no line end at all (the middle of a huge target).
 */
function isLongRequestLine(packet: Buffer | undefined): boolean {
  if (packet === undefined) return false;
  const lineEnd = packet.indexOf('\r\n');
  // No line end: the middle of a huge target or of a huge header value, which
  // only the start of a request line (`GET /…`) tells apart.
  if (lineEnd === -1) return /^[A-Z]+ /.test(packet.subarray(0, 32).toString('latin1'));
  const firstLine = packet.subarray(0, lineEnd).toString('latin1');
  if (!/ HTTP\/\d\.\d$/.test(firstLine)) return false;
  const startsRequest = /^[A-Z]+ /.test(firstLine);
  return !startsRequest || lineEnd > MAX_URL_LENGTH;
}

function answerClientError(error: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex): void {
  if (error.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  let status = 400;
  if (error.code === 'HPE_HEADER_OVERFLOW') status = isLongRequestLine(error.rawPacket) ? 414 : 431;
  else if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') status = 408;
  answerRaw(socket, status);
}

/** Node destroys the socket of a CONNECT nobody listens for: answer it like any method the app does not serve. */
function answerConnect(_req: http.IncomingMessage, socket: Duplex): void {
  answerRaw(socket, 405, 'method not allowed');
}

/** Writes a whole JSON error response to a socket that has no ServerResponse, and closes it. */
function answerRaw(socket: Duplex, status: number, message?: string): void {
  const reason = http.STATUS_CODES[status] ?? 'Bad Request';
  const body = JSON.stringify({ error: message ?? reason, status });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Entry point: load config, listen, signal readiness, handle signals. */
async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    log.error(`invalid configuration: ${error.message}`);
    process.exitCode = 1;
    return;
  }

  const running = await startServer(config);
  const address = running.server.address();
  log.info('listening', { address });
  // PM2 `wait_ready`: the worker counts as online (and a reload moves on) only now.
  process.send?.('ready');

  const exit = (code: number): void => {
    // PM2 writes app output to its log files asynchronously: wait for the
    // last line to be written before exiting, or it may be lost.
    process.stdout.write('', () => process.exit(code));
  };
  const stop = (signal: NodeJS.Signals): void => {
    log.info('shutting down', { signal });
    void running.close().then(() => exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  // A process-level fault leaves the worker in an unknown state: finish what
  // is in flight, flush the spans (including the one recording this fault),
  // and exit non-zero so that PM2 starts a fresh, instrumented worker.
  let crashing = false;
  const crash = (kind: string) => (error: unknown): void => {
    log.error(`${kind}: the worker exits`, { err: error });
    if (crashing) return;
    crashing = true;
    if (error instanceof Error) recordError(error);
    void running.close().then(() => exit(1));
  };
  process.on('uncaughtException', crash('uncaught exception'));
  process.on('unhandledRejection', crash('unhandled rejection'));
  // PM2 in cluster mode may also ask through IPC (`shutdown_with_message`).
  process.on('message', (message) => {
    if (message === 'shutdown') stop('SIGINT');
  });
}

if (require.main === module) {
  main().catch((error: unknown) => {
    log.error('failed to start', { err: error });
    process.exit(1);
  });
}
