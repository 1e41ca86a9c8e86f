/**
 * Where the SDK's own messages go: one JSON line each on stderr (the same
 * shape as the app's log lines), with two guarantees a production log needs:
 *
 * - the same message is printed at most once per window, and the number of
 *   repeats is reported with the next one, so a collector outage costs a few
 *   lines, not one per batch;
 * - no configured OTLP header value (an auth token) is ever printed, even if
 *   an error message were to quote one.
 */
import type { DiagLogger } from '@opentelemetry/api';

const WINDOW_MS = 30_000;

export const LOG_PREFIX = 'otel: ';

/** Writes one line to stderr in the app's log format. */
export function writeLine(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void {
  const line = { level, time: new Date().toISOString(), pid: process.pid, msg: LOG_PREFIX + msg, ...fields };
  process.stderr.write(`${JSON.stringify(line)}\n`);
}

/** Replaces every secret in `text` with `***`, longest first (secrets sorted by secretsIn). */
export function maskSecrets(text: string, secrets: readonly string[]): string {
  let masked = text;
  for (const secret of secrets) if (secret !== '') masked = masked.split(secret).join('***');
  return masked;
}

function describe(arg: unknown): string {
  if (arg instanceof Error) return arg.message;
  if (typeof arg === 'string') return arg;
  try {
    return JSON.stringify(arg) ?? String(arg);
  } catch {
    return String(arg);
  }
}

export class RateLimitedDiagLogger implements DiagLogger {
  private readonly seen = new Map<string, { last: number; suppressed: number }>();

  private readonly secrets: readonly string[];

  constructor(secrets: readonly string[]) {
    // Longest first, so a secret that contains another is masked whole.
    this.secrets = secrets.filter((secret) => secret !== '').sort((a, b) => b.length - a.length);
  }

  private emit(level: 'info' | 'warn' | 'error', message: string, args: unknown[]): void {
    const text = maskSecrets([message, ...args.map(describe)].join(' '), this.secrets).replace(/\s+/g, ' ').trim();
    // Collapse numbers so that "3 spans" and "5 spans" count as the same message.
    const key = `${level}:${text.replace(/\d+/g, '#').slice(0, 200)}`;
    const now = Date.now();
    const entry = this.seen.get(key);
    if (entry !== undefined && now - entry.last < WINDOW_MS) {
      entry.suppressed += 1;
      return;
    }
    const repeats = entry?.suppressed ?? 0;
    this.seen.set(key, { last: now, suppressed: 0 });
    if (this.seen.size > 1000) this.seen.clear();
    writeLine(level, text, repeats > 0 ? { repeatedSinceLast: repeats } : undefined);
  }

  error = (message: string, ...args: unknown[]): void => this.emit('error', message, args);
  warn = (message: string, ...args: unknown[]): void => this.emit('warn', message, args);
  info = (message: string, ...args: unknown[]): void => this.emit('info', message, args);
  debug = (message: string, ...args: unknown[]): void => this.emit('info', message, args);
  verbose = (message: string, ...args: unknown[]): void => this.emit('info', message, args);
}
