/**
 * The app's side of the telemetry preload (`otel/register.ts`).
 *
 * The preload owns the SDK; the app only needs two things from it: to record
 * an unexpected error on the request's server span, and to flush buffered
 * spans at the right moment of shutdown (after in-flight requests finished,
 * before the process exits). Both work, as no-ops, when the app runs without
 * the preload or with `OTEL_SDK_DISABLED=true`.
 */
import { SpanStatusCode, context, trace } from '@opentelemetry/api';
import { RPCType, getRPCMetadata } from '@opentelemetry/core';
import type { Context, Next } from 'koa';

/** What the preload publishes on `globalThis` under {@link TELEMETRY_HOOK}. */
export interface TelemetryHook {
  /** Flushes, then shuts the SDK down; later spans are dropped. */
  shutdown(timeoutMs: number): Promise<void>;
  /** Spans delivered, dropped and held (during a collector outage) by the OTLP exporters so far. */
  stats(): { delivered: number; dropped: number; held: number };
  /** The same for the OTLP log record exporters. */
  logStats?(): { delivered: number; dropped: number; held: number };
  /** Whether log records are exported (OTEL_LOGS_EXPORTER): the app's logger then emits each line to the Logs SDK. */
  readonly logsExported?: boolean;
}

/** Shared with `otel/register.ts`: a registry symbol, so both sides agree without importing each other. */
export const TELEMETRY_HOOK = Symbol.for('koa-pm2-otel.telemetry');

function hook(): TelemetryHook | undefined {
  return (globalThis as Record<symbol, TelemetryHook | undefined>)[TELEMETRY_HOOK];
}

/** Flushes and stops telemetry, if the preload started it. Never rejects. */
export async function shutdownTelemetry(timeoutMs: number): Promise<void> {
  await hook()?.shutdown(timeoutMs).catch(() => undefined);
}

/** What the OTLP exporters did so far, or undefined without telemetry. */
export function telemetryStats(): ReturnType<TelemetryHook['stats']> | undefined {
  return hook()?.stats();
}

/** What the OTLP log record exporters did so far, or undefined without them. */
export function telemetryLogStats(): ReturnType<NonNullable<TelemetryHook['logStats']>> | undefined {
  return hook()?.logStats?.();
}

/** Whether the preload exports log records, so that the logger should emit them. */
export function logsExported(): boolean {
  return hook()?.logsExported === true;
}

/**
 * Records an unexpected error on the request's server span (the HTTP
 * instrumentation keeps it in the RPC metadata of the request's context) and
 * on the active span, with status ERROR.
 */
export function recordError(error: Error): void {
  const active = context.active();
  const spans = new Set([getRPCMetadata(active)?.span, trace.getSpan(active)]);
  for (const span of spans) {
    if (!span?.isRecording()) continue;
    span.recordException(error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
  }
}

/**
 * Names the request's server span after the route that matched
 * (`GET /items/:id`, attribute `http.route`), as the Koa instrumentation
 * would, without its per-layer spans.
 *
 * The HTTP instrumentation reads the route from the RPC metadata of the
 * request's context when the response ends; @koa/router records the matched
 * route on the Koa context. Measured on this kit (README, Performance): the
 * Koa instrumentation's router span cost a third of the tracing overhead and
 * doubled the spans exported per request, for no information the server span
 * lacks. With `OTEL_NODE_ENABLED_INSTRUMENTATIONS=…,koa` both agree.
 */
export async function nameSpanAfterRoute(ctx: Context, next: Next): Promise<void> {
  try {
    await next();
  } finally {
    const route = (ctx as Context & { _matchedRoute?: unknown })._matchedRoute;
    if (typeof route === 'string') {
      const metadata = getRPCMetadata(context.active());
      if (metadata?.type === RPCType.HTTP) metadata.route = route;
    }
  }
}
