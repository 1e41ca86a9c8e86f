/**
 * The access log (Gunicorn `accesslog`): one line per request once its
 * response is done, with the route template, the outcome and the trace id,
 * so that a line leads to its trace and a trace to its line.
 *
 * Health checks are left out, as they are for spans (the default
 * OTEL_NODE_EXCLUDED_URLS). Values that may carry secrets never reach the
 * line: query values of parameters such as `token` or `password` are
 * replaced here, headers (logged at debug level only) are redacted by the
 * logger (`src/log.ts`). Whatever the client sent, the line stays one JSON
 * object: pino escapes every string it writes.
 */
import { performance } from 'node:perf_hooks';
import { context } from '@opentelemetry/api';
import type { Context, Next } from 'koa';
import { infoLine, REDACTED, type Logger } from './log';

/** Paths without an access line: the health checks PM2 users and load balancers poll. */
export const ACCESS_LOG_EXCLUDED: ReadonlySet<string> = new Set(['/healthz', '/readyz']);

/** Longest user agent kept, in characters; a longer one is cut and marked. */
export const MAX_USER_AGENT = 512;

/** Query parameters whose values are replaced: any name containing one of these words. */
const SECRET_PARAMETER = /token|key|pass|pwd|secret|sig|code|auth|credential|session|jwt/i;

/** The message of every access line, to tell them from the others. */
export const ACCESS_MESSAGE = 'request';

/** Replaces the values of secret-looking parameters in a raw query string (without its `?`). */
export function redactQuery(query: string): string {
  // Most queries name no secret and encode no name: nothing to split.
  if (!SECRET_PARAMETER.test(query) && !query.includes('%')) return query;
  return query
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      const rawName = eq === -1 ? pair : pair.slice(0, eq);
      let name = rawName;
      try {
        name = decodeURIComponent(rawName.replace(/\+/g, ' '));
      } catch {
        // A malformed name is judged as written.
      }
      return eq !== -1 && SECRET_PARAMETER.test(name) ? `${rawName}=${REDACTED}` : pair;
    })
    .join('&');
}

export interface AccessFields {
  method: string;
  /** The route template (`/items/:id`); absent when no route matched. */
  route: string | undefined;
  path: string;
  /** The raw query string, secrets replaced; absent without one. */
  query: string | undefined;
  /** The status sent; absent when the request was cut before any answer (Koa's default 404 would mislead). */
  status: number | undefined;
  duration_ms: number;
  /** Response body bytes (Content-Length); absent when not known. */
  bytes: number | undefined;
  remote_addr: string | undefined;
  user_agent: string | undefined;
  /** Whether the response was cut before it was complete. */
  aborted?: true;
  /** Request headers, at debug level only; secrets redacted by the logger. */
  headers?: Record<string, unknown>;
}

/** The fields of a request's access line; `startedAt` is performance.now() when it arrived. */
export function accessFields(ctx: Context, startedAt: number, withHeaders: boolean): AccessFields {
  const { req, res } = ctx;
  const url = req.url ?? '';
  const mark = url.indexOf('?');
  const length = Number(res.getHeader('content-length'));
  const agent = req.headers['user-agent'];
  const route = (ctx as Context & { _matchedRoute?: unknown })._matchedRoute;
  const fields: AccessFields = {
    method: req.method ?? '',
    route: typeof route === 'string' ? route : undefined,
    path: mark === -1 ? url : url.slice(0, mark),
    query: mark === -1 ? undefined : redactQuery(url.slice(mark + 1)),
    status: res.headersSent ? res.statusCode : undefined,
    duration_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
    bytes: Number.isFinite(length) ? length : undefined,
    remote_addr: req.socket.remoteAddress,
    user_agent: agent !== undefined && agent.length > MAX_USER_AGENT ? `${agent.slice(0, MAX_USER_AGENT)}…` : agent,
  };
  if (!res.writableFinished) fields.aborted = true;
  if (withHeaders) fields.headers = req.headers;
  return fields;
}

/**
 * The access-log middleware, mounted first. The line is written when the
 * response is done (its status, size and duration are final then), in the
 * request's context, so that it carries the request's trace id.
 */
export function accessLog(logger: Logger, excluded: ReadonlySet<string> = ACCESS_LOG_EXCLUDED) {
  return async function logAccess(ctx: Context, next: Next): Promise<void> {
    // LOG_LEVEL above info: the line would not be written, so nothing is measured.
    if (!logger.isLevelEnabled('info') || excluded.has(ctx.path)) return next();
    const startedAt = performance.now();
    const active = context.active();
    ctx.res.once('close', () => {
      context.with(active, () => {
        const fields = accessFields(ctx, startedAt, logger.isLevelEnabled('debug'));
        // The kit's own writer, the same line for less (src/log.ts); pino for what it cannot write (headers, at debug level).
        if (!infoLine(logger, fields, ACCESS_MESSAGE)) logger.info(fields, ACCESS_MESSAGE);
      });
    });
    return next();
  };
}
