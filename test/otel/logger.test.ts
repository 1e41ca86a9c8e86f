/**
 * The kit's logger provider (`otel/logger.ts`) against the SDK's: the same
 * emits, with the same processors changing the records in `onEmit`, give
 * the same records to the processors and the same diagnostics, whatever the
 * values, limits, times, contexts and scopes.
 */
import fc from 'fast-check';
import { ROOT_CONTEXT, SeverityNumber, TraceFlags, context, trace, type Attributes, type Context, type HrTime, type Logger, type LoggerProvider, type LogRecord, type TimeInput } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemoryLogRecordExporter, LoggerProvider as SdkLoggerProvider, SimpleLogRecordProcessor, type LogRecordLimits, type LogRecordProcessor, type ReadWriteLogRecord, type ReadableLogRecord } from '@opentelemetry/sdk-logs';
import { KitLoggerProvider, logRecordLimitsFromEnv, resolveLogRecordLimits } from '../../otel/logger';
import { anyValue, optional, text } from '../helpers/protobufFixtures';
import { clockTime, collectDiagnostics, diagnostics, exception, key, limit, settleClockTimes, someAttributes, timeInput, value } from '../helpers/sdkComparison';

collectDiagnostics();
const contextManager = new AsyncLocalStorageContextManager();
beforeAll(() => context.setGlobalContextManager(contextManager.enable()));
afterAll(() => context.disable());

const SPAN = trace.setSpanContext(ROOT_CONTEXT, { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.SAMPLED, isRemote: true });
const INVALID = trace.setSpanContext(ROOT_CONTEXT, { traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 });

type Change =
  | { op: 'setAttribute'; key: string; value: unknown }
  | { op: 'setAttributes'; attributes: Attributes }
  | { op: 'setBody'; body: unknown }
  | { op: 'setEventName'; name: string }
  | { op: 'setSeverityNumber'; severity: number }
  | { op: 'setSeverityText'; text: string }
  | { op: 'assign'; field: 'hrTime' | 'hrTimeObserved' | 'spanContext'; to: HrTime | undefined };

interface Emit {
  record: Omit<LogRecord, 'context'>;
  /** Where the record's context comes from: none given, given as undefined, or given. */
  context: 'absent' | 'undefined' | 'span' | 'invalid' | 'root';
  /** The context active around the emit. */
  active: 'root' | 'span';
  /** A record whose fields sit on its prototype (the SDK copies own fields only). */
  inherited?: boolean;
  /** What a processor changes in `onEmit`, and what someone tries after. */
  during: Change[];
  after: Change[];
}

interface Case {
  limits: LogRecordLimits;
  scope: { name: string; version?: string; schemaUrl?: string; attributes?: Attributes };
  /** A processor in front with its own `enabled`: absent, always, never, or from INFO up; or no processor at all. */
  gate: 'none' | 'always' | 'never' | 'info' | 'no processors';
  emits: Emit[];
  /** Severities asked of `logger.enabled` after the emits. */
  asked: Array<number | undefined>;
}

const severity = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 24 }) }, { weight: 1, arbitrary: fc.constantFrom(-1, -20, 0.5, NaN) });
const hrTime = fc.tuple(fc.integer({ min: 1_600_000_000, max: 1_900_000_000 }), fc.integer({ min: 0, max: 999_999_999 })) as fc.Arbitrary<HrTime>;
const change: fc.Arbitrary<Change> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('setAttribute' as const), key, value }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('setAttributes' as const), attributes: someAttributes }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setBody' as const), body: anyValue }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setEventName' as const), name: text }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setSeverityNumber' as const), severity }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setSeverityText' as const), text }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('assign' as const), field: fc.constantFrom('hrTime' as const, 'hrTimeObserved' as const, 'spanContext' as const), to: optional(hrTime) }) },
);
const record: fc.Arbitrary<Omit<LogRecord, 'context'>> = fc.record(
  {
    timestamp: timeInput,
    observedTimestamp: timeInput,
    severityNumber: severity as fc.Arbitrary<SeverityNumber>,
    severityText: text,
    body: anyValue as fc.Arbitrary<LogRecord['body']>,
    attributes: fc.oneof({ weight: 8, arbitrary: someAttributes }, { weight: 1, arbitrary: fc.constant(null as unknown as Attributes) }),
    eventName: text,
    exception,
  },
  { requiredKeys: [] },
);
const emit: fc.Arbitrary<Emit> = fc.record(
  {
    record,
    context: fc.constantFrom('absent', 'undefined', 'span', 'invalid', 'root'),
    active: fc.constantFrom('root', 'span'),
    inherited: optional(fc.boolean()),
    during: fc.array(change, { maxLength: 6 }),
    after: fc.array(change, { maxLength: 2 }),
  },
  { requiredKeys: ['record', 'context', 'active', 'during', 'after'] },
);
const loggerCase: fc.Arbitrary<Case> = fc.record({
  // Count limits mostly small, so that overwrites, adds and drops meet them.
  limits: fc.record({ attributeCountLimit: fc.oneof({ weight: 3, arbitrary: fc.nat({ max: 4 }) }, { weight: 1, arbitrary: limit }), attributeValueLengthLimit: limit }),
  scope: fc.record({ name: fc.oneof(text, fc.constant('')), version: optional(text), schemaUrl: optional(text), attributes: optional(someAttributes) }, { requiredKeys: ['name'] }),
  gate: fc.constantFrom('none', 'always', 'never', 'info', 'no processors'),
  emits: fc.array(emit, { minLength: 1, maxLength: 3 }),
  asked: fc.array(optional(severity), { maxLength: 3 }),
});

const resource = resourceFromAttributes({ 'service.name': 'logger-test' });

function applyChange(logRecord: ReadWriteLogRecord, step: Change): void {
  switch (step.op) {
    case 'setAttribute':
      logRecord.setAttribute(step.key, step.value as never);
      break;
    case 'setAttributes':
      logRecord.setAttributes(step.attributes);
      break;
    case 'setBody':
      logRecord.setBody(step.body as never);
      break;
    case 'setEventName':
      logRecord.setEventName(step.name);
      break;
    case 'setSeverityNumber':
      logRecord.setSeverityNumber(step.severity);
      break;
    case 'setSeverityText':
      logRecord.setSeverityText(step.text);
      break;
    case 'assign':
      (logRecord as unknown as Record<string, unknown>)[step.field] = step.field === 'spanContext' ? (step.to === undefined ? undefined : trace.getSpanContext(SPAN)) : step.to;
      break;
  }
}

/** Runs a case through one provider: what the processors saw, in what contexts, what `enabled` said, and the diagnostics. */
function run(which: 'sdk' | 'kit', loggerCase: Case): unknown {
  const exporter = new InMemoryLogRecordExporter();
  const seen: string[] = [];
  let current: Emit | undefined;
  const changer: LogRecordProcessor = {
    onEmit(logRecord, emitContext) {
      seen.push(`onEmit in ${emitContext === ROOT_CONTEXT ? 'root' : trace.getSpanContext(emitContext ?? ROOT_CONTEXT) ? 'span' : 'other'}`);
      for (const step of current!.during) applyChange(logRecord, step);
    },
    forceFlush: async () => undefined,
    shutdown: async () => undefined,
  };
  const gate: LogRecordProcessor = {
    onEmit: () => undefined,
    enabled: (options) => {
      seen.push(`enabled? ${String(options.severityNumber)} ${options.eventName === undefined ? '' : 'event'} ${options.instrumentationScope.name}`);
      return loggerCase.gate === 'always' || (loggerCase.gate === 'info' && (options.severityNumber ?? 0) >= SeverityNumber.INFO);
    },
    forceFlush: async () => undefined,
    shutdown: async () => undefined,
  };
  const processors = loggerCase.gate === 'no processors' ? [] : [...(loggerCase.gate === 'none' ? [] : [gate]), changer, new SimpleLogRecordProcessor({ exporter })];
  diagnostics.length = 0;
  const provider: LoggerProvider =
    which === 'sdk'
      ? new SdkLoggerProvider({ resource, processors, logRecordLimits: loggerCase.limits })
      : new KitLoggerProvider({ resource, processors, logRecordLimits: resolveLogRecordLimits(loggerCase.limits) });
  const { name, version, schemaUrl, attributes } = loggerCase.scope;
  const logger: Logger = provider.getLogger(name, version, { schemaUrl, attributes });
  const records: unknown[] = [];
  for (const step of loggerCase.emits) {
    current = step;
    const given = contextOf(step.context);
    const fields: LogRecord = step.context === 'absent' ? { ...step.record } : { ...step.record, context: given };
    const logRecord = step.inherited ? (Object.create(fields) as LogRecord) : fields;
    const before = exporter.getFinishedLogRecords().length;
    try {
      context.with(step.active === 'span' ? SPAN : ROOT_CONTEXT, () => logger.emit(logRecord));
    } catch (error) {
      diagnostics.push(`threw ${String(error)}`);
    }
    const emitted = exporter.getFinishedLogRecords().slice(before);
    for (const finished of emitted) for (const later of step.after) applyChange(finished as unknown as ReadWriteLogRecord, later);
    records.push(emitted.map((finished) => view(finished, step)));
  }
  const enabled = loggerCase.asked.map((asked) => logger.enabled({ severityNumber: asked as SeverityNumber }));
  return { records, seen, enabled, diagnostics: [...diagnostics] };
}

function contextOf(given: Emit['context']): Context | undefined {
  if (given === 'span') return SPAN;
  if (given === 'invalid') return INVALID;
  if (given === 'root') return ROOT_CONTEXT;
  return undefined;
}

/** Whether a time input is absolute (an epoch, a Date, an HrTime): else it comes from the clock. */
function exact(time: TimeInput | undefined): boolean {
  return time !== undefined && time !== null && !(typeof time === 'number' && time < 1e12);
}

function view(logRecord: ReadableLogRecord, step: Emit): unknown {
  const assigned = (field: string): boolean => step.during.some((change) => change.op === 'assign' && change.field === field);
  return {
    hrTime: logRecord.hrTime === undefined ? undefined : clockTime(logRecord.hrTime, assigned('hrTime') || (!step.inherited && exact(step.record.timestamp))),
    hrTimeObserved: logRecord.hrTimeObserved === undefined ? undefined : clockTime(logRecord.hrTimeObserved, assigned('hrTimeObserved') || (!step.inherited && exact(step.record.observedTimestamp))),
    spanContext: logRecord.spanContext,
    severityNumber: logRecord.severityNumber,
    severityText: logRecord.severityText,
    body: logRecord.body,
    eventName: logRecord.eventName,
    attributes: logRecord.attributes,
    droppedAttributesCount: logRecord.droppedAttributesCount,
    resource: logRecord.resource === resource,
    instrumentationScope: logRecord.instrumentationScope,
  };
}

function same(loggerCase: Case): void {
  const kit = run('kit', loggerCase);
  const sdk = run('sdk', loggerCase);
  settleClockTimes(kit, sdk);
  expect(kit).toEqual(sdk);
}

describe('KitLoggerProvider against the SDK LoggerProvider', () => {
  it('gives the same records, processor calls and diagnostics for any emits, changes, limits, contexts and scope', () => {
    fc.assert(
      fc.property(loggerCase, (loggerCase) => same(loggerCase)),
      { numRuns: 1500 },
    );
  });

  it('gives the same record for the access line the kit emits per request, with no diagnostics', () => {
    const accessCase: Case = {
      limits: {},
      scope: { name: 'koa-pm2-otel' },
      gate: 'none',
      emits: [
        {
          record: { severityNumber: SeverityNumber.INFO, severityText: 'info', body: 'request', attributes: { method: 'GET', route: '/items/:id', path: '/items/1', status: 200, duration_ms: 0.412, bytes: 15, remote_addr: '127.0.0.1', user_agent: 'wrk' } },
          context: 'absent',
          active: 'span',
          during: [],
          after: [],
        },
      ],
      asked: [SeverityNumber.INFO],
    };
    same(accessCase);
    const kit = run('kit', accessCase) as { records: Array<Array<{ spanContext: unknown }>>; diagnostics: string[] };
    expect(kit.records[0]![0]!.spanContext).toEqual(trace.getSpanContext(SPAN));
    expect(kit.diagnostics).toEqual([]);
  });

  it('keeps one logger per scope, as the SDK does, and gives none after shutdown', async () => {
    for (const provider of [new KitLoggerProvider({ resource, processors: [], logRecordLimits: resolveLogRecordLimits({}) }), new SdkLoggerProvider({ resource })]) {
      diagnostics.length = 0;
      const a = provider.getLogger('a', '1', { attributes: { x: 1, y: 'z' } });
      expect(provider.getLogger('a', '1', { attributes: { y: 'z', x: 1 } })).toBe(a);
      expect(provider.getLogger('a', '1', { attributes: { x: 2, y: 'z' } })).not.toBe(a);
      expect(provider.getLogger('a', '2')).not.toBe(provider.getLogger('a', '1'));
      await provider.forceFlush();
      await provider.shutdown();
      await provider.shutdown();
      await provider.forceFlush();
      expect(provider.getLogger('a', '1').constructor.name).toBe('NoopLogger');
      expect(diagnostics).toEqual([
        'warn shutdown may only be called once per LoggerProvider ',
        'warn invalid attempt to force flush after LoggerProvider shutdown ',
        'warn A shutdown LoggerProvider cannot provide a Logger ',
      ]);
    }
  });

  it('drops records emitted after shutdown, and flushes and shuts its processors down once', async () => {
    const exporter = new InMemoryLogRecordExporter();
    const calls: string[] = [];
    const processor = new SimpleLogRecordProcessor({ exporter });
    const counting: LogRecordProcessor = { onEmit: (logRecord, emitContext) => processor.onEmit(logRecord, emitContext), forceFlush: async () => void calls.push('flush'), shutdown: async () => void calls.push('shutdown') };
    const provider = new KitLoggerProvider({ resource, processors: [counting], logRecordLimits: resolveLogRecordLimits({}) });
    const logger = provider.getLogger('a');
    logger.emit({ body: 'before' });
    await provider.forceFlush();
    await Promise.all([provider.shutdown(), provider.shutdown()]);
    logger.emit({ body: 'after' });
    expect(exporter.getFinishedLogRecords().map((logRecord) => logRecord.body)).toEqual(['before']);
    expect(calls).toEqual(['flush', 'shutdown']);
  });
});

describe('logRecordLimitsFromEnv', () => {
  const names = ['OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT', 'OTEL_ATTRIBUTE_COUNT_LIMIT', 'OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT', 'OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT'];
  const saved = names.map((name) => process.env[name]);
  afterEach(() => names.forEach((name, i) => (saved[i] === undefined ? delete process.env[name] : (process.env[name] = saved[i]))));

  it('reads the record limits NodeSDK reads, the record-specific ones first, with the SDK defaults', () => {
    for (const name of names) delete process.env[name];
    expect(logRecordLimitsFromEnv()).toEqual({ attributeCountLimit: 128, attributeValueLengthLimit: Infinity });
    process.env.OTEL_ATTRIBUTE_COUNT_LIMIT = '7';
    process.env.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT = '30';
    expect(logRecordLimitsFromEnv()).toEqual({ attributeCountLimit: 7, attributeValueLengthLimit: 30 });
    process.env.OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT = '3';
    process.env.OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT = '5';
    expect(logRecordLimitsFromEnv()).toEqual({ attributeCountLimit: 3, attributeValueLengthLimit: 5 });
  });

  it('warns about a limit of 0 or less and keeps the default, as NodeSDK does', () => {
    for (const name of names) delete process.env[name];
    process.env.OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT = '0';
    diagnostics.length = 0;
    expect(logRecordLimitsFromEnv().attributeCountLimit).toBe(128);
    expect(diagnostics).toEqual(['warn OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT (0) is invalid, expected number greater than 0, using default. ']);
  });
});
