/**
 * The kit's tracer provider (`otel/tracer.ts`) against the SDK's: the same
 * operations, on a span from each, give the same span to the processors and
 * the same diagnostics, whatever the values, limits and sampler.
 */
import fc from 'fast-check';
import { ROOT_CONTEXT, SamplingDecision, SpanKind, SpanStatusCode, TraceFlags, context, trace, type Attributes, type Context, type Link, type Span, type SpanContext, type TimeInput } from '@opentelemetry/api';
import { TraceState, suppressTracing } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { AlwaysOffSampler, AlwaysOnSampler, InMemorySpanExporter, ParentBasedSampler, SimpleSpanProcessor, TraceIdRatioBasedSampler, TracerProvider, type IdGenerator, type ReadableSpan, type Sampler, type SpanLimits, type SpanProcessor } from '@opentelemetry/sdk-trace';
import { KitTracerProvider, resolveSpanLimits, samplerFromEnv, spanLimitsFromEnv } from '../../otel/tracer';
import { hexId, optional, text } from '../helpers/protobufFixtures';
import { clockTime, collectDiagnostics, diagnostics, exception, key, limit, settleClockTimes, someAttributes, timeInput, value } from '../helpers/sdkComparison';

const REMOTE: SpanContext = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.SAMPLED, isRemote: true, traceState: new TraceState('vendor=a') };

/** Ids from a counter, so that both providers give the same ones. */
class CountingIds implements IdGenerator {
  private next = 1;
  generateTraceId(): string {
    return (this.next++).toString(16).padStart(32, '0');
  }
  generateSpanId(): string {
    return (this.next++).toString(16).padStart(16, '0');
  }
}

collectDiagnostics();

type Op =
  | { op: 'setAttribute'; key: string; value: unknown }
  | { op: 'setAttributes'; attributes: Attributes }
  | { op: 'addEvent'; name: string; second?: Attributes | TimeInput; third?: TimeInput }
  | { op: 'addLink'; link: Link }
  | { op: 'addLinks'; links: Link[] }
  | { op: 'setStatus'; code: SpanStatusCode; message?: unknown }
  | { op: 'updateName'; name: string }
  | { op: 'recordException'; exception: unknown; time?: TimeInput }
  | { op: 'end'; time?: TimeInput };

interface Case {
  limits: SpanLimits;
  sampler: 'on' | 'off' | 'parent' | 'ratio' | 'custom';
  name: string;
  kind?: SpanKind;
  attributes?: Attributes;
  links?: Link[];
  startTime?: TimeInput;
  parent: 'none' | 'remote' | 'invalid' | 'suppressed';
  root?: boolean;
  ops: Op[];
}

function sampler(name: Case['sampler']): Sampler {
  switch (name) {
    case 'on':
      return new AlwaysOnSampler();
    case 'off':
      return new AlwaysOffSampler();
    case 'parent':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'ratio':
      return new TraceIdRatioBasedSampler(0.5);
    case 'custom':
      // Samples, adds attributes (one overriding) and sets a trace state.
      return {
        shouldSample: (_context, _traceId, _name, _kind, attributes) => ({
          decision: SamplingDecision.RECORD_AND_SAMPLED,
          attributes: { 'sampler.seen': Object.keys(attributes).length, a: 'from the sampler' },
          traceState: new TraceState('kit=1'),
        }),
        toString: () => 'custom',
      };
  }
}

const link: fc.Arbitrary<Link> = fc.record(
  { context: fc.record({ traceId: hexId(32), spanId: hexId(16), traceFlags: fc.constantFrom(0, 1) }), attributes: optional(someAttributes) },
  { requiredKeys: ['context'] },
);
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('setAttribute' as const), key, value }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('setAttributes' as const), attributes: someAttributes }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('addEvent' as const), name: text, second: optional(fc.oneof(someAttributes, timeInput)), third: optional(timeInput) }, { requiredKeys: ['op', 'name'] }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('addLink' as const), link }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('addLinks' as const), links: fc.array(link, { maxLength: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('setStatus' as const), code: fc.constantFrom(SpanStatusCode.UNSET, SpanStatusCode.OK, SpanStatusCode.ERROR), message: optional(fc.oneof(text, fc.integer())) }, { requiredKeys: ['op', 'code'] }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('updateName' as const), name: text }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('recordException' as const), exception, time: optional(timeInput) }, { requiredKeys: ['op', 'exception'] }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('end' as const), time: optional(timeInput) }, { requiredKeys: ['op'] }) },
);
const spanCase: fc.Arbitrary<Case> = fc.record(
  {
    limits: fc.record({
      attributeCountLimit: limit,
      attributeValueLengthLimit: limit,
      eventCountLimit: limit,
      linkCountLimit: limit,
      attributePerEventCountLimit: limit,
      attributePerLinkCountLimit: limit,
    }),
    sampler: fc.constantFrom('on', 'off', 'parent', 'ratio', 'custom'),
    name: text,
    kind: optional(fc.constantFrom(SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER)),
    attributes: optional(someAttributes),
    links: optional(fc.array(link, { maxLength: 3 })),
    startTime: optional(timeInput),
    parent: fc.constantFrom('none', 'remote', 'invalid', 'suppressed'),
    root: optional(fc.boolean()),
    ops: fc.array(op, { maxLength: 12 }),
  },
  { requiredKeys: ['limits', 'sampler', 'name', 'parent', 'ops'] },
);

function parentContext(parent: Case['parent']): Context {
  switch (parent) {
    case 'none':
      return ROOT_CONTEXT;
    case 'remote':
      return trace.setSpanContext(ROOT_CONTEXT, REMOTE);
    case 'invalid':
      return trace.setSpanContext(ROOT_CONTEXT, { traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 });
    case 'suppressed':
      return suppressTracing(trace.setSpanContext(ROOT_CONTEXT, REMOTE));
  }
}

const resource = resourceFromAttributes({ 'service.name': 'tracer-test' });

/** Runs a case through one provider: the span the processor got (or the non-recording span's context) and the diagnostics. */
function run(which: 'sdk' | 'kit', spanCase: Case): { span: unknown; diagnostics: string[] } {
  const exporter = new InMemorySpanExporter();
  const processor: SpanProcessor = new SimpleSpanProcessor({ exporter });
  const options = { resource, sampler: sampler(spanCase.sampler), idGenerator: new CountingIds(), spanProcessors: [processor] };
  const provider =
    which === 'sdk'
      ? new TracerProvider({ ...options, spanLimits: spanCase.limits })
      : new KitTracerProvider({ ...options, spanLimits: resolveSpanLimits(spanCase.limits) });
  // The ratio sampler decides on the trace id: both see the same ids.
  diagnostics.length = 0;
  const tracer = provider.getTracer('scope', '1.2.3', { schemaUrl: 'https://opentelemetry.io/schemas/1.27.0' });
  const span = tracer.startSpan(
    spanCase.name,
    { kind: spanCase.kind, attributes: spanCase.attributes, links: spanCase.links, startTime: spanCase.startTime, root: spanCase.root },
    parentContext(spanCase.parent),
  );
  let ended = false;
  for (const step of spanCase.ops) {
    try {
      apply(span, step);
    } catch (error) {
      // The SDK throws for some values (an exception object without a prototype): the same error, then.
      diagnostics.push(`threw ${String(error)}`);
    }
    if (step.op === 'end') ended = true;
  }
  if (!ended) span.end();
  const finished = exporter.getFinishedSpans();
  return { span: finished.length === 0 ? { nonRecording: span.spanContext(), recording: span.isRecording() } : view(finished, spanCase), diagnostics: [...diagnostics] };
}

function apply(span: Span, step: Op): void {
  switch (step.op) {
    case 'setAttribute':
      span.setAttribute(step.key, step.value as never);
      break;
    case 'setAttributes':
      span.setAttributes(step.attributes);
      break;
    case 'addEvent':
      span.addEvent(step.name, step.second, step.third);
      break;
    case 'addLink':
      span.addLink(step.link);
      break;
    case 'addLinks':
      span.addLinks(step.links);
      break;
    case 'setStatus':
      span.setStatus({ code: step.code, message: step.message as string });
      break;
    case 'updateName':
      span.updateName(step.name);
      break;
    case 'recordException':
      span.recordException(step.exception as Error, step.time);
      break;
    case 'end':
      span.end(step.time);
      break;
  }
}

function same(spanCase: Case): void {
  const kit = run('kit', spanCase);
  const sdk = run('sdk', spanCase);
  settleClockTimes(kit, sdk);
  expect(kit).toEqual(sdk);
}

function view(spans: ReadableSpan[], spanCase: Case): unknown {
  expect(spans).toHaveLength(1);
  const span = spans[0]!;
  const exactStart = spanCase.startTime !== undefined && !(typeof spanCase.startTime === 'number' && spanCase.startTime < 1e12);
  const endOp = spanCase.ops.find((step) => step.op === 'end') as { time?: TimeInput } | undefined;
  const exactEnd = endOp?.time !== undefined && !(typeof endOp.time === 'number' && endOp.time < 1e12);
  return {
    name: span.name,
    kind: span.kind,
    spanContext: span.spanContext(),
    parentSpanContext: span.parentSpanContext,
    status: span.status,
    attributes: span.attributes,
    links: span.links,
    events: span.events.map((event) => ({ ...event, time: clockTime(event.time, false) })),
    startTime: clockTime(span.startTime, exactStart),
    // An end before the start is moved to the start.
    endTime: clockTime(span.endTime, span.duration[0] === 0 && span.duration[1] === 0 ? exactStart : exactEnd),
    duration: exactStart && exactEnd ? span.duration : span.duration[0] >= 0,
    ended: span.ended,
    resource: span.resource === resource,
    instrumentationScope: span.instrumentationScope,
    droppedAttributesCount: span.droppedAttributesCount,
    droppedEventsCount: span.droppedEventsCount,
    droppedLinksCount: span.droppedLinksCount,
  };
}

describe('KitTracerProvider against the SDK TracerProvider', () => {
  it('gives the same span and diagnostics for any sequence of operations, values, limits and sampler', () => {
    fc.assert(
      fc.property(spanCase, (spanCase) => same(spanCase)),
      { numRuns: 1500 },
    );
  });

  it('gives the same server span and child as the kit records them per request', () => {
    const serverCase: Case = {
      limits: {},
      sampler: 'parent',
      name: 'GET',
      kind: SpanKind.SERVER,
      parent: 'remote',
      ops: [
        { op: 'setAttributes', attributes: { 'http.request.method': 'GET', 'url.scheme': 'http', 'server.address': 'localhost', 'network.peer.address': '127.0.0.1', 'network.peer.port': 50000, 'network.protocol.version': '1.1', 'user_agent.original': undefined, 'url.path': '/items/1', 'server.port': 3000 } },
        { op: 'setAttributes', attributes: { 'http.response.status_code': 200, 'http.route': '/items/:id' } },
        { op: 'setStatus', code: SpanStatusCode.UNSET },
        { op: 'updateName', name: 'GET /items/:id' },
        { op: 'end' },
      ],
    };
    same(serverCase);
    expect(run('kit', serverCase).diagnostics).toEqual([]);
    const child: Case = { limits: {}, sampler: 'parent', name: 'router - /items/:id', parent: 'remote', attributes: { 'koa.type': 'router', 'koa.name': '/items/:id', 'http.route': '/items/:id' }, ops: [] };
    same(child);
  });

  it('times a span by Date.now() at its start plus the monotonic clock, as the SDK does', () => {
    const exporter = new InMemorySpanExporter();
    const provider = new KitTracerProvider({ resource, sampler: new AlwaysOnSampler(), idGenerator: new CountingIds(), spanLimits: resolveSpanLimits({}), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
    const before = Date.now();
    const span = provider.getTracer('t').startSpan('s');
    const startedAt = performance.now();
    while (performance.now() - startedAt < 5);
    span.end();
    const after = Date.now();
    const [finished] = exporter.getFinishedSpans();
    const startMs = finished!.startTime[0] * 1e3 + finished!.startTime[1] / 1e6;
    const durationMs = finished!.duration[0] * 1e3 + finished!.duration[1] / 1e6;
    expect(startMs).toBeGreaterThanOrEqual(before);
    expect(startMs).toBeLessThanOrEqual(after);
    expect(durationMs).toBeGreaterThanOrEqual(5);
    expect(durationMs).toBeLessThan(after - before + 1);
    expect(finished!.endTime).toEqual([finished!.startTime[0] + finished!.duration[0] + Math.floor((finished!.startTime[1] + finished!.duration[1]) / 1e9), (finished!.startTime[1] + finished!.duration[1]) % 1e9]);
  });

  it('makes spans active, feeds every processor, and flushes and shuts them down', async () => {
    const calls: string[] = [];
    const processor = (name: string): SpanProcessor => ({
      onStart: (span) => calls.push(`${name} start ${(span as unknown as ReadableSpan).name}`),
      onEnding: (span) => calls.push(`${name} ending ${span.name} ${span.ended}`),
      onEnd: (span) => calls.push(`${name} end ${span.name} ${span.ended}`),
      forceFlush: async () => void calls.push(`${name} flush`),
      shutdown: async () => void calls.push(`${name} shutdown`),
    });
    const provider = new KitTracerProvider({ resource, sampler: new AlwaysOnSampler(), idGenerator: new CountingIds(), spanLimits: resolveSpanLimits({}), spanProcessors: [processor('a'), processor('b')] });
    const tracer = provider.getTracer('t');
    expect(provider.getTracer('t')).toBe(tracer);
    expect(provider.getTracer('t', '2')).not.toBe(tracer);
    const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks') as typeof import('@opentelemetry/context-async-hooks');
    const manager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(manager);
    try {
      const result = tracer.startActiveSpan('outer', (span) => {
        expect(trace.getActiveSpan()).toBe(span);
        const inner = tracer.startSpan('inner');
        expect(inner.spanContext().traceId).toBe(span.spanContext().traceId);
        expect((inner as unknown as ReadableSpan).parentSpanContext).toEqual(span.spanContext());
        inner.end();
        span.end();
        return 42;
      });
      expect(result).toBe(42);
    } finally {
      context.disable();
    }
    await provider.forceFlush();
    await provider.shutdown();
    expect(calls).toEqual([
      'a start outer',
      'b start outer',
      'a start inner',
      'b start inner',
      'a ending inner false',
      'b ending inner false',
      'a end inner true',
      'b end inner true',
      'a ending outer false',
      'b ending outer false',
      'a end outer true',
      'b end outer true',
      'a flush',
      'b flush',
      'a shutdown',
      'b shutdown',
    ]);
  });
});

describe('the sampler and limits from the environment', () => {
  it.each([
    [{}, 'ParentBased{root=AlwaysOnSampler, remoteParentSampled=AlwaysOnSampler, remoteParentNotSampled=AlwaysOffSampler, localParentSampled=AlwaysOnSampler, localParentNotSampled=AlwaysOffSampler}'],
    [{ OTEL_TRACES_SAMPLER: 'always_on' }, 'AlwaysOnSampler'],
    [{ OTEL_TRACES_SAMPLER: 'always_off' }, 'AlwaysOffSampler'],
    [{ OTEL_TRACES_SAMPLER: ' parentbased_always_off ' }, 'ParentBased{root=AlwaysOffSampler, remoteParentSampled=AlwaysOnSampler, remoteParentNotSampled=AlwaysOffSampler, localParentSampled=AlwaysOnSampler, localParentNotSampled=AlwaysOffSampler}'],
    [{ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }, 'TraceIdRatioBased{0.25}'],
    [{ OTEL_TRACES_SAMPLER: 'traceidratio' }, 'TraceIdRatioBased{1}'],
    [{ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' }, 'ParentBased{root=TraceIdRatioBased{0}, remoteParentSampled=AlwaysOnSampler, remoteParentNotSampled=AlwaysOffSampler, localParentSampled=AlwaysOnSampler, localParentNotSampled=AlwaysOffSampler}'],
  ])('%j gives %s, as NodeSDK builds it', (env, expected) => {
    expect(samplerFromEnv(env).toString()).toBe(expected);
  });

  it('reads the span limits NodeSDK reads, the span-specific ones first, with the SDK defaults', () => {
    const saved = { ...process.env };
    try {
      Object.assign(process.env, { OTEL_ATTRIBUTE_COUNT_LIMIT: '7', OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: '99', OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: '12', OTEL_SPAN_EVENT_COUNT_LIMIT: '3' });
      expect(spanLimitsFromEnv()).toEqual({ attributeCountLimit: 7, attributeValueLengthLimit: 12, eventCountLimit: 3, linkCountLimit: 128, attributePerEventCountLimit: 128, attributePerLinkCountLimit: 128 });
    } finally {
      for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
      Object.assign(process.env, saved);
    }
    expect(resolveSpanLimits({})).toEqual({ attributeCountLimit: 128, attributeValueLengthLimit: Infinity, eventCountLimit: 128, linkCountLimit: 128, attributePerEventCountLimit: 128, attributePerLinkCountLimit: 128 });
  });
});
