/**
 * The server lifecycle: listen, tell PM2 we are ready, and shut down
 * gracefully. This is the script PM2 runs in every cluster worker, and what
 * `npm run dev` runs on its own.
 *
 * Shutdown order (PM2 sends SIGINT, then SIGKILL after `kill_timeout`):
 *   1. stop accepting connections, `/readyz` answers 503;
 *   2. let in-flight requests finish (at most DRAIN_TIMEOUT_MS), answering
 *      them, and any request that still arrives on an open keep-alive
 *      socket, with `Connection: close`; once none is left, close the idle
 *      keep-alive sockets; past the timeout, cut what is still running and
 *      log how many requests that was;
 *   3. flush telemetry (at most FLUSH_TIMEOUT_MS);
 *   4. exit 0.
 * The ecosystem file sets `kill_timeout` above the sum of both timeouts.
 */
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { createApp, MAX_URL_LENGTH } from './app';
import { ConfigError, loadConfig, type Config } from './config';
import { createLogger, flushLogs, log as defaultLog, type Logger } from './log';
import { logsExported, recordError, shutdownTelemetry } from './telemetry';

export interface RunningServer {
  readonly server: http.Server;
  /** Resolves once the server is closed and telemetry flushed. Safe to call twice. */
  close(): Promise<void>;
}

/** Starts listening with the given config; resolves once the port is bound. */
export async function startServer(config: Config, log: Logger = defaultLog): Promise<RunningServer> {
  let shuttingDown = false;
  const app = createApp({ isShuttingDown: () => shuttingDown, testRoutes: config.testRoutes, log, accessLog: config.accessLog });
  const handle = app.callback();

  // Requests not yet answered: what the drain waits for, and what a drain
  // timeout cuts. Once shutdown begins they are answered `Connection: close`.
  const inFlight = new Set<http.ServerResponse>();
  let allAnswered: (() => void) | undefined;
  // Node checks the request and headers timeouts only every 30 s by default,
  // so a 1 s REQUEST_TIMEOUT_MS would answer 408 after up to 31 s: check at a
  // tenth of the timeout instead (at most 10 % late).
  const connectionsCheckingInterval = Math.min(30_000, Math.max(250, Math.ceil((config.requestTimeoutMs || 60_000) / 10)));
  const server = http.createServer({ maxHeaderSize: MAX_HEADER_SIZE, connectionsCheckingInterval }, (req, res) => {
    // Keep-alive clients of a worker that is going away are told so, rather than reset.
    if (shuttingDown) res.setHeader('Connection', 'close');
    inFlight.add(res);
    res.once('close', () => {
      inFlight.delete(res);
      if (inFlight.size === 0) allAnswered?.();
    });
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

  const answered = (): Promise<void> =>
    inFlight.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => (allAnswered = resolve));

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      shuttingDown = true;
      for (const res of inFlight) if (!res.headersSent) res.setHeader('Connection', 'close');
      // Stop accepting, but do not close idle keep-alive sockets now as
      // http.Server#close() would: a client may be sending its next request
      // on one at this very moment, and would see a reset. Such a client is
      // answered `Connection: close` instead. The sockets still idle once no
      // request has been in flight for IDLE_GRACE_MS are closed: their
      // clients are not sending, and waiting for their keep-alive timeout
      // (which may be longer than the drain, e.g. behind a load balancer)
      // would only delay the stop.
      const closed = new Promise<void>((resolve) => net.Server.prototype.close.call(server, () => resolve()));
      let timedOut = false;
      const drain = async (): Promise<void> => {
        do {
          await answered();
          await sleep(IDLE_GRACE_MS);
        } while (inFlight.size > 0 && !timedOut);
        if (!timedOut) server.closeIdleConnections();
        await closed;
      };
      // `closed` alone ends it when no connection is left open.
      const drained = await Promise.race([Promise.race([closed, drain()]).then(() => true), delay(config.drainTimeoutMs).then(() => false)]);
      if (!drained) {
        timedOut = true;
        log.warn({ drainTimeoutMs: config.drainTimeoutMs, requests: inFlight.size }, 'drain timeout: cutting the requests still running');
        server.closeAllConnections();
      }
      await shutdownTelemetry(config.flushTimeoutMs);
    })();
    return closing;
  };

  return { server, close };
}

/**
 * On stop, how long no request must have been in flight before the idle
 * keep-alive sockets are closed: a client reusing its socket sends within
 * this time, and is then answered `Connection: close` rather than cut.
 */
const IDLE_GRACE_MS = 250;

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
  answerRawAfterPending(socket, status);
}

/** Sockets whose raw error answer waits for the responses before it. */
const answering = new WeakSet<Duplex>();

/**
 * Answers raw once the socket has no response pending: the parser may fail on
 * a request pipelined behind one still in flight, and a raw answer written now
 * would reach the client as the answer to that earlier request. Node keeps the
 * response it is writing as `socket._httpMessage`, the pipelined ones queued
 * behind it, and makes the same check before its own raw answer
 * (`socketOnError` in lib/_http_server.js).
 */
function answerRawAfterPending(socket: Duplex, status: number): void {
  const pending = (socket as Duplex & { _httpMessage?: http.ServerResponse | null })._httpMessage;
  if (!pending) {
    answerRaw(socket, status);
    return;
  }
  // The parser reports its error again for each later chunk: answer once.
  if (answering.has(socket)) return;
  answering.add(socket);
  // 'close' follows the response's end, once Node has moved on to the next queued response.
  pending.once('close', () => {
    answering.delete(socket);
    if (socket.writable) answerRawAfterPending(socket, status);
    else socket.destroy();
  });
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
    defaultLog.error(`invalid configuration: ${error.message}`);
    process.exitCode = 1;
    return;
  }

  // The preload says whether log records are exported; then each line is also a record.
  const log = createLogger({ level: config.logLevel, emit: logsExported() });
  const running = await startServer(config, log);
  const address = running.server.address();
  log.info({ address }, 'listening');
  // PM2 `wait_ready`: the worker counts as online (and a reload moves on) only now.
  process.send?.('ready');

  const exit = (code: number): void => {
    // PM2 writes app output to its log files asynchronously, and the logger
    // gathers lines for the end of the turn: hand them over and wait for the
    // last one to be written before exiting, or it may be lost (pm2 #4075).
    flushLogs(() => process.exit(code));
  };
  const stop = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'shutting down');
    void running.close().then(() => exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  // A process-level fault leaves the worker in an unknown state: finish what
  // is in flight, flush the spans (including the one recording this fault),
  // and exit non-zero so that PM2 starts a fresh, instrumented worker.
  let crashing = false;
  const crash = (kind: string) => (error: unknown): void => {
    log.error({ err: error }, `${kind}: the worker exits`);
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
    defaultLog.error({ err: error }, 'failed to start');
    flushLogs(() => process.exit(1));
  });
}
