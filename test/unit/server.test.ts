/**
 * The server lifecycle in-process, on a real socket (127.0.0.1, port 0): raw
 * error answers on a pipelined connection, and the graceful stop. The same
 * stop under PM2, with spans, is in `test/e2e/stop.test.ts`.
 */
import { loadConfig } from '../../src/config';
import { log } from '../../src/log';
import { startServer, type RunningServer } from '../../src/server';
import { keepAliveConnection, rawRequest, responses } from '../helpers/rawHttp';

let running: RunningServer | undefined;

async function start(env: Record<string, string> = {}): Promise<{ server: RunningServer; port: number }> {
  running = await startServer(loadConfig({ HOST: '127.0.0.1', PORT: '0', ENABLE_TEST_ROUTES: 'true', ...env }));
  const address = running.server.address();
  return { server: running, port: typeof address === 'object' && address ? address.port : 0 };
}

afterEach(async () => {
  await running?.close();
  running = undefined;
  jest.restoreAllMocks();
});

describe('raw error answers', () => {
  it('never answer ahead of a pipelined request still in flight: its 200 comes first, then the 400', async () => {
    const { port } = await start();
    const result = await rawRequest(port, 'GET /_test/slow?ms=300 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /\x01bad HTTP/1.1\r\nHost: localhost\r\n\r\n');
    expect(result.timedOut).toBe(false);
    const [first, second, ...more] = responses(result.raw);
    expect(first).toMatchObject({ status: 200, body: JSON.stringify({ pid: process.pid, ms: 300 }) });
    expect(second).toMatchObject({ status: 400, headers: { connection: 'close' }, body: '{"error":"Bad Request","status":400}' });
    expect(more).toEqual([]);
  });

  it('wait for every pipelined response before them', async () => {
    const { port } = await start();
    const slow = 'GET /_test/slow?ms=200 HTTP/1.1\r\nHost: localhost\r\n\r\n';
    const result = await rawRequest(port, `${slow}GET /items/1 HTTP/1.1\r\nHost: localhost\r\n\r\n${slow}GET / HTTP/1.1\r\nHost: bad\x00host\r\n\r\n`);
    expect(responses(result.raw).map((r) => r.status)).toEqual([200, 200, 200, 400]);
  });

  it('are still written at once when nothing is pending', async () => {
    const { port } = await start();
    const result = await rawRequest(port, 'GET /\x01bad HTTP/1.1\r\nHost: localhost\r\n\r\n');
    expect(result.status).toBe(400);
    expect(result.complete).toBe(true);
  });
});

describe('graceful stop', () => {
  it('answers a request in flight with Connection: close, and a request arriving on an open keep-alive socket too, then closes idle sockets', async () => {
    const { server, port } = await start({ KEEP_ALIVE_TIMEOUT_MS: '65000', DRAIN_TIMEOUT_MS: '5000' });
    const idle = await keepAliveConnection(port);
    const reused = await keepAliveConnection(port);
    expect((await idle.get('/items/1')).status).toBe(200);
    expect((await reused.get('/items/2')).status).toBe(200);
    const slow = rawRequest(port, 'GET /_test/slow?ms=600 HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: 10_000 });
    await new Promise((resolve) => setTimeout(resolve, 100));

    const started = Date.now();
    const closed = server.close();
    const readyz = await reused.get('/readyz');
    expect(readyz).toMatchObject({ status: 503, headers: { connection: 'close' } });

    const answer = await slow;
    expect(answer).toMatchObject({ status: 200, complete: true, headers: { connection: 'close' } });
    // The idle socket is closed (not reset) once nothing is in flight, long before its keep-alive timeout or the drain timeout.
    expect(await idle.ended).toBeUndefined();
    await closed;
    expect(Date.now() - started).toBeLessThan(4000);
  });

  it('keep-alive clients sending throughout a stop are each answered Connection: close, never cut', async () => {
    const { server, port } = await start({ KEEP_ALIVE_TIMEOUT_MS: '65000', DRAIN_TIMEOUT_MS: '5000' });
    let id = 0;
    let stopping: Promise<void> | undefined;
    const client = async (): Promise<{ answered: number; last: number }> => {
      const connection = await keepAliveConnection(port);
      for (let answered = 0; ; answered += 1) {
        const response = await connection.get(`/items/${(id += 1)}`);
        // The stop begins once every client is under way.
        if (id >= 200) stopping ??= server.close();
        if (response.status !== 200 || response.headers.connection === 'close') return { answered, last: response.status };
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    };
    const results = await Promise.all(Array.from({ length: 8 }, client));
    await stopping;
    expect(results.map((r) => r.last)).toEqual(Array(8).fill(200));
  });

  it('with nothing in flight, closes idle keep-alive sockets and ends at once', async () => {
    const warn = jest.spyOn(log, 'warn').mockImplementation(() => undefined);
    const { server, port } = await start({ KEEP_ALIVE_TIMEOUT_MS: '65000', DRAIN_TIMEOUT_MS: '5000' });
    const idle = await keepAliveConnection(port);
    expect((await idle.get('/')).status).toBe(200);
    const started = Date.now();
    await server.close();
    expect(Date.now() - started).toBeLessThan(4000);
    expect(await idle.ended).toBeUndefined();
    expect(warn).not.toHaveBeenCalled();
  });

  it('with no connection open, ends at once, even with a drain timeout shorter than the idle grace', async () => {
    const warn = jest.spyOn(log, 'warn').mockImplementation(() => undefined);
    const { server, port } = await start({ DRAIN_TIMEOUT_MS: '50' });
    expect((await rawRequest(port, 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')).status).toBe(200);
    await server.close();
    expect(warn).not.toHaveBeenCalled();
  });

  it('after DRAIN_TIMEOUT_MS, cuts the requests still running and logs how many', async () => {
    const warn = jest.spyOn(log, 'warn').mockImplementation(() => undefined);
    const { server, port } = await start({ DRAIN_TIMEOUT_MS: '300' });
    const cut = [1, 2, 3].map(() => rawRequest(port, 'GET /_test/slow?ms=1500 HTTP/1.1\r\nHost: localhost\r\n\r\n', { timeoutMs: 10_000 }));
    const idle = await keepAliveConnection(port);
    expect((await idle.get('/')).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 100));
    await server.close();
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn).toHaveBeenCalledWith({ drainTimeoutMs: 300, requests: 3 }, 'drain timeout: cutting the requests still running');
    for (const result of await Promise.all(cut)) expect(result).toMatchObject({ status: 0, complete: false, timedOut: false });
    // Let the cut handlers' timers end before the next test.
    await new Promise((resolve) => setTimeout(resolve, 1500));
  });
});
