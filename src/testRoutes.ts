/**
 * Routes that inject faults and report process figures, for the kit's own
 * fault and soak tests. Mounted only when ENABLE_TEST_ROUTES=true; never in
 * a normal deployment.
 */
import Router from '@koa/router';
import type { Logger } from './log';
import { telemetryLogStats, telemetryStats } from './telemetry';

/** Longest `/_test/slow` wait: a bounded test route, well under REQUEST_TIMEOUT_MS's default. */
export const MAX_SLOW_MS = 30_000;

export function testRoutes(log: Logger): Router {
  const router = new Router({ prefix: '/_test' });
  // Writes one line from within the request (`?marker=` is copied into it): its trace context is the request's.
  router.get('/log', (ctx) => {
    const marker = typeof ctx.query.marker === 'string' ? ctx.query.marker.slice(0, 200) : '';
    log.info({ marker }, 'test log line');
    ctx.body = { pid: process.pid, marker };
  });
  router.get('/error', () => {
    throw new Error('injected handler error');
  });
  // Answered first, then the process-level fault: the worker must flush and exit.
  router.get('/uncaught', (ctx) => {
    setImmediate(() => {
      throw new Error('injected uncaught exception');
    });
    ctx.status = 202;
    ctx.body = { pid: process.pid };
  });
  router.get('/rejection', (ctx) => {
    setImmediate(() => void Promise.reject(new Error('injected unhandled rejection')));
    ctx.status = 202;
    ctx.body = { pid: process.pid };
  });
  // Answers after `ms` milliseconds: a request still in flight when a stop begins.
  router.get('/slow', async (ctx) => {
    const text = ctx.query.ms;
    const ms = Number(text);
    if (typeof text !== 'string' || !/^\d{1,6}$/.test(text) || ms > MAX_SLOW_MS) {
      ctx.throw(400, `query parameter ms must be an integer from 0 to ${MAX_SLOW_MS}`);
    }
    await new Promise((resolve) => setTimeout(resolve, ms));
    ctx.body = { pid: process.pid, ms };
  });
  // Answers with the pid, then blocks the event loop for `ms` (a stuck worker).
  router.get('/block', (ctx) => {
    const ms = Math.min(Number(ctx.query.ms) || 0, 60_000);
    ctx.res.once('finish', () =>
      setImmediate(() => {
        const until = Date.now() + ms;
        while (Date.now() < until);
      }),
    );
    ctx.body = { pid: process.pid, ms };
  });
  router.get('/stats', (ctx) => {
    const memory = process.memoryUsage();
    ctx.body = {
      pid: process.pid,
      rss: memory.rss,
      heapUsed: memory.heapUsed,
      activeResources: process.getActiveResourcesInfo().length,
      telemetry: telemetryStats(),
      logs: telemetryLogStats(),
    };
  });
  return router;
}
