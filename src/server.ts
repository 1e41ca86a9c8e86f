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
import { createApp } from './app';
import { ConfigError, loadConfig, type Config } from './config';
import { log } from './log';
import { shutdownTelemetry } from './telemetry';

export interface RunningServer {
  readonly server: http.Server;
  /** Resolves once the server is closed and telemetry flushed. Safe to call twice. */
  close(): Promise<void>;
}

/** Starts listening with the given config; resolves once the port is bound. */
export async function startServer(config: Config): Promise<RunningServer> {
  let shuttingDown = false;
  const app = createApp({ isShuttingDown: () => shuttingDown });
  const handle = app.callback();

  // Responses not yet started: told `Connection: close` once shutdown begins.
  const inFlight = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    // Keep-alive clients of a worker that is going away are told so, rather than reset.
    if (shuttingDown) res.setHeader('Connection', 'close');
    else {
      inFlight.add(res);
      res.once('close', () => inFlight.delete(res));
    }
    void handle(req, res);
  });
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

  const stop = (signal: NodeJS.Signals): void => {
    log.info('shutting down', { signal });
    void running.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
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
