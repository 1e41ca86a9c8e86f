/**
 * Routes that inject faults and report process figures, for the kit's own
 * fault and soak tests. Mounted only when ENABLE_TEST_ROUTES=true; never in
 * a normal deployment.
 */
import Router from '@koa/router';
import { telemetryStats } from './telemetry';

export function testRoutes(): Router {
  const router = new Router({ prefix: '/_test' });
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
    };
  });
  return router;
}
