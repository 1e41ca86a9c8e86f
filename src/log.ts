/**
 * The service's logger: pino, one JSON object per line, so that `pm2 logs`
 * shows one line per event and log shippers can parse it.
 *
 * A line looks like the kit's earlier ones (`level` as a label, `time` in
 * ISO 8601, `pid`, `msg`), plus the trace context of the request being
 * handled (`trace_id`, `span_id`, `trace_flags`, the OpenTelemetry
 * log-correlation names), added by a mixin that reads the active span.
 *
 * Lines go through `process.stdout` (info and below) and `process.stderr`
 * (warn and above), not to file descriptors 1 and 2 as pino's default
 * destination does: in cluster mode PM2 captures the workers' output by
 * replacing `process.stdout.write` (pm2 lib/ProcessContainer.js), and lines
 * written to fd 1 directly miss the app's log files (pino #491, pm2 #3871).
 * Lines are gathered and written together, at most GATHER_MS later (or at
 * once past 64 KiB); `flush()` writes what is gathered and waits until the
 * stream has taken it, and the process's exit writes it too.
 *
 * When the telemetry preload exports log records (OTEL_LOGS_EXPORTER), each
 * line is also emitted to the OpenTelemetry Logs SDK, once, with what the
 * line says (so redacted), in the active context (so with its span context):
 * built from pino's own object where that holds exactly the line (every
 * access line; parsing it back cost about 5 µs a request), else parsed from
 * the line.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import { context, INVALID_TRACEID, logs, SeverityNumber, trace, type AnyValue, type Logger as OtelLogger } from '@opentelemetry/api';
import pino from 'pino';
import type { LogLevel } from './config';

export type Logger = pino.Logger;

/** Header names whose values never reach a line or a record, at any level. */
export const SECRET_HEADERS = ['authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'x-api-key', 'x-auth-token', 'x-csrf-token'];

/**
 * pino `redact` paths: the secret headers where the kit's lines carry
 * headers (the access line at debug level; a line logging a request as
 * `req` or a response as `res`). Explicit paths, not a `*.headers` wildcard:
 * measured, a wildcard path tripled the cost of every line, headers or not.
 */
export const REDACT_PATHS = SECRET_HEADERS.flatMap((name) => [`headers["${name}"]`, `req.headers["${name}"]`, `res.headers["${name}"]`]);

export const REDACTED = '[Redacted]';

const TRACE_FLAGS = ['00', '01'];

/**
 * The trace context of the active span, in the OpenTelemetry log-correlation
 * field names; empty outside a span. A fresh object each call: pino merges
 * the line's fields into it.
 */
export function traceFields(): Record<string, string> {
  const span = trace.getSpan(context.active());
  if (span === undefined) return {};
  const spanContext = span.spanContext();
  // The API's non-recording span carries the all-zero id; a span the SDK made
  // has a valid one (isSpanContextValid's regular expressions cost more than the rest).
  if (spanContext.traceId === INVALID_TRACEID) return {};
  return {
    trace_id: spanContext.traceId,
    span_id: spanContext.spanId,
    trace_flags: TRACE_FLAGS[spanContext.traceFlags] ?? spanContext.traceFlags.toString(16).padStart(2, '0'),
  };
}

/** The second `isoTime` last formatted, and its line prefix up to the milliseconds. */
let isoSecond = Number.NaN;
let isoPrefix = '';

/**
 * The line's `time` field, exactly as pino's `stdTimeFunctions.isoTime`
 * writes it (`,"time":"2026-11-30T09:37:14.042Z"`), with the date formatted
 * once a second rather than once a line: `toISOString()` was a third of the
 * cost of an access line in pino (measured: 2.5-2.7 µs a line, 1.8 with this).
 * `at` is for the tests.
 */
export function isoTime(at: number = Date.now()): string {
  const second = Math.floor(at / 1000);
  if (second !== isoSecond) {
    const iso = new Date(second * 1000).toISOString();
    // Years outside 0000-9999 are written with a sign and six digits: not cached.
    if (iso.length !== 24) return `,"time":"${new Date(at).toISOString()}"`;
    isoSecond = second;
    isoPrefix = `,"time":"${iso.slice(0, 20)}`;
  }
  const ms = at - second * 1000;
  return `${isoPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
}

const SEVERITY: Record<string, SeverityNumber> = {
  trace: SeverityNumber.TRACE,
  debug: SeverityNumber.DEBUG,
  info: SeverityNumber.INFO,
  warn: SeverityNumber.WARN,
  error: SeverityNumber.ERROR,
  fatal: SeverityNumber.FATAL,
};

/** Fields of a line that the record carries elsewhere (severity, time, body, span context, resource). */
const NOT_ATTRIBUTES = new Set(['level', 'time', 'pid', 'msg', 'trace_id', 'span_id', 'trace_flags']);

/** Emits a log record, in the active context, from a line's fields (as parsed from the line, or as pino had them). */
function emitFields(otel: OtelLogger, fields: Record<string, unknown>, label: string, msg: unknown): void {
  const attributes: Record<string, AnyValue> = {};
  for (const key of Object.keys(fields)) if (!NOT_ATTRIBUTES.has(key) && fields[key] !== undefined) attributes[key] = fields[key] as AnyValue;
  otel.emit({
    severityNumber: SEVERITY[label] ?? SeverityNumber.UNSPECIFIED,
    severityText: label,
    body: typeof msg === 'string' ? msg : undefined,
    attributes,
  });
}

/** Emits a written line as an OpenTelemetry log record, from the line itself. */
function emitLine(otel: OtelLogger, line: string): void {
  let fields: Record<string, unknown>;
  try {
    fields = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return;
  }
  emitFields(otel, fields, typeof fields.level === 'string' ? fields.level : 'info', fields.msg);
}

/**
 * Whether pino's own object for a line holds exactly what the line says, so
 * the record can be built from it without parsing the line back: written
 * by the root logger (no child bindings), every value a string, a finite
 * number, a boolean or absent (nothing that a redact path, a serializer or
 * JSON could change), and no field that the line writes in its own way.
 * The access line always qualifies; anything else is parsed from the line.
 */
function writtenAsIs(fields: Record<string, unknown>): boolean {
  for (const key in fields) {
    const value = fields[key];
    switch (typeof value) {
      case 'string':
      case 'boolean':
      case 'undefined':
        break;
      case 'number':
        if (!Number.isFinite(value)) return false;
        break;
      default:
        return false;
    }
    if (key === 'level' || key === 'time' || key === 'pid' || key === 'msg') return false;
  }
  return true;
}

/** pino's level number for info. */
const INFO = 30;

/**
 * pino's string escaping (`asString` in pino/lib/tools.js, MIT): on Node
 * below 25, quotes and backslashes escaped by hand, `JSON.stringify` for a
 * string over 100 characters or with a control character; `JSON.stringify`
 * from Node 25 on. The two differ on lone surrogates (pino's loop leaves
 * them), so the kit's lines match pino's only with the same function.
 */
function pinoString(text: string): string {
  if (text.length > 100) return JSON.stringify(text);
  let result = '';
  let last = 0;
  let found = false;
  let point = 255;
  for (let i = 0; i < text.length && point >= 32; i++) {
    point = text.charCodeAt(i);
    if (point === 34 || point === 92) {
      result += `${text.slice(last, i)}\\`;
      last = i;
      found = true;
    }
  }
  result = found ? result + text.slice(last) : text;
  return point < 32 ? JSON.stringify(text) : `"${result}"`;
}
const asString = Number(process.versions.node.split('.')[0]) >= 25 ? (text: string): string => JSON.stringify(text) : pinoString;

/** Subscribers to pino's own tracing of its serializer, who would miss a line the kit writes itself. */
const pinoAsJson = diagnosticsChannel.tracingChannel('pino_asJson');

/**
 * Writes `logger.info(fields, msg)`'s line, the same bytes and the same log
 * record, without pino's general serializer: for the access line, one a
 * request. pino's path (mixin merge, per-key serializer and stringifier
 * lookups, `for…in` with `hasOwnProperty` over a merged object) cost 4.5-5 µs
 * a line here, this one 1.6-1.7 (a micro-benchmark of access lines, 4 runs).
 * Compared with pino's output for generated fields in `test/unit/log.test.ts`.
 *
 * Returns false, writing nothing, when only pino can write the line: a
 * logger `createLogger` did not make (a child, with its bindings), a value
 * other than a string, a number, a boolean or undefined, or someone tracing
 * pino's serializer.
 */
export function infoLine(logger: Logger, fields: object, msg: string): boolean {
  const internals = logger as unknown as { [key: symbol]: unknown };
  // A logger createLogger made writes to its own destination, whose root it is (a child shares the destination).
  const destination = internals[pino.symbols.streamSym];
  if (!(destination instanceof StdioDestination) || destination.root !== logger || pinoAsJson.hasSubscribers) return false;
  // pino's default mixin merge: the trace fields, then the line's own.
  const merged: Record<string, unknown> = Object.assign(traceFields(), fields);
  let line = (internals[pino.symbols.lsCacheSym] as Record<number, string>)[INFO]! + isoTime() + (internals[pino.symbols.chindingsSym] as string);
  for (const key in merged) {
    const value = merged[key];
    if (value === undefined || !Object.hasOwn(merged, key)) continue;
    switch (typeof value) {
      case 'string':
        line += `,${asString(key)}:${asString(value)}`;
        break;
      case 'number':
        line += `,${asString(key)}:${Number.isFinite(value) ? value : 'null'}`;
        break;
      case 'boolean':
        line += `,${asString(key)}:${value}`;
        break;
      default:
        return false;
    }
  }
  destination.writeLine(INFO, merged, msg, logger, `${line},"msg":${asString(msg)}${internals[pino.symbols.endSym] as string}`);
  return true;
}

/** pino level number from which lines go to stderr (warn). */
const STDERR_FROM = 40;
/** Gathered output past which it is written at once. */
const HIGH_WATER = 64 * 1024;
/**
 * How long a line may wait to be written with the next ones. Under PM2 each
 * write costs a message to the daemon and a file write (see the module
 * comment); measured under load with the access log on (bench, off + access
 * log), gathering for 10 ms rather than one event-loop turn took worker CPU
 * from 64-110 to 41-53 µs a request and freed the daemon's share.
 */
export const GATHER_MS = 10;

/**
 * pino's destination: gathers lines and writes them through process.stdout
 * and process.stderr (see the module comment), and emits each to the Logs
 * SDK when asked. pino tells it each line's level through `lastLevel`.
 */
export class StdioDestination {
  readonly [pino.symbols.needsMetadataGsym] = true;
  /** Set by pino before each write: the line's level, pino's object for it, its message, the logger that wrote it. */
  lastLevel = 0;
  lastObj: Record<string, unknown> | undefined;
  lastMsg: unknown;
  lastLogger: unknown;
  /** The logger this destination was made for: its lines carry no child bindings. */
  root: unknown;
  private out = '';
  private err = '';
  private timer: NodeJS.Timeout | undefined;
  private readonly writeGathered = (): void => this.flushSync();

  constructor(
    private readonly otel: OtelLogger | undefined,
    private readonly stdout: NodeJS.WritableStream = process.stdout,
    private readonly stderr: NodeJS.WritableStream = process.stderr,
  ) {}

  /** A line written by {@link infoLine}, with what pino would have told this destination about it. */
  writeLine(level: number, obj: Record<string, unknown>, msg: unknown, logger: unknown, line: string): void {
    this.lastLevel = level;
    this.lastObj = obj;
    this.lastMsg = msg;
    this.lastLogger = logger;
    this.write(line);
  }

  write(line: string): boolean {
    if (this.lastLevel >= STDERR_FROM) this.err += line;
    else this.out += line;
    if (this.otel !== undefined) this.emit(this.otel, line);
    if (this.out.length + this.err.length >= HIGH_WATER) this.flushSync();
    // Unref'd: a pending write never keeps the process alive; the exit hook writes it.
    else if (this.timer === undefined) this.timer = setTimeout(this.writeGathered, GATHER_MS).unref();
    return true;
  }

  /** The line as a log record: from pino's object when it holds exactly the line (the access line), else parsed back. */
  private emit(otel: OtelLogger, line: string): void {
    const fields = this.lastObj;
    if (this.lastLogger === this.root && fields !== undefined && writtenAsIs(fields)) {
      emitFields(otel, fields, pino.levels.labels[this.lastLevel] ?? 'info', this.lastMsg);
    } else emitLine(otel, line);
  }

  /** Hands what is gathered to the streams now. */
  flushSync(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.out !== '') {
      const out = this.out;
      this.out = '';
      this.stdout.write(out);
    }
    if (this.err !== '') {
      const err = this.err;
      this.err = '';
      this.stderr.write(err);
    }
  }

  /**
   * Hands what is gathered to the streams and calls back once both have
   * written it (under PM2: to the app's log files). pino's `logger.flush(cb)`
   * calls this.
   */
  flush(callback: (error?: Error | null) => void = () => undefined): void {
    this.flushSync();
    this.stdout.write('', () => this.stderr.write('', () => callback()));
  }
}

export interface LoggerOptions {
  /** Lines below this level are not written (LOG_LEVEL). */
  readonly level?: LogLevel;
  /** Emit each line to the OpenTelemetry Logs SDK (when the preload exports log records). */
  readonly emit?: boolean;
  readonly stdout?: NodeJS.WritableStream;
  readonly stderr?: NodeJS.WritableStream;
}

/** Destinations to flush before the process exits (see flushLogs). */
const destinations = new Set<StdioDestination>();
let exitHook = false;

/** Builds a logger writing JSON lines through process.stdout/stderr. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const otel = options.emit === true ? logs.getLogger('koa-pm2-otel') : undefined;
  const destination = new StdioDestination(otel, options.stdout, options.stderr);
  destinations.add(destination);
  if (!exitHook) {
    exitHook = true;
    // A process.exit() from anywhere still hands over the gathered lines.
    process.once('exit', () => {
      for (const gathered of destinations) gathered.flushSync();
    });
  }
  const logger = pino(
    {
      level: options.level ?? 'info',
      base: { pid: process.pid },
      timestamp: () => isoTime(),
      formatters: { level: (label) => ({ level: label }) },
      mixin: traceFields,
      redact: { paths: REDACT_PATHS, censor: REDACTED },
    },
    destination,
  );
  destination.root = logger;
  return logger;
}

/**
 * Writes every logger's gathered lines and calls back once stdout and
 * stderr have taken them: what the server waits for before it exits (PM2
 * loses a worker's last lines otherwise, pm2 #4075).
 */
export function flushLogs(callback: () => void): void {
  let pending = destinations.size;
  if (pending === 0) {
    process.stdout.write('', () => callback());
    return;
  }
  for (const destination of destinations) {
    destination.flush(() => {
      pending -= 1;
      if (pending === 0) callback();
    });
  }
}

/** The default logger, at info level, until the server has read LOG_LEVEL. */
export const log: Logger = createLogger();
