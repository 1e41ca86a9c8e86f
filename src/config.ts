/**
 * The service's settings, read once from the environment.
 *
 * This is the only module of the app that reads `process.env`; the telemetry
 * preload (`otel/`) reads only `OTEL_*` variables, on its own, because it runs
 * before any of the app is loaded.
 *
 * Defaults follow the Gunicorn settings this kit replaces (see the README's
 * mapping table): bind 0.0.0.0:8000, backlog 2048, keep-alive 2 s, request
 * timeout 60 s, 1000 connections per worker, log level info, access log on.
 */

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly backlog: number;
  /** How long an idle keep-alive connection stays open (Gunicorn `keepalive`). */
  readonly keepAliveTimeoutMs: number;
  /** Longest time a request may take to arrive and be answered (Gunicorn `timeout`). */
  readonly requestTimeoutMs: number;
  /** Connections a worker accepts at once (Gunicorn `worker_connections`). */
  readonly maxConnections: number;
  /** On shutdown, how long in-flight requests get to finish. */
  readonly drainTimeoutMs: number;
  /** On shutdown, how long buffered telemetry gets to reach the collector. */
  readonly flushTimeoutMs: number;
  /** Mounts the fault-injection routes under /_test (the kit's own tests only). */
  readonly testRoutes: boolean;
  /** Lines below this level are not written (Gunicorn `loglevel`). */
  readonly logLevel: LogLevel;
  /** One line per request (Gunicorn `accesslog`). */
  readonly accessLog: boolean;
}

/** pino's levels, which LOG_LEVEL names, Gunicorn's spellings included. */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

/** LOG_LEVEL's values: pino's levels, and Gunicorn's `warning` and `critical`. */
const LOG_LEVELS: Readonly<Record<string, LogLevel>> = {
  trace: 'trace',
  debug: 'debug',
  info: 'info',
  warn: 'warn',
  warning: 'warn',
  error: 'error',
  critical: 'fatal',
  fatal: 'fatal',
  silent: 'silent',
};

type Env = Readonly<Record<string, string | undefined>>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/**
 * Reads an integer setting. Env values are strings: anything but plain decimal
 * digits within [min, max] is rejected with a message naming the variable.
 */
function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const text = raw.trim();
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function flag(env: Env, name: string, fallback = false): boolean {
  const raw = env[name]?.trim().toLowerCase();
  if (raw === undefined || raw === '') return fallback;
  if (raw === 'false' || raw === '0') return false;
  if (raw === 'true' || raw === '1') return true;
  throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(env[name])}`);
}

function logLevel(env: Env): LogLevel {
  const raw = env.LOG_LEVEL?.trim().toLowerCase();
  if (raw === undefined || raw === '') return 'info';
  const level = Object.hasOwn(LOG_LEVELS, raw) ? LOG_LEVELS[raw] : undefined;
  if (level === undefined) {
    throw new ConfigError(`LOG_LEVEL must be one of ${Object.keys(LOG_LEVELS).join(', ')}, got ${JSON.stringify(env.LOG_LEVEL)}`);
  }
  return level;
}

function host(env: Env): string {
  const raw = env.HOST?.trim();
  if (raw === undefined || raw === '') return '0.0.0.0';
  if (/[\s/]/.test(raw)) throw new ConfigError(`HOST must be a host name or IP address, got ${JSON.stringify(raw)}`);
  return raw;
}

/**
 * Turns the environment into a frozen, typed config, or throws a
 * {@link ConfigError} naming the first variable that is wrong.
 */
export function loadConfig(env: Env = process.env): Config {
  const config: Config = {
    host: host(env),
    port: integer(env, 'PORT', 8000, 0, 65535),
    backlog: integer(env, 'BACKLOG', 2048, 1, 65535),
    keepAliveTimeoutMs: integer(env, 'KEEP_ALIVE_TIMEOUT_MS', 2000, 0, 3_600_000),
    requestTimeoutMs: integer(env, 'REQUEST_TIMEOUT_MS', 60_000, 0, 3_600_000),
    maxConnections: integer(env, 'MAX_CONNECTIONS', 1000, 1, 1_000_000),
    drainTimeoutMs: integer(env, 'DRAIN_TIMEOUT_MS', 3000, 0, 600_000),
    flushTimeoutMs: integer(env, 'FLUSH_TIMEOUT_MS', 2000, 0, 600_000),
    testRoutes: flag(env, 'ENABLE_TEST_ROUTES'),
    logLevel: logLevel(env),
    accessLog: flag(env, 'ACCESS_LOG', true),
  };
  return Object.freeze(config);
}
