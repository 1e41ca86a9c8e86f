/**
 * The kit's logger provider: the SDK's `LoggerProvider`, `Logger` and
 * `LogRecordImpl` (`@opentelemetry/sdk-logs`), with the same records, for
 * less per record.
 *
 * Why (measured, README "Performance"): the app's logger emits one record a
 * request (the access line, 8 attributes). Into the same batch processor,
 * that took 2.6-4.5 µs a record through the SDK's logger and 1.0-1.5 µs
 * through this one, in the same process and run (6 rounds of 100,000). In the SDK each record copies the caller's record into a new
 * object, checks each attribute with `isAnyValue` (a `WeakSet` a value) and
 * `maybeAddAttribute`, and builds its two times as `[seconds, nanos]` pairs
 * at once.
 *
 * This provider produces the same records (compared operation by operation
 * with the SDK's in `test/otel/logger.test.ts`), fed to the same record
 * processors, with the same resource and limits:
 *
 * - a string, number or boolean attribute within the limits is stored as
 *   is; any other value takes the SDK's own code (`maybeAddAttribute` from
 *   `@opentelemetry/core`), warnings included;
 * - a record emitted without explicit times keeps one clock reading and
 *   builds `hrTime` and `hrTimeObserved` from it on first read (by the
 *   exporter, off the request's path), as the SDK builds them at once;
 * - the rest (explicit times, exceptions, the span context, read-only after
 *   emit, `enabled`, scopes, flush and shutdown) is the SDK's logic.
 *
 * Left out, as NodeSDK leaves them unset: a `LoggerConfigurator` (every
 * logger enabled at every severity) and the SDK's experimental self-metrics
 * (`otel.sdk.log.*`, only with `OTEL_NODE_EXPERIMENTAL_SDK_METRICS`).
 */
import { context, createNoopLogger, diag, isSpanContextValid, trace } from '@opentelemetry/api';
import type { AnyValue, Attributes, Context, HrTime, Logger, LoggerOptions, LoggerProvider, LogRecord, SeverityNumber, SpanContext } from '@opentelemetry/api';
import { BindOnceFuture, callWithTimeout, cleanSimpleAttributes, timeInputToHrTime, type InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { LogRecordLimits, LogRecordProcessor, ReadWriteLogRecord } from '@opentelemetry/sdk-logs';
import { setAttributeAsSdk } from './attributes';

export type ResolvedLogRecordLimits = Required<LogRecordLimits>;

export interface KitLoggerProviderOptions {
  readonly resource: Resource;
  readonly logRecordLimits: ResolvedLogRecordLimits;
  readonly processors: readonly LogRecordProcessor[];
}

/** `LoggerProvider`'s defaults for the limits no setting names. */
export function resolveLogRecordLimits(limits: LogRecordLimits): ResolvedLogRecordLimits {
  return {
    attributeCountLimit: limits.attributeCountLimit ?? 128,
    attributeValueLengthLimit: limits.attributeValueLengthLimit ?? Infinity,
  };
}

/** What every record of one provider shares. */
interface Shared {
  readonly resource: Resource;
  readonly limits: ResolvedLogRecordLimits;
  readonly processors: readonly LogRecordProcessor[];
  hasShutdown: boolean;
}

/** A `Date.now()` reading not yet made into an `HrTime`. */
const LAZY = Symbol('lazy');

/** The `ReadWriteLogRecord` the SDK's `LogRecordImpl` is; see the module comment for how it differs inside. */
class KitLogRecord implements ReadWriteLogRecord {
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
  readonly attributes: Attributes = {};
  private time: HrTime | typeof LAZY | undefined;
  private observed: HrTime | typeof LAZY | undefined;
  private readonly now: number;
  private context: SpanContext | undefined;
  private severityTextValue: string | undefined;
  private severityNumberValue: SeverityNumber | undefined;
  private bodyValue: AnyValue | undefined;
  private eventNameValue: string | undefined;
  /** The SDK's counts, kept by `setAttributeAsSdk`. */
  attributesCount = 0;
  droppedAttributes = 0;
  private readonly: boolean = false;
  private readonly limits: ResolvedLogRecordLimits;

  constructor(shared: Shared, scope: InstrumentationScope, record: LogRecord, recordContext: Context | undefined) {
    const { timestamp, observedTimestamp, eventName, severityNumber, severityText, body, attributes = {}, exception } = record;
    this.now = Date.now();
    this.time = timestamp == null ? LAZY : timeInputToHrTime(timestamp);
    this.observed = observedTimestamp == null ? LAZY : timeInputToHrTime(observedTimestamp);
    if (recordContext) {
      const spanContext = trace.getSpanContext(recordContext);
      if (spanContext && isSpanContextValid(spanContext)) this.context = spanContext;
    }
    this.severityNumberValue = severityNumber;
    this.severityTextValue = severityText;
    this.bodyValue = body;
    this.resource = shared.resource;
    this.instrumentationScope = scope;
    this.limits = shared.limits;
    this.eventNameValue = eventName;
    this.setAttributes(attributes);
    if (exception != null) this.setException(exception);
  }

  get hrTime(): HrTime {
    if (this.time === LAZY) this.time = timeInputToHrTime(this.now);
    return this.time as HrTime;
  }

  set hrTime(time: HrTime) {
    if (this.readonlyWarning()) return;
    this.time = time;
  }

  get hrTimeObserved(): HrTime {
    if (this.observed === LAZY) this.observed = timeInputToHrTime(this.now);
    return this.observed as HrTime;
  }

  set hrTimeObserved(time: HrTime) {
    if (this.readonlyWarning()) return;
    this.observed = time;
  }

  get spanContext(): SpanContext | undefined {
    return this.context;
  }

  set spanContext(spanContext: SpanContext | undefined) {
    if (this.readonlyWarning()) return;
    this.context = spanContext;
  }

  get severityText(): string | undefined {
    return this.severityTextValue;
  }

  set severityText(severityText: string | undefined) {
    if (this.readonlyWarning()) return;
    this.severityTextValue = severityText;
  }

  get severityNumber(): SeverityNumber | undefined {
    return this.severityNumberValue;
  }

  set severityNumber(severityNumber: SeverityNumber | undefined) {
    if (this.readonlyWarning()) return;
    this.severityNumberValue = severityNumber;
  }

  get body(): AnyValue | undefined {
    return this.bodyValue;
  }

  set body(body: AnyValue | undefined) {
    if (this.readonlyWarning()) return;
    this.bodyValue = body;
  }

  get eventName(): string | undefined {
    return this.eventNameValue;
  }

  set eventName(eventName: string | undefined) {
    if (this.readonlyWarning()) return;
    this.eventNameValue = eventName;
  }

  get droppedAttributesCount(): number {
    return this.droppedAttributes;
  }

  setAttribute(key: string, value?: AnyValue): this {
    if (this.readonlyWarning()) return this;
    setAttributeAsSdk(this, this.limits, key, value);
    return this;
  }

  setAttributes(attributes: Attributes): this {
    // Object.entries' keys and order, without its pairs (it throws on null, as the SDK does).
    if (typeof attributes !== 'object' || attributes === null) for (const [key, value] of Object.entries(attributes)) this.setAttribute(key, value);
    else for (const key in attributes) if (Object.prototype.propertyIsEnumerable.call(attributes, key)) this.setAttribute(key, attributes[key]);
    return this;
  }

  setBody(body: AnyValue): this {
    this.body = body;
    return this;
  }

  setEventName(eventName: string): this {
    this.eventName = eventName;
    return this;
  }

  setSeverityNumber(severityNumber: SeverityNumber): this {
    this.severityNumber = severityNumber;
    return this;
  }

  setSeverityText(severityText: string): this {
    this.severityText = severityText;
    return this;
  }

  /** After the processors' `onEmit`, as the SDK's `_makeReadonly`. */
  makeReadonly(): void {
    this.readonly = true;
  }

  /** The SDK's `_setException`, line for line. */
  private setException(exception: unknown): void {
    let hasMinimumAttributes = false;
    if (typeof exception === 'string' || typeof exception === 'number') {
      if (!Object.hasOwn(this.attributes, 'exception.message')) this.setAttribute('exception.message', String(exception));
      hasMinimumAttributes = true;
    } else if (exception && typeof exception === 'object') {
      const exceptionObj = exception as { code?: { toString(): string }; name?: string; message?: string; stack?: string };
      if (exceptionObj.code) {
        if (!Object.hasOwn(this.attributes, 'exception.type')) this.setAttribute('exception.type', exceptionObj.code.toString());
        hasMinimumAttributes = true;
      } else if (exceptionObj.name) {
        if (!Object.hasOwn(this.attributes, 'exception.type')) this.setAttribute('exception.type', exceptionObj.name);
        hasMinimumAttributes = true;
      }
      if (exceptionObj.message) {
        if (!Object.hasOwn(this.attributes, 'exception.message')) this.setAttribute('exception.message', exceptionObj.message);
        hasMinimumAttributes = true;
      }
      if (exceptionObj.stack) {
        if (!Object.hasOwn(this.attributes, 'exception.stacktrace')) this.setAttribute('exception.stacktrace', exceptionObj.stack);
        hasMinimumAttributes = true;
      }
    }
    if (!hasMinimumAttributes) diag.warn(`Failed to record an exception ${String(exception)}`);
  }

  private readonlyWarning(): boolean {
    if (this.readonly) diag.warn('Can not execute the operation on emitted log record');
    return this.readonly;
  }
}

/** The SDK's `Logger`, over {@link KitLogRecord}s. */
class KitLogger implements Logger {
  constructor(
    private readonly scope: InstrumentationScope,
    private readonly shared: Shared,
  ) {}

  emit(logRecord: LogRecord): void {
    const currentContext = logRecord.context || context.active();
    if (!this.enabledIn(currentContext, logRecord.severityNumber, logRecord.eventName)) return;
    // The SDK builds its record from `{ context: currentContext, ...logRecord }`: the caller's own fields only,
    // and its own `context` wins, even undefined.
    const record = Object.getPrototypeOf(logRecord) === Object.prototype ? logRecord : { ...logRecord };
    const recordContext = Object.prototype.propertyIsEnumerable.call(logRecord, 'context') ? logRecord.context : currentContext;
    const instance = new KitLogRecord(this.shared, this.scope, record, recordContext);
    const processors = this.shared.processors;
    for (let i = 0; i < processors.length; i++) processors[i]!.onEmit(instance, currentContext);
    instance.makeReadonly();
  }

  enabled(options?: { context?: Context; severityNumber?: SeverityNumber; eventName?: string }): boolean {
    return this.enabledIn(options?.context || context.active(), options?.severityNumber, options?.eventName);
  }

  /** The SDK's `enabled` with the default logger config (enabled, a minimum severity of 0, not trace-based). */
  private enabledIn(currentContext: Context, severityNumber: SeverityNumber | undefined, eventName: string | undefined): boolean {
    const shared = this.shared;
    if (shared.hasShutdown) return false;
    if (typeof severityNumber === 'number' && severityNumber < 0) return false;
    let options: Parameters<NonNullable<LogRecordProcessor['enabled']>>[0] | undefined;
    for (const processor of shared.processors) {
      if (!processor.enabled) return true;
      options ??= { context: currentContext, instrumentationScope: this.scope, severityNumber, eventName };
      if (processor.enabled(options)) return true;
    }
    return false;
  }
}

/**
 * The SDK's scope key (`getInstrumentationScopeKey` in sdk-logs'
 * internal/utils.ts, Apache-2.0): loggers with equal scopes are one logger.
 */
function normalizeAnyValue(value: unknown): unknown {
  if (value === undefined) return ['u', null];
  if (value === null) return ['n', null];
  switch (typeof value) {
    case 'string':
      return ['s', value];
    case 'boolean':
      return ['b', value];
    case 'number':
      if (Number.isNaN(value)) return ['nan', null];
      if (value === Infinity) return ['inf', null];
      if (value === -Infinity) return ['-inf', null];
      if (Object.is(value, -0)) return ['n0', null];
      return ['d', value];
    default:
  }
  if (value instanceof Uint8Array) return ['bytes', Array.from(value)];
  if (Array.isArray(value)) return ['arr', value.map(normalizeAnyValue)];
  return [
    'map',
    Object.entries(value as Record<string, unknown>)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => [k, normalizeAnyValue(v)]),
  ];
}

function scopeKey(scope: InstrumentationScope & { attributes?: unknown; droppedAttributesCount?: number }): string {
  return JSON.stringify([scope.name, scope.version || '', scope.schemaUrl || '', normalizeAnyValue(scope.attributes ?? {}), scope.droppedAttributesCount ?? 0]);
}

/**
 * A `LoggerProvider` like the SDK's, over {@link KitLogger}s. Registered by
 * the preload in place of the one NodeSDK would build (see `register.ts`).
 */
export class KitLoggerProvider implements LoggerProvider {
  private readonly shared: Shared;
  private readonly loggers = new Map<string, KitLogger>();
  private readonly shutdownOnce: BindOnceFuture<void>;

  constructor(options: KitLoggerProviderOptions) {
    const processors = [...options.processors];
    this.shared = { resource: options.resource, limits: options.logRecordLimits, processors, hasShutdown: false };
    this.shutdownOnce = new BindOnceFuture(this.doShutdown, this);
  }

  getLogger(name: string, version?: string, options?: LoggerOptions): Logger {
    if (this.shutdownOnce.isCalled) {
      diag.warn('A shutdown LoggerProvider cannot provide a Logger');
      return createNoopLogger();
    }
    if (!name) diag.warn('Logger requested without instrumentation scope name.');
    const scope: InstrumentationScope = { name: name || 'unknown', version, schemaUrl: options?.schemaUrl, ...cleanSimpleAttributes(options?.attributes, this.shared.limits) };
    const key = scopeKey(scope);
    let logger = this.loggers.get(key);
    if (logger === undefined) {
      logger = new KitLogger(scope, this.shared);
      this.loggers.set(key, logger);
    }
    return logger;
  }

  forceFlush(options?: { timeoutMillis?: number }): Promise<void> {
    if (this.shutdownOnce.isCalled) {
      diag.warn('invalid attempt to force flush after LoggerProvider shutdown');
      return this.shutdownOnce.promise;
    }
    return this.flushAll(options?.timeoutMillis ?? 30_000);
  }

  private async flushAll(timeout: number): Promise<void> {
    await Promise.all(this.shared.processors.map((processor) => callWithTimeout(processor.forceFlush(), timeout)));
  }

  shutdown(): Promise<void> {
    if (this.shutdownOnce.isCalled) {
      diag.warn('shutdown may only be called once per LoggerProvider');
      return this.shutdownOnce.promise;
    }
    return this.shutdownOnce.call();
  }

  private async doShutdown(): Promise<void> {
    this.shared.hasShutdown = true;
    await Promise.all(this.shared.processors.map((processor) => processor.shutdown()));
  }
}

/** A limit variable as NodeSDK reads it: a number above 0, else unset (with its warning). */
function positiveFromEnv(name: string): number | undefined {
  const { getNumberFromEnv } = require('@opentelemetry/core') as typeof import('@opentelemetry/core');
  const value = getNumberFromEnv(name);
  if (value != null && value <= 0) {
    diag.warn(`${name} (${value}) is invalid, expected number greater than 0, using default.`);
    return undefined;
  }
  return value;
}

/** The record limits from the standard variables, read as NodeSDK reads them, with the SDK's defaults. */
export function logRecordLimitsFromEnv(): ResolvedLogRecordLimits {
  return resolveLogRecordLimits({
    attributeCountLimit: positiveFromEnv('OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT') ?? positiveFromEnv('OTEL_ATTRIBUTE_COUNT_LIMIT'),
    attributeValueLengthLimit: positiveFromEnv('OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? positiveFromEnv('OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT'),
  });
}
