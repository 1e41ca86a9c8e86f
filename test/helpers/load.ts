/**
 * Steady HTTP load for lifecycle tests (reload, scale, stop): a bounded
 * number of concurrent clients on loopback, some reusing keep-alive
 * connections and some opening one connection per request, each request to a
 * unique `/items/<n>` so that its span can be matched later.
 */
import http from 'node:http';

export interface LoadResult {
  sent: number;
  ok: number;
  failed: number;
  /** First few failures, for the assertion message. */
  errors: string[];
  /** The item ids of the requests that were answered 200. */
  answered: number[];
  /** How many keep-alive responses said `Connection: close`. */
  closeHeaders: number;
}

export interface Load {
  /** Counts so far, while the load runs: for awaiting progress instead of sleeping. */
  progress(): { sent: number; ok: number; failed: number };
  stop(): Promise<LoadResult>;
}

export function startLoad(options: { port: number; keepAliveClients: number; oneShotClients: number; firstId?: number; pauseMs?: number }): Load {
  const result: LoadResult = { sent: 0, ok: 0, failed: 0, errors: [], answered: [], closeHeaders: 0 };
  let nextId = options.firstId ?? 1;
  let running = true;
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: options.keepAliveClients });
  const oneShot = new http.Agent({ keepAlive: false });

  const request = (agent: http.Agent): Promise<void> =>
    new Promise((resolve) => {
      const id = nextId++;
      result.sent += 1;
      const req = http.get({ host: '127.0.0.1', port: options.port, path: `/items/${id}`, agent, timeout: 10_000 }, (res) => {
        if (res.headers.connection === 'close' && agent === keepAlive) result.closeHeaders += 1;
        res.resume();
        res.on('end', () => {
          if (res.statusCode === 200) {
            result.ok += 1;
            result.answered.push(id);
          } else {
            result.failed += 1;
            if (result.errors.length < 5) result.errors.push(`${id}: HTTP ${res.statusCode}`);
          }
          resolve();
        });
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (error) => {
        result.failed += 1;
        if (result.errors.length < 5) result.errors.push(`${id} (${agent === keepAlive ? 'keep-alive' : 'one-shot'}): ${error.message}`);
        resolve();
      });
    });

  const client = async (agent: http.Agent): Promise<void> => {
    while (running) {
      await request(agent);
      if (options.pauseMs) await new Promise((resolve) => setTimeout(resolve, options.pauseMs));
    }
  };
  const clients = [
    ...Array.from({ length: options.keepAliveClients }, () => client(keepAlive)),
    ...Array.from({ length: options.oneShotClients }, () => client(oneShot)),
  ];

  return {
    progress: () => ({ sent: result.sent, ok: result.ok, failed: result.failed }),
    async stop() {
      running = false;
      await Promise.all(clients);
      keepAlive.destroy();
      oneShot.destroy();
      return result;
    },
  };
}

/** One GET on a fresh connection; resolves with status, headers and body. */
export function get(port: number, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}
