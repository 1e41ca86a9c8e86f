/**
 * The kit's tracer provider: the SDK's `Tracer` and `SpanImpl`, with the same
 * spans, at a half to a third of the cost per span.
 *
 * Why (measured, README "Performance"): through the SDK's tracer, a server
 * span as the kit records it took 2.4-4.0 µs, and with one child 6-11 µs;
 * through this one 1.3-2.1 and 2.3-2.7 µs, in the same process and run. In
 * the bench, with two spans a request (the Koa instrumentation's router span
 * beside the server span), 95 against 107 µs a request; with the kit's one
 * span a request, no difference beyond the noise. In the SDK, every
 * attribute set on a span is checked by `isAnyValue`, which allocates a
 * `WeakSet` for each value; start attributes are cleaned twice (for the
 * sampler, then for the span); each span builds its times as `[seconds,
 * nanos]` pairs as soon as it starts and ends. A quarter of that time was
 * garbage collection.
 *
 * This provider produces the same spans (compared operation by operation
 * with the SDK's in `test/otel/tracer.test.ts`), and is fed to the same span
 * processors, samplers and id generator:
 *
 * - a string, number or boolean attribute within the limits is stored as
 *   is; any other value takes the SDK's own code (`maybeAddAttribute`,
 *   `cleanAttributes` from `@opentelemetry/core`), warnings included;
 * - a span started and ended without explicit times keeps two clock readings
 *   and builds `startTime`, `endTime` and `duration` on first read (by the
 *   exporter, off the request's path), with the SDK's arithmetic: a start at
 *   `Date.now()`, an end at start plus the monotonic duration;
 * - the rest (events, links, exceptions, status, explicit times, ending
 *   twice) is the SDK's logic, line for line.
 *
 * Left out: the SDK's experimental self-metrics (`otel.sdk.span.*`, only
 * with `OTEL_NODE_EXPERIMENTAL_SDK_METRICS`), and `util.inspect` formatting.
 */
import { INVALID_SPAN_CONTEXT, SamplingDecision, SpanKind, SpanStatusCode, TraceFlags, context, diag, trace } from '@opentelemetry/api';
import type { Attributes, AttributeValue, Context, Exception, HrTime, Link, Span, SpanAttributes, SpanContext, SpanOptions, SpanStatus, TimeInput, Tracer, TracerOptions, TracerProvider } from '@opentelemetry/api';
import { addHrTimes, cleanAttributes, cleanSimpleAttributes, hrTime, hrTimeDuration, isTimeInput, isTimeInputHrTime, isTracingSuppressed, millisToHrTime, type InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { IdGenerator, ReadableSpan, Sampler, SpanLimits, SpanProcessor, TimedEvent } from '@opentelemetry/sdk-trace';
import { setAttributeAsSdk } from './attributes';

/** The limits with the SDK's defaults filled in, as its `TracerProvider` does. */
export type ResolvedSpanLimits = Required<SpanLimits>;

export interface KitTracerProviderOptions {
  readonly resource: Resource;
  readonly sampler: Sampler;
  readonly spanLimits: ResolvedSpanLimits;
  readonly idGenerator: IdGenerator;
  readonly spanProcessors: readonly SpanProcessor[];
}

/** `TracerProvider`'s defaults for the limits no setting names. */
export function resolveSpanLimits(limits: SpanLimits): ResolvedSpanLimits {
  return {
    attributeCountLimit: limits.attributeCountLimit ?? 128,
    attributeValueLengthLimit: limits.attributeValueLengthLimit ?? Infinity,
    eventCountLimit: limits.eventCountLimit ?? 128,
    linkCountLimit: limits.linkCountLimit ?? 128,
    attributePerEventCountLimit: limits.attributePerEventCountLimit ?? 128,
    attributePerLinkCountLimit: limits.attributePerLinkCountLimit ?? 128,
  };
}

const NO_ATTRIBUTE_LIMITS = { attributeCountLimit: Infinity, attributeValueLengthLimit: Infinity };
const EXCEPTION_EVENT = 'exception';

/** What every span of one tracer shares. */
interface Shared {
  readonly resource: Resource;
  readonly scope: InstrumentationScope;
  readonly limits: ResolvedSpanLimits;
  readonly processors: readonly SpanProcessor[];
  readonly endings: readonly SpanProcessor[];
}

/** The `ReadableSpan` and `Span` the SDK's `SpanImpl` is; see the module comment for how it differs inside. */
class KitSpan implements Span, ReadableSpan {
  readonly kind: SpanKind;
  readonly parentSpanContext: SpanContext | undefined;
  readonly attributes: Attributes;
  links: Link[];
  readonly events: TimedEvent[] = [];
  name: string;
  status: SpanStatus = { code: SpanStatusCode.UNSET };
  /** The SDK's counts, kept by `setAttributeAsSdk`. */
  attributesCount: number;
  droppedAttributes: number;
  private droppedEvents = 0;
  private droppedLinks = 0;
  private isEnded = false;
  /** `Date.now()` and `performance.now()` at the start. */
  private readonly startEpochMs: number;
  private readonly startPerfMs: number;
  /** `performance.now()` at the end, while the end time is not built yet; -1 before the end. */
  private endPerfMs = -1;
  /** Times built by the SDK's rules: at once when given explicitly, else on first read. */
  private start: HrTime | undefined;
  private endAt: HrTime | undefined;
  private durationAt: HrTime | undefined;
  private readonly startTimeProvided: boolean;

  constructor(
    private readonly shared: Shared,
    private readonly ids: SpanContext,
    name: string,
    kind: SpanKind,
    parent: SpanContext | undefined,
    attributes: Attributes,
    droppedAttributes: number,
    links: Link[],
    startTime: TimeInput | undefined,
  ) {
    this.name = name;
    this.kind = kind;
    this.parentSpanContext = parent;
    this.startEpochMs = Date.now();
    this.startPerfMs = performance.now();
    this.startTimeProvided = startTime != null;
    if (startTime != null) this.start = this.getTime(startTime);
    const { linkCountLimit } = shared.limits;
    if (links.length > linkCountLimit) {
      this.links = links.slice(links.length - linkCountLimit, links.length);
      this.droppedLinks = links.length - linkCountLimit;
    } else {
      this.links = links;
    }
    this.attributes = attributes;
    this.attributesCount = Object.keys(attributes).length;
    this.droppedAttributes = droppedAttributes;
  }

  spanContext(): SpanContext {
    return this.ids;
  }

  get resource(): Resource {
    return this.shared.resource;
  }

  get instrumentationScope(): InstrumentationScope {
    return this.shared.scope;
  }

  get startTime(): HrTime {
    return (this.start ??= millisToHrTime(this.startEpochMs));
  }

  get endTime(): HrTime {
    this.settleEnd();
    return this.endAt ?? [0, 0];
  }

  get duration(): HrTime {
    this.settleEnd();
    return this.durationAt ?? [-1, -1];
  }

  get ended(): boolean {
    return this.isEnded;
  }

  get droppedAttributesCount(): number {
    return this.droppedAttributes;
  }

  get droppedEventsCount(): number {
    return this.droppedEvents;
  }

  get droppedLinksCount(): number {
    return this.droppedLinks;
  }

  isRecording(): boolean {
    return !this.isEnded;
  }

  setAttribute(key: string, value?: AttributeValue): this {
    if (this.endedWarning()) return this;
    setAttributeAsSdk(this, this.shared.limits, key, value);
    return this;
  }

  setAttributes(attributes: SpanAttributes): this {
    for (const key in attributes) if (Object.prototype.hasOwnProperty.call(attributes, key)) this.setAttribute(key, attributes[key]);
    return this;
  }

  addEvent(name: string, attributesOrStartTime?: SpanAttributes | TimeInput, timeStamp?: TimeInput): this {
    if (this.endedWarning()) return this;
    const { eventCountLimit, attributePerEventCountLimit, attributeValueLengthLimit } = this.shared.limits;
    if (eventCountLimit === 0) {
      diag.warn('No events allowed.');
      this.droppedEvents += 1;
      return this;
    }
    if (this.events.length >= eventCountLimit) {
      if (this.droppedEvents === 0) diag.debug('Dropping extra events.');
      this.events.shift();
      this.droppedEvents += 1;
    }
    if (isTimeInput(attributesOrStartTime)) {
      if (!isTimeInput(timeStamp)) timeStamp = attributesOrStartTime;
      attributesOrStartTime = undefined;
    }
    this.events.push({
      name,
      time: this.getTime(timeStamp),
      ...cleanSimpleAttributes(attributesOrStartTime, { attributeCountLimit: attributePerEventCountLimit, attributeValueLengthLimit }),
    } as TimedEvent);
    return this;
  }

  addLink(link: Link): this {
    if (this.endedWarning()) return this;
    const { linkCountLimit, attributePerLinkCountLimit, attributeValueLengthLimit } = this.shared.limits;
    if (linkCountLimit === 0) {
      this.droppedLinks += 1;
      return this;
    }
    if (this.links.length >= linkCountLimit) {
      if (this.droppedLinks === 0) diag.debug('Dropping extra links.');
      this.links.shift();
      this.droppedLinks += 1;
    }
    this.links.push({ context: link.context, ...cleanAttributes(link.attributes, { attributeCountLimit: attributePerLinkCountLimit, attributeValueLengthLimit }) } as Link);
    return this;
  }

  addLinks(links: Link[]): this {
    for (const link of links) this.addLink(link);
    return this;
  }

  setStatus(status: SpanStatus): this {
    if (this.endedWarning()) return this;
    if (status.code === SpanStatusCode.UNSET) return this;
    if (this.status.code === SpanStatusCode.OK) return this;
    const next: SpanStatus = { code: status.code };
    if (status.code === SpanStatusCode.ERROR) {
      if (typeof status.message === 'string') next.message = status.message;
      else if (status.message != null) diag.warn(`Dropping invalid status.message of type '${typeof status.message}', expected 'string'`);
    }
    this.status = next;
    return this;
  }

  updateName(name: string): this {
    if (this.endedWarning()) return this;
    this.name = name;
    return this;
  }

  end(endTime?: TimeInput): void {
    if (this.endedWarning()) {
      diag.error(`${this.name} ${this.ids.traceId}-${this.ids.spanId} - You can only call end() on a span once.`);
      return;
    }
    if (endTime === undefined && !this.startTimeProvided) {
      this.endPerfMs = performance.now();
    } else {
      this.setEnd(this.getTime(endTime));
    }
    if (this.droppedEvents > 0) diag.warn(`Dropped ${this.droppedEvents} events because eventCountLimit reached`);
    if (this.droppedLinks > 0) diag.warn(`Dropped ${this.droppedLinks} links because linkCountLimit reached`);
    for (const processor of this.shared.endings) processor.onEnding?.(this);
    this.isEnded = true;
    const processors = this.shared.processors;
    for (let i = 0; i < processors.length; i++) processors[i]!.onEnd(this);
  }

  recordException(exception: Exception, time?: TimeInput): void {
    const attributes: Attributes = {};
    if (typeof exception === 'string') {
      attributes['exception.message'] = exception;
    } else if (exception) {
      if (exception.code) attributes['exception.type'] = exception.code.toString();
      else if (exception.name) attributes['exception.type'] = exception.name;
      if (exception.message) attributes['exception.message'] = exception.message;
      if (exception.stack) attributes['exception.stacktrace'] = exception.stack;
    }
    if (attributes['exception.type'] || attributes['exception.message']) this.addEvent(EXCEPTION_EVENT, attributes, time);
    else diag.warn(`Failed to record an exception ${String(exception)}`);
  }

  /** Builds the end from the reading `end()` took, as the SDK's `_getTime()` would have at that moment. */
  private settleEnd(): void {
    if (this.endPerfMs < 0) return;
    const end = this.endPerfMs;
    this.endPerfMs = -1;
    this.setEnd(addHrTimes(this.startTime, millisToHrTime(end - this.startPerfMs)));
  }

  private setEnd(end: HrTime): void {
    this.endAt = end;
    this.durationAt = hrTimeDuration(this.startTime, end);
    if (this.durationAt[0] < 0) {
      diag.warn('Inconsistent start and end time, startTime > endTime. Setting span duration to 0ms.', this.startTime, end);
      this.endAt = this.startTime.slice() as HrTime;
      this.durationAt = [0, 0];
    }
  }

  /** The SDK's `_getTime`. */
  private getTime(input: TimeInput | undefined): HrTime {
    if (typeof input === 'number' && input <= performance.now()) return hrTime(input + (this.startEpochMs - (this.startPerfMs + performance.timeOrigin)));
    if (typeof input === 'number') return millisToHrTime(input);
    if (input instanceof Date) return millisToHrTime(input.getTime());
    if (isTimeInputHrTime(input)) return input;
    if (this.startTimeProvided) return millisToHrTime(Date.now());
    return addHrTimes(this.startTime, millisToHrTime(performance.now() - this.startPerfMs));
  }

  private endedWarning(): boolean {
    if (this.isEnded) {
      const { traceId, spanId } = this.ids;
      diag.warn(`Cannot execute the operation on ended Span {traceId: ${traceId}, spanId: ${spanId}}`, new Error(`Operation attempted on ended Span {traceId: ${traceId}, spanId: ${spanId}}`));
    }
    return this.isEnded;
  }
}

/** The attributes of a span's start as the SDK cleans them, without its allocations when all are plain values. */
function startAttributes(input: Attributes | undefined): { attributes: Attributes; droppedAttributesCount: number } | undefined {
  const attributes: Attributes = {};
  if (input === undefined) return { attributes, droppedAttributesCount: 0 };
  for (const key in input) {
    if (!Object.hasOwn(input, key)) continue;
    const value = input[key];
    if (value === undefined) continue;
    if (key.length === 0 || (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean')) return undefined;
    attributes[key] = value;
  }
  return { attributes, droppedAttributesCount: 0 };
}

class KitTracer implements Tracer {
  private readonly shared: Shared;

  constructor(
    scope: InstrumentationScope,
    private readonly options: KitTracerProviderOptions,
    endings: readonly SpanProcessor[],
  ) {
    this.shared = { resource: options.resource, scope, limits: options.spanLimits, processors: options.spanProcessors, endings };
  }

  /** The SDK's `Tracer.startSpan`, step for step. */
  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    if (options.root) ctx = trace.deleteSpan(ctx);
    const parentSpan = trace.getSpan(ctx);
    if (isTracingSuppressed(ctx)) {
      diag.debug('Instrumentation suppressed, returning Noop Span');
      return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
    }
    const parentSpanContext = parentSpan?.spanContext();
    const { idGenerator, sampler, spanLimits } = this.options;
    const spanId = idGenerator.generateSpanId();
    let parent: SpanContext | undefined;
    let traceId: string;
    let traceState: SpanContext['traceState'];
    if (parentSpanContext === undefined || !trace.isSpanContextValid(parentSpanContext)) {
      traceId = idGenerator.generateTraceId();
    } else {
      traceId = parentSpanContext.traceId;
      traceState = parentSpanContext.traceState;
      parent = parentSpanContext;
    }
    const kind = options.kind ?? SpanKind.INTERNAL;
    const links: Link[] =
      options.links === undefined || options.links.length === 0
        ? []
        : options.links.map((link) => ({
            context: link.context,
            ...cleanAttributes(link.attributes, { attributeCountLimit: spanLimits.attributePerLinkCountLimit, attributeValueLengthLimit: spanLimits.attributeValueLengthLimit }),
          }));
    const plain = startAttributes(options.attributes);
    const first = plain ?? cleanAttributes(options.attributes, NO_ATTRIBUTE_LIMITS);
    const attributes = first.attributes ?? {};
    const sampling = sampler.shouldSample(ctx, traceId, name, kind, attributes, links);
    traceState = sampling.traceState ?? traceState;
    const spanContext: SpanContext = {
      traceId,
      spanId,
      traceFlags: sampling.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE,
      traceState,
    };
    if (sampling.decision === SamplingDecision.NOT_RECORD) {
      diag.debug('Recording is off, propagating context in a non-recording span');
      return trace.wrapSpanContext(spanContext);
    }
    // The SDK cleans again with the span's limits; a plain set within them comes out the same.
    let final: Attributes = attributes;
    let dropped = first.droppedAttributesCount ?? 0;
    const merged = sampling.attributes === undefined ? attributes : Object.assign(attributes, sampling.attributes);
    if (plain === undefined || sampling.attributes !== undefined || !withinLimits(merged, spanLimits)) {
      const cleaned = cleanAttributes(merged, spanLimits);
      final = cleaned.attributes ?? {};
      dropped += cleaned.droppedAttributesCount ?? 0;
    }
    const span = new KitSpan(this.shared, spanContext, name, kind, parent, final, dropped, links, options.startTime);
    const processors = this.shared.processors;
    for (let i = 0; i < processors.length; i++) processors[i]!.onStart(span, ctx);
    return span;
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, ctx: Context, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, arg2?: F | SpanOptions, arg3?: F | Context, arg4?: F): ReturnType<F> | undefined {
    let options: SpanOptions | undefined;
    let ctx: Context | undefined;
    let fn: F;
    if (arguments.length < 2) return undefined;
    if (arguments.length === 2) {
      fn = arg2 as F;
    } else if (arguments.length === 3) {
      options = arg2 as SpanOptions;
      fn = arg3 as F;
    } else {
      options = arg2 as SpanOptions;
      ctx = arg3 as Context;
      fn = arg4 as F;
    }
    const parentContext = ctx ?? context.active();
    const span = this.startSpan(name, options, parentContext);
    return context.with(trace.setSpan(parentContext, span), fn as (span: Span) => ReturnType<F>, undefined, span);
  }
}

/** Whether plain attributes are within the count and length limits, so that cleaning would change nothing. */
function withinLimits(attributes: Attributes, limits: ResolvedSpanLimits): boolean {
  let count = 0;
  for (const key in attributes) {
    const value = attributes[key];
    if (typeof value === 'string' && value.length > limits.attributeValueLengthLimit) return false;
    count += 1;
  }
  return count <= limits.attributeCountLimit && limits.attributeValueLengthLimit > 0;
}

/**
 * A `TracerProvider` like the SDK's, over {@link KitTracer}s. Registered by
 * the preload in place of the one NodeSDK would build (see `register.ts`).
 */
export class KitTracerProvider implements TracerProvider {
  private readonly tracers = new Map<string, KitTracer>();
  private readonly endings: readonly SpanProcessor[];

  constructor(private readonly options: KitTracerProviderOptions) {
    this.endings = options.spanProcessors.filter((processor) => typeof processor.onEnding === 'function');
  }

  getTracer(name: string, version?: string, options?: TracerOptions): Tracer {
    const key = `${name}@${version ?? ''}:${options?.schemaUrl ?? ''}`;
    let tracer = this.tracers.get(key);
    if (tracer === undefined) {
      tracer = new KitTracer({ name, version, schemaUrl: options?.schemaUrl }, this.options, this.endings);
      this.tracers.set(key, tracer);
    }
    return tracer;
  }

  async forceFlush(): Promise<void> {
    await Promise.all(this.options.spanProcessors.map((processor) => processor.forceFlush()));
  }

  async shutdown(): Promise<void> {
    await Promise.all(this.options.spanProcessors.map((processor) => processor.shutdown()));
  }
}

/** The sampler `OTEL_TRACES_SAMPLER` names (checked by `settings.ts`), as NodeSDK builds it; parent-based always-on by default. */
export function samplerFromEnv(env: Readonly<Record<string, string | undefined>>): Sampler {
  const { AlwaysOffSampler, AlwaysOnSampler, ParentBasedSampler, TraceIdRatioBasedSampler } = require('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace');
  const argument = env.OTEL_TRACES_SAMPLER_ARG?.trim();
  const ratio = (): number => (argument === undefined || argument === '' ? 1 : Number(argument));
  switch (env.OTEL_TRACES_SAMPLER?.trim()) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(ratio());
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio()) });
    default:
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}

/** The span limits from the standard variables, read as NodeSDK reads them, with the SDK's defaults. */
export function spanLimitsFromEnv(): ResolvedSpanLimits {
  const { getNumberFromEnv } = require('@opentelemetry/core') as typeof import('@opentelemetry/core');
  return resolveSpanLimits({
    attributeCountLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT') ?? getNumberFromEnv('OTEL_ATTRIBUTE_COUNT_LIMIT'),
    attributeValueLengthLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? getNumberFromEnv('OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT'),
    eventCountLimit: getNumberFromEnv('OTEL_SPAN_EVENT_COUNT_LIMIT'),
    linkCountLimit: getNumberFromEnv('OTEL_SPAN_LINK_COUNT_LIMIT'),
    attributePerEventCountLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_PER_EVENT_COUNT_LIMIT'),
    attributePerLinkCountLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_PER_LINK_COUNT_LIMIT'),
  });
}
