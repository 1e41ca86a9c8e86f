/**
 * The logger and the access log in-process: the line shape, the trace
 * context mixin, redaction of headers and query values, and the access line
 * of a request driven through the app.
 */
import { PassThrough, Writable } from 'node:stream';
import { context, logs, trace, TraceFlags } from '@opentelemetry/api';
import { InMemoryLogRecordExporter, LoggerProvider, SimpleLogRecordProcessor } from '@opentelemetry/sdk-logs';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import fc from 'fast-check';
import supertest from 'supertest';
import { createApp } from '../../src/app';
import { accessFields, redactQuery } from '../../src/accessLog';
import pino from 'pino';
import { createLogger, GATHER_MS, infoLine, isoTime, traceFields, type Logger } from '../../src/log';
import { waitUntil } from '../helpers/waitUntil';
import type { LogLevel } from '../../src/config';

/** A logger whose stdout and stderr lines the test reads back, parsed. */
function capture(level: LogLevel = 'info', emit = false): { log: Logger; out: () => Array<Record<string, unknown>>; err: () => Array<Record<string, unknown>>; flush: () => Promise<void> } {
  let out = '';
  let err = '';
  const stdout = new PassThrough().setEncoding('utf8');
  const stderr = new PassThrough().setEncoding('utf8');
  stdout.on('data', (chunk: string) => (out += chunk));
  stderr.on('data', (chunk: string) => (err += chunk));
  const log = createLogger({ level, stdout, stderr, emit });
  const parse = (text: string): Array<Record<string, unknown>> =>
    text
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { log, out: () => parse(out), err: () => parse(err), flush: () => new Promise((resolve) => log.flush(() => resolve())) };
}

// What the preload's SDK registers: without a context manager, context.with() keeps no context.
beforeAll(() => context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable()));
afterAll(() => context.disable());

const SPAN_CONTEXT = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED };

describe('the logger', () => {
  it('writes the kit’s line shape: level as a label, ISO time, pid, msg; warn and above on stderr', async () => {
    const { log, out, err, flush } = capture();
    log.info({ a: 1 }, 'hello');
    log.debug('not written at info');
    log.warn('careful');
    await flush();
    expect(out()).toEqual([{ level: 'info', time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/), pid: process.pid, a: 1, msg: 'hello' }]);
    expect(err()).toEqual([expect.objectContaining({ level: 'warn', msg: 'careful' })]);
  });

  it('writes the time exactly as pino’s isoTime does, across milliseconds, seconds, clock steps back and odd years', () => {
    const start = Date.UTC(2026, 10, 30, 23, 59, 58, 990);
    const times = [
      ...Array.from({ length: 2100 }, (_, i) => start + i), // ms 0, 9, 10, 99, 100, 999 and three second (and day, month) boundaries
      start - 1000, start, start - 1, // the clock stepped back
      0, -1, -999, -1001, Date.UTC(1999, 11, 31, 23, 59, 59, 999), Date.UTC(9999, 11, 31, 23, 59, 59, 999),
      Date.UTC(10000, 0, 1, 0, 0, 0, 5), Date.UTC(-1, 0, 1, 0, 0, 0, 50), start + 7, // six-digit years, then back
    ];
    const now = jest.spyOn(Date, 'now');
    try {
      for (const at of times) {
        now.mockReturnValue(at);
        expect(isoTime()).toBe(pino.stdTimeFunctions.isoTime());
        expect(isoTime(at)).toBe(`,"time":"${new Date(at).toISOString()}"`);
      }
    } finally {
      now.mockRestore();
    }
  });

  it('adds trace_id, span_id and trace_flags inside a span, and nothing outside one', async () => {
    expect(traceFields()).toEqual({});
    const inSpan = context.with(trace.setSpanContext(context.active(), SPAN_CONTEXT), () => traceFields());
    expect(inSpan).toEqual({ trace_id: SPAN_CONTEXT.traceId, span_id: SPAN_CONTEXT.spanId, trace_flags: '01' });
    const unsampled = context.with(trace.setSpanContext(context.active(), { ...SPAN_CONTEXT, traceFlags: TraceFlags.NONE }), () => traceFields());
    expect(unsampled.trace_flags).toBe('00');

    const { log, out, flush } = capture();
    context.with(trace.setSpanContext(context.active(), SPAN_CONTEXT), () => log.info('in a request'));
    log.info('outside');
    await flush();
    expect(out()[0]).toMatchObject({ trace_id: SPAN_CONTEXT.traceId, span_id: SPAN_CONTEXT.spanId, trace_flags: '01', msg: 'in a request' });
    expect(out()[1]).not.toHaveProperty('trace_id');
  });

  it('writes gathered lines together within GATHER_MS, and at once past 64 KiB', async () => {
    const chunks: string[] = [];
    const stdout = new Writable({ write: (chunk: Buffer, _encoding, done) => (chunks.push(chunk.toString()), done()) });
    const log = createLogger({ stdout, stderr: stdout });
    log.info('first');
    log.info('second');
    expect(chunks).toEqual([]);
    await waitUntil('the gathered lines', () => chunks.length > 0, 5000, 2);
    expect(chunks).toHaveLength(1);
    expect(chunks[0]?.split('\n').filter(Boolean).map((line) => (JSON.parse(line) as { msg: string }).msg)).toEqual(['first', 'second']);
    log.info({ big: 'x'.repeat(70 * 1024) }, 'large');
    expect(chunks).toHaveLength(2);
    expect(GATHER_MS).toBeLessThanOrEqual(50);
  });

  it('redacts secret headers wherever a line carries headers, at any level', async () => {
    const { log, out, flush } = capture('trace');
    const headers = { authorization: 'Bearer s3cret', cookie: 'sid=s3cret', 'set-cookie': ['a=s3cret'], 'proxy-authorization': 'Basic s3cret', 'x-api-key': 's3cret', accept: '*/*' };
    log.debug({ headers }, 'top level');
    log.trace({ req: { headers } }, 'nested');
    await flush();
    const text = JSON.stringify(out());
    expect(text).not.toContain('s3cret');
    expect(out()[0]?.headers).toEqual({ authorization: '[Redacted]', cookie: '[Redacted]', 'set-cookie': '[Redacted]', 'proxy-authorization': '[Redacted]', 'x-api-key': '[Redacted]', accept: '*/*' });
    // The caller's object is left as it was.
    expect(headers.authorization).toBe('Bearer s3cret');
  });
});

describe('log records (OTEL_LOGS_EXPORTER)', () => {
  const exporter = new InMemoryLogRecordExporter();
  beforeAll(() => logs.setGlobalLoggerProvider(new LoggerProvider({ processors: [new SimpleLogRecordProcessor({ exporter })] })));
  afterAll(() => logs.disable());
  beforeEach(() => exporter.reset());

  // Built from pino's object (access-like lines) or parsed back from the line
  // (everything else): either way, the record says what the line says.
  it('gives each line one record with its level, message and fields, whichever way the record is built', async () => {
    const { log, out, err, flush } = capture('debug', true);
    const child = log.child({ request: 'r1' });
    context.with(trace.setSpanContext(context.active(), SPAN_CONTEXT), () => {
      log.info({ method: 'GET', route: '/items/:id', status: 200, duration_ms: 0.25, query: undefined, aborted: true, agent: '"\\\n\u00ff' }, 'request');
      log.info({ headers: { authorization: 'Bearer secret', accept: '*/*' }, status: 200 }, 'with headers');
      log.warn({ nested: { a: [1, 'b'] }, empty: null }, 'objects');
      log.error(new Error('boom'));
      log.info({ ratio: Number.NaN }, 'not a finite number');
      log.info({ msg: 'from the object' });
      log.debug('formatted %s %d', 'text', 42);
      child.info({ status: 201 }, 'child');
    });
    await flush();
    const lines = [...out(), ...err()].sort((a, b) => String(a.msg).localeCompare(String(b.msg)));
    const records = exporter.getFinishedLogRecords().sort((a, b) => String(a.body).localeCompare(String(b.body)));
    expect(records).toHaveLength(8);
    const notAttributes = new Set(['level', 'time', 'pid', 'msg', 'trace_id', 'span_id', 'trace_flags']);
    records.forEach((record, i) => {
      const line = lines[i] as Record<string, unknown>;
      expect(record.body).toBe(line.msg);
      expect(record.severityText).toBe(line.level);
      expect(record.spanContext?.spanId).toBe(SPAN_CONTEXT.spanId);
      expect(record.attributes).toEqual(Object.fromEntries(Object.entries(line).filter(([key]) => !notAttributes.has(key))));
    });
    expect(JSON.stringify(records.map((r) => r.attributes))).not.toContain('Bearer secret');
    expect(records.find((r) => r.body === 'request')?.attributes).toEqual({ method: 'GET', route: '/items/:id', status: 200, duration_ms: 0.25, aborted: true, agent: '"\\\n\u00ff' });
    expect(records.find((r) => r.body === 'child')?.attributes).toEqual({ request: 'r1', status: 201 });
  });
});

describe('infoLine, the access line without pino\'s serializer', () => {
  /** What a logger writes and emits for one call, at a fixed clock. */
  function written(call: (log: Logger) => boolean | void): { line: string; records: unknown[] } {
    let line = '';
    const stdout = new Writable({ write: (chunk: Buffer, _encoding, callback) => ((line += chunk.toString()), callback()) });
    const records: unknown[] = [];
    const otel = { emit: (record: unknown) => records.push(record) };
    const spy = jest.spyOn(logs, 'getLogger').mockReturnValue(otel as never);
    try {
      const log = createLogger({ stdout, stderr: stdout, emit: true });
      expect(call(log)).not.toBe(false);
      log.flush();
    } finally {
      spy.mockRestore();
    }
    return { line, records };
  }

  const value = fc.oneof(
    fc.string(),
    fc.string({ unit: 'binary', maxLength: 30 }),
    // Lone surrogates and control characters, where pino's escaping and JSON.stringify part.
    fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((code) => String.fromCharCode(code)), maxLength: 120 }),
    // Around pino's 100-character switch to JSON.stringify, with a character the two escape differently.
    fc.tuple(fc.string({ minLength: 95, maxLength: 140 }), fc.constantFrom('', '\ud800', '\udfff', '"', '\\', '\n')).map(([text, odd]) => text + odd),
    fc.integer(),
    fc.double(),
    fc.constantFrom(Number.NaN, Infinity, -0, 0.1 + 0.2),
    fc.boolean(),
    fc.constant(undefined),
  );
  const fields = fc.record({
    method: value,
    route: value,
    path: value,
    query: value,
    status: value,
    duration_ms: value,
    bytes: value,
    remote_addr: value,
    user_agent: value,
    aborted: fc.constantFrom(true, undefined),
    // Keys beyond the access line's, one the same as a trace field's.
    extra: fc.dictionary(fc.constantFrom('a', 'trace_id', 'span_id', 'k"ey', 'x\\y'), value, { maxKeys: 3 }),
  });

  it('writes the bytes and the record pino writes, for any string, number and boolean, inside a span or not', () => {
    const now = jest.spyOn(Date, 'now').mockReturnValue(Date.UTC(2026, 10, 30, 12, 0, 0, 7));
    try {
      fc.assert(
        fc.property(fields, fc.boolean(), (generated, inSpan) => {
          const { extra, ...access } = generated;
          const line = { ...access, ...extra };
          const run = (call: (log: Logger) => boolean | void) =>
            inSpan ? context.with(trace.setSpanContext(context.active(), SPAN_CONTEXT), () => written(call)) : written(call);
          const mine = run((log) => infoLine(log, line, 'request'));
          const pinos = run((log) => log.info(line, 'request'));
          expect(mine).toEqual(pinos);
          expect(mine.records).toHaveLength(1);
        }),
        { numRuns: 1000 },
      );
    } finally {
      now.mockRestore();
    }
  });

  it('leaves to pino what only pino can write: objects (headers, redacted), and child loggers', () => {
    const { line } = written((log) => {
      expect(infoLine(log, { status: 200, headers: { cookie: 'c=1' } }, 'request')).toBe(false);
      expect(infoLine(log.child({ request: 'r1' }), { status: 200 }, 'request')).toBe(false);
      expect(infoLine(pino({}, new Writable({ write: (_chunk, _encoding, callback) => callback() })), { status: 200 }, 'request')).toBe(false);
    });
    expect(line).toBe('');
  });
});

describe('redactQuery', () => {
  it.each([
    ['page=2&sort=asc', 'page=2&sort=asc'],
    ['token=abc&page=2', 'token=[Redacted]&page=2'],
    ['access_token=a&api_key=b&password=c&client_secret=d&X-Amz-Signature=e&code=f', 'access_token=[Redacted]&api_key=[Redacted]&password=[Redacted]&client_secret=[Redacted]&X-Amz-Signature=[Redacted]&code=[Redacted]'],
    ['%74oken=abc', '%74oken=[Redacted]'],
    ['%E0%A4%A=x&key=y', '%E0%A4%A=x&key=[Redacted]'],
    ['token', 'token'],
  ])('%s -> %s', (query, expected) => {
    expect(redactQuery(query)).toBe(expected);
  });
});

describe('the access log', () => {
  it('writes one line per request with method, route, path, query (redacted), status, duration, bytes, remote address and user agent', async () => {
    const { log, out, flush } = capture();
    const app = createApp({ log, accessLog: true });
    await supertest(app.callback()).get('/items/42?password=hunter2&x=1').set('User-Agent', 'test-agent').set('Authorization', 'Bearer hunter2');
    await supertest(app.callback()).get('/healthz');
    await supertest(app.callback()).get('/no/such');
    await flush();
    const lines = out();
    expect(lines).toHaveLength(2);
    expect(lines[0]).toEqual({
      level: 'info',
      time: expect.any(String),
      pid: process.pid,
      method: 'GET',
      route: '/items/:id',
      path: '/items/42',
      query: 'password=[Redacted]&x=1',
      status: 200,
      duration_ms: expect.any(Number),
      bytes: 14,
      remote_addr: expect.stringMatching(/127\.0\.0\.1|::1/),
      user_agent: 'test-agent',
      msg: 'request',
    });
    expect(lines[1]).toMatchObject({ path: '/no/such', status: 404 });
    expect(lines[1]).not.toHaveProperty('route');
    expect(JSON.stringify(lines)).not.toContain('hunter2');
  });

  it('adds the request headers, redacted, at debug level only', async () => {
    const { log, out, flush } = capture('debug');
    const app = createApp({ log, accessLog: true });
    await supertest(app.callback()).get('/').set('Authorization', 'Bearer hunter2').set('Cookie', 'sid=hunter2');
    await flush();
    expect(out()[0]?.headers).toMatchObject({ authorization: '[Redacted]', cookie: '[Redacted]' });
    expect(JSON.stringify(out())).not.toContain('hunter2');
  });

  it('writes nothing with the access log off', async () => {
    const { log, out, flush } = capture();
    await supertest(createApp({ log }).callback()).get('/');
    await flush();
    expect(out()).toEqual([]);
  });

  it('cuts a huge user agent and keeps hostile characters inside one JSON line', () => {
    const agent = `"\\\n\u0000\u00ff${'x'.repeat(10_000)}`;
    const ctx = {
      req: { url: '/a%0D%0Ab?q="\\', method: 'GET', headers: { 'user-agent': agent }, socket: { remoteAddress: '10.0.0.1' } },
      res: { statusCode: 200, getHeader: () => undefined, writableFinished: true },
    };
    const fields = accessFields(ctx as never, 0, false);
    expect(fields.user_agent?.length).toBe(513);
    expect(fields).toMatchObject({ path: '/a%0D%0Ab', query: 'q="\\', bytes: undefined, remote_addr: '10.0.0.1' });
  });

  it('gives no status for a request cut before any answer, and says it was aborted', () => {
    const ctx = {
      req: { url: '/_test/slow?ms=1500', method: 'GET', headers: {}, socket: { remoteAddress: '127.0.0.1' } },
      res: { statusCode: 404, headersSent: false, getHeader: () => undefined, writableFinished: false },
    };
    const fields = accessFields(ctx as never, 0, false);
    expect(fields).toMatchObject({ status: undefined, aborted: true });
    const answered = accessFields({ ...ctx, res: { ...ctx.res, statusCode: 200, headersSent: true, writableFinished: true } } as never, 0, false);
    expect(answered.status).toBe(200);
    expect(answered.aborted).toBeUndefined();
  });
});
