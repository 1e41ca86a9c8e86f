/**
 * OTLP log records from the preload where it runs: the kit's server in a
 * child process started with `node -r`, exporting to a real OTLP receiver.
 * Each line the app writes becomes one record, with the request's span
 * context; through a collector outage the records are held (bounded),
 * counted and reported.
 */
import { startReceiver, type OtlpReceiver, type ReceivedLogRecord } from '../helpers/otlpReceiver';
import { listeningPort, SERVER, startChild, type Child } from '../helpers/child';
import { get } from '../helpers/load';
import { waitUntil } from '../helpers/waitUntil';

jest.setTimeout(60_000);

let receiver: OtlpReceiver;
const children: Child[] = [];

function startServer(env: Record<string, string>): Child {
  const child = startChild(SERVER, { HOST: '127.0.0.1', PORT: '0', ENABLE_TEST_ROUTES: 'true', ...env });
  children.push(child);
  return child;
}

beforeAll(async () => {
  receiver = await startReceiver();
});

afterEach(async () => {
  await Promise.all(children.splice(0).map((child) => child.stop()));
  receiver.setFailure('none');
  receiver.reset();
});

afterAll(async () => {
  await receiver.close();
});

const SECRET = 'c2VjcmV0LWxvZ3MtdG9rZW4tOTg3';

function lines(text: string): Array<Record<string, unknown>> {
  return text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe.each([
  ['grpc', () => ({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl })],
  ['http/protobuf', () => ({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpUrl, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' })],
])('OTLP logs over %s', (transport, endpoint) => {
  test('each line is one record with its resource, severity, body, attributes and span context, flushed at SIGINT', async () => {
    const child = startServer({
      ...endpoint(),
      OTEL_SERVICE_NAME: 'logs-preload',
      LOG_LEVEL: 'debug',
      // Only the shutdown flush can deliver within the test.
      OTEL_BSP_SCHEDULE_DELAY: '60000',
      OTEL_BLRP_SCHEDULE_DELAY: '60000',
    });
    const port = await listeningPort(child);
    const marker = `m-${transport}`;
    expect((await get(port, `/_test/log?marker=${marker}&token=${SECRET}`, { Authorization: `Bearer ${SECRET}`, Cookie: `sid=${SECRET}` })).status).toBe(200);
    expect(receiver.logs).toHaveLength(0);

    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    const pid = child.process.pid;
    const span = receiver.spans.find((s) => s.kind === 2 && s.attributes['url.path'] === '/_test/log');
    expect(span).toBeDefined();

    const marked = receiver.logs.filter((r) => r.attributes.marker === marker);
    expect(marked).toHaveLength(1);
    expect(marked[0]).toMatchObject({
      severityNumber: 9,
      severityText: 'info',
      body: 'test log line',
      traceId: span?.traceId,
      spanId: span?.spanId,
      flags: 1,
      scope: 'koa-pm2-otel',
    });
    expect(marked[0]?.resource).toMatchObject({ 'service.name': 'logs-preload', 'process.pid': pid });
    // The span context is the record's, not an attribute.
    expect(Object.keys(marked[0]?.attributes ?? {}).sort()).toEqual(['marker']);

    const access = receiver.logs.filter((r) => r.body === 'request');
    expect(access).toHaveLength(1);
    expect(access[0]).toMatchObject({ traceId: span?.traceId, spanId: span?.spanId });
    expect(access[0]?.attributes).toMatchObject({ method: 'GET', route: '/_test/log', path: '/_test/log', status: 200, query: `marker=${marker}&token=[Redacted]` });
    // At debug level the access line carries the headers, secrets redacted, in the line and the record alike.
    expect(access[0]?.attributes.headers).toMatchObject({ authorization: '[Redacted]', cookie: '[Redacted]' });

    // Every line written is one record, no more: none is sent twice.
    const written = lines(child.stdout());
    expect(receiver.logs.map((r) => r.body).sort()).toEqual(written.map((l) => l.msg).sort());
    expect(written.find((l) => l.msg === 'request')).toMatchObject({ trace_id: span?.traceId, span_id: span?.spanId, trace_flags: '01' });
    for (const text of [child.stdout(), child.stderr(), JSON.stringify(receiver.logs, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))]) {
      expect(text).not.toContain(SECRET);
    }
    expect(receiver.logRequests.every((r) => r.transport === (transport === 'grpc' ? 'grpc' : 'http'))).toBe(true);
  });
});

describe('no log records', () => {
  test('OTEL_LOGS_EXPORTER=none: the spans of the same flush arrive, no record does', async () => {
    const child = startServer({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_LOGS_EXPORTER: 'none', OTEL_BSP_SCHEDULE_DELAY: '60000' });
    const port = await listeningPort(child);
    expect((await get(port, '/_test/log?marker=none')).status).toBe(200);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    // The marker: the flush that would have carried the records delivered the request's span.
    expect(receiver.spans.some((s) => s.attributes['url.path'] === '/_test/log')).toBe(true);
    expect(receiver.logRequests).toHaveLength(0);
    expect(child.stdout()).toContain('"marker":"none"');
  });

  test('OTEL_SDK_DISABLED=true: the line is written, nothing is exported', async () => {
    const child = startServer({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_SDK_DISABLED: 'true', OTEL_BLRP_SCHEDULE_DELAY: '10' });
    const port = await listeningPort(child);
    expect((await get(port, '/_test/log?marker=disabled')).status).toBe(200);
    // The line is on stdout once the response is; a record would be emitted at the same moment.
    await child.waitForLine(/"marker":"disabled"/);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(receiver.requests).toHaveLength(0);
    expect(receiver.logRequests).toHaveLength(0);
    expect(lines(child.stdout()).find((l) => l.marker === 'disabled')).not.toHaveProperty('trace_id');
  });
});

describe('a collector outage', () => {
  test('holds at most OTEL_BLRP_MAX_QUEUE_SIZE records, counts and reports the dropped ones, and delivers the held ones once it is back', async () => {
    receiver.setFailure('unavailable');
    const child = startServer({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_BLRP_SCHEDULE_DELAY: '50',
      OTEL_BLRP_MAX_QUEUE_SIZE: '100',
      OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: '50',
      OTEL_EXPORTER_OTLP_LOGS_TIMEOUT: '1000',
    });
    const port = await listeningPort(child);
    await waitUntil('the first refused export', () => receiver.logRequests.length > 0, 20_000);
    for (let i = 0; i < 300; i += 1) expect((await get(port, `/items/${i}`)).status).toBe(200);
    type Stats = { logs: { delivered: number; dropped: number; held: number } };
    const stats = async (): Promise<Stats['logs']> => (JSON.parse((await get(port, '/_test/stats')).body) as Stats).logs;
    // 301 lines so far (listening, 300 access lines), and the access lines of
    // the polls: once the batch processor has passed them on, at most 100 are
    // held, the rest dropped and counted.
    const during = await waitUntil('the batch processor to pass every record on', async () => {
      const now = await stats();
      return now.held + now.dropped >= 301 ? now : undefined;
    }, 20_000);
    expect(during.delivered).toBe(0);
    expect(during.held).toBeLessThanOrEqual(100);
    expect(during.dropped).toBeGreaterThanOrEqual(201);
    expect(child.stderr().split('\n').filter((l) => l.includes('cannot export log records'))).toHaveLength(1);

    receiver.setFailure('none');
    await waitUntil('the recovery line', () => child.stderr().includes('recovered'), 30_000);
    const after = await stats();
    expect(after.held).toBe(0);
    expect(receiver.logs.length).toBe(after.delivered);
    // The oldest were dropped: the newest access lines arrived.
    expect(receiver.logs.some((r: ReceivedLogRecord) => r.attributes.path === '/items/299')).toBe(true);
    const report = child.stderr().split('\n').filter((l) => l.includes('recovered'));
    expect(report).toHaveLength(1);
    expect(report[0]).toContain('held log records');

    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
  });

  test('at stop, the records the collector never took are counted and reported within the flush budget', async () => {
    receiver.setFailure('unavailable');
    const child = startServer({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_BLRP_SCHEDULE_DELAY: '50',
      FLUSH_TIMEOUT_MS: '1500',
    });
    const port = await listeningPort(child);
    for (let i = 0; i < 20; i += 1) expect((await get(port, `/items/${i}`)).status).toBe(200);
    await waitUntil('the outage line', () => child.stderr().includes('cannot export log records'), 20_000);
    child.process.kill('SIGINT');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    const lost = child.stderr().split('\n').find((l) => l.includes('log records not delivered at shutdown'));
    expect(lost).toBeDefined();
    // listening, 20 access lines, shutting down: each record is accounted for.
    expect(Number(/(\d+) log records not delivered/.exec(lost ?? '')?.[1])).toBe(22);
  });
});
