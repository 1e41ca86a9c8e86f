/**
 * The Koa application: routes and error handling. It never listens; the
 * server lifecycle lives in `server.ts`, and tests drive `app.callback()`.
 */
import Koa from 'koa';
import Router from '@koa/router';
import type { Context, Next } from 'koa';
import { accessLog } from './accessLog';
import { log as defaultLog, type Logger } from './log';
import { nameSpanAfterRoute, recordError } from './telemetry';
import { testRoutes } from './testRoutes';

export interface AppOptions {
  /** True once the server has started shutting down: `/readyz` then answers 503. */
  readonly isShuttingDown?: () => boolean;
  /** Mount the fault-injection routes of `testRoutes.ts`. */
  readonly testRoutes?: boolean;
  readonly log?: Logger;
  /** Write one line per request (`src/accessLog.ts`) with `log`. */
  readonly accessLog?: boolean;
}

/** An error whose status and message are meant for the client (4xx). */
function httpError(status: number, message: string, extra?: Record<string, unknown>): Error {
  return Object.assign(new Error(message), { status, expose: true, ...extra });
}

/** Longest request target served; longer ones answer 414 (the server's header limit is larger). */
export const MAX_URL_LENGTH = 8192;

/** Path parameters are integers in decimal; beyond the safe range they are not integers. */
function parseInteger(text: string): number | undefined {
  if (text.length > 64 || !/^-?\d+$/.test(text)) return undefined;
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * The one error middleware, mounted first: expected (exposed 4xx) errors
 * answer with their message; anything else is logged once, recorded on the
 * trace, and answered with a plain 500.
 */
function errorHandler(log: Logger) {
  return async function handleErrors(ctx: Context, next: Next): Promise<void> {
    try {
      if (ctx.url.length > MAX_URL_LENGTH) throw httpError(414, `request target longer than ${MAX_URL_LENGTH} bytes`);
      await next();
      if (ctx.body === undefined && ctx.status === 404) throw httpError(404, `no route for ${ctx.method} ${ctx.path}`);
      // The router answers 405 (with `Allow`) or, for a method no route knows,
      // 501; both are the client's mistake, answered 405 with a JSON body.
      if (ctx.body === undefined && (ctx.status === 405 || ctx.status === 501)) throw httpError(405, 'method not allowed');
    } catch (caught) {
      const error = caught instanceof Error ? caught : new Error(String(caught));
      const props = error as Error & { status?: unknown; expose?: unknown; headers?: unknown; param?: unknown };
      const status = typeof props.status === 'number' && props.status >= 400 && props.status < 600 ? props.status : 500;
      const exposed = status < 500 && props.expose === true;
      if (!exposed) {
        log.error({ method: ctx.method, path: ctx.path, status, err: error }, 'request failed');
        recordError(error);
      }
      if (exposed && props.headers && typeof props.headers === 'object') ctx.set(props.headers as Record<string, string>);
      ctx.status = exposed ? status : 500;
      ctx.body = {
        error: exposed ? error.message : 'Internal Server Error',
        status: ctx.status,
        ...(exposed && typeof props.param === 'string' ? { param: props.param } : {}),
      };
    }
  };
}

/** Builds the application. Nothing here listens or reads the environment. */
export function createApp(options: AppOptions = {}): Koa {
  const isShuttingDown = options.isShuttingDown ?? (() => false);
  const app = new Koa();
  // Koa would log errors again on its own; the error middleware logs each once.
  app.silent = true;

  const router = new Router();
  router.get('/', (ctx) => {
    ctx.body = { message: 'Hello World from Koa with auto-instrumentation!' };
  });
  router.get('/items/:id', (ctx) => {
    const id = parseInteger(ctx.params.id ?? '');
    if (id === undefined) throw httpError(422, 'path parameter id must be an integer', { param: 'id' });
    ctx.body = { item_id: id };
  });
  router.get('/healthz', (ctx) => {
    ctx.body = { status: 'ok' };
  });
  router.get('/readyz', (ctx) => {
    const ready = !isShuttingDown();
    ctx.status = ready ? 200 : 503;
    ctx.body = { status: ready ? 'ready' : 'shutting down' };
  });

  const log = options.log ?? defaultLog;
  // First, so that its line covers the error middleware's answer too.
  if (options.accessLog) app.use(accessLog(log));
  app.use(errorHandler(log));
  app.use(nameSpanAfterRoute);
  app.use(router.routes());
  if (options.testRoutes) app.use(testRoutes(log).routes());
  app.use(router.allowedMethods());
  return app;
}
