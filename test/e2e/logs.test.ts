/**
 * Logs under PM2 in cluster mode, with a real OTLP receiver: a line leads to
 * its trace (the record's and the access line's ids are the server span's),
 * no line and no record is lost through `pm2 reload` or `pm2 stop`, and
 * hostile input never breaks a line in PM2's log files.
 */
import { startReceiver, type OtlpReceiver } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get } from '../helpers/load';
import { rawRequest } from '../helpers/rawHttp';
import { waitUntil } from '../helpers/waitUntil';

jest.setTimeout(240_000);

const APP = 'e2e-logs';
const SERVICE = 'e2e-logs-service';

let receiver: OtlpReceiver;
let pm2: Pm2;
let port: number;

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
  port = await startApp(pm2, APP, {
    ENABLE_TEST_ROUTES: 'true',
    OTEL_SERVICE_NAME: SERVICE,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '200',
    OTEL_BLRP_SCHEDULE_DELAY: '200',
    OTEL_METRICS_EXPORTER: 'none',
  });
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

type Line = Record<string, unknown>;

/** The JSON lines of PM2's out log files (every line written there must parse). */
function outLines(): Line[] {
  return pm2
    .outLog()
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Line);
}

/** Access lines and access records for `/items/<id>`, id in [from, to). */
function accessIds(from: number, to: number): { lines: number[]; records: number[] } {
  const inRange = (path: unknown): number | undefined => {
    const match = typeof path === 'string' ? /^\/items\/(\d+)$/.exec(path) : null;
    const id = match ? Number(match[1]) : NaN;
    return id >= from && id < to ? id : undefined;
  };
  const lines = outLines()
    .filter((line) => line.msg === 'request')
    .map((line) => inRange(line.path))
    .filter((id): id is number => id !== undefined);
  const records = receiver.logs
    .filter((record) => record.body === 'request' && record.resource['service.name'] === SERVICE)
    .map((record) => inRange(record.attributes.path))
    .filter((id): id is number => id !== undefined);
  return { lines, records };
}

/**
 * Sends GET /items/<id> for every id in [from, to), `concurrency` at a time;
 * returns the ids answered 200. `during` runs alongside; the last `held` ids
 * wait for it to finish, so that some requests come after it.
 */
async function hit(from: number, to: number, concurrency = 8, during?: (answeredSoFar: () => number) => Promise<unknown>, held = 0): Promise<{ answered: number[]; failed: string[] }> {
  const answered: number[] = [];
  const failed: string[] = [];
  let next = from;
  const done = during?.(() => answered.length);
  const worker = async (): Promise<void> => {
    while (next < to) {
      const id = next++;
      if (id >= to - held) await done;
      try {
        const res = await get(port, `/items/${id}`);
        if (res.status === 200) answered.push(id);
        else failed.push(`${id}: ${res.status} ${res.body}`);
      } catch (error) {
        failed.push(`${id}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  };
  await Promise.all([...Array.from({ length: concurrency }, worker), done]);
  return { answered, failed };
}

function exactlyOnce(ids: number[], expected: number[]): void {
  expect(ids.length).toBe(expected.length);
  expect(new Set(ids)).toEqual(new Set(expected));
}

test('a line leads to its trace: the record and the access line carry the server span’s trace and span ids', async () => {
  expect((await get(port, '/_test/log?marker=correlate')).status).toBe(200);
  const [record] = (await receiver.waitForLogs((logs) => logs.some((r) => r.attributes.marker === 'correlate'), 20_000)).filter(
    (r) => r.attributes.marker === 'correlate',
  );
  const spans = await receiver.waitFor((all) => all.some((s) => s.kind === 2 && s.traceId === record?.traceId), 20_000);
  const span = spans.find((s) => s.kind === 2 && s.traceId === record?.traceId);
  expect(span?.attributes['url.path']).toBe('/_test/log');
  expect(record).toMatchObject({ spanId: span?.spanId, severityText: 'info', body: 'test log line' });
  expect(record?.resource).toMatchObject({ 'service.name': SERVICE, 'pm2.app.name': APP });

  const access = await waitUntil(
    'the access line in PM2’s out log',
    () => outLines().find((line) => line.msg === 'request' && line.query === 'marker=correlate'),
    20_000,
  );
  expect(access).toMatchObject({ trace_id: span?.traceId, span_id: span?.spanId, trace_flags: '01', route: '/_test/log', status: 200, method: 'GET' });
  const logged = outLines().find((line) => line.marker === 'correlate');
  expect(logged).toMatchObject({ trace_id: span?.traceId, span_id: span?.spanId });
});

test('1,000 requests through a pm2 reload: 1,000 access lines in PM2’s log files and 1,000 access records, none twice', async () => {
  const from = 100_000;
  const to = from + 1000;
  const { answered, failed } = await hit(from, to, 8, async (answeredSoFar) => {
    await waitUntil('100 requests answered', () => answeredSoFar() >= 100, 30_000, 10);
    await pm2.run(['reload', APP]);
  }, 100);
  expect(failed).toEqual([]);
  expect(answered).toHaveLength(1000);
  await waitUntil(() => `1000 access lines and records, got ${JSON.stringify(Object.values(accessIds(from, to)).map((ids) => ids.length))}`, () => {
    const { lines, records } = accessIds(from, to);
    return lines.length >= 1000 && records.length >= 1000;
  }, 60_000);
  const { lines, records } = accessIds(from, to);
  exactlyOnce(lines, answered);
  exactlyOnce(records, answered);
  // Through the reload: lines from the two old workers and the new ones (the last 100 requests waited for it).
  const pids = new Set(
    outLines()
      .filter((line) => line.msg === 'request' && typeof line.path === 'string' && /^\/items\/1\d{5}$/.test(line.path))
      .map((line) => line.pid),
  );
  expect(pids.size).toBeGreaterThanOrEqual(4);
});

test('hostile input never breaks a line: quotes, backslashes, non-UTF-8 bytes, a huge user agent, an encoded CR/LF', async () => {
  const hostile = [
    Buffer.concat([Buffer.from('GET /items/7?q=%22a%5Cb%22 HTTP/1.1\r\nHost: x\r\nUser-Agent: "quoted\\" \\\\back '), Buffer.from([0xff, 0xfe, 0xc3, 0x28]), Buffer.from('\r\nConnection: close\r\n\r\n')]),
    `GET /items/8 HTTP/1.1\r\nHost: x\r\nUser-Agent: ${'u'.repeat(40_000)}\r\nConnection: close\r\n\r\n`,
    'GET /no/such%0D%0A%7B%22level%22:%22error%22%7D HTTP/1.1\r\nHost: x\r\nUser-Agent: a\\"}{\r\nConnection: close\r\n\r\n',
    `GET /items/9?token=${'s'.repeat(20)}&password=hunter2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer hunter2\r\nCookie: sid=hunter2\r\nConnection: close\r\n\r\n`,
  ];
  for (const request of hostile) expect((await rawRequest(port, request)).error).toBeUndefined();
  const lines = await waitUntil('the four access lines', () => {
    const found = outLines().filter((line) => line.msg === 'request' && /^\/(items\/[789]|no\/such)/.test(String(line.path)));
    return found.length >= 4 ? found : undefined;
  }, 20_000);
  expect(lines.find((line) => String(line.path).startsWith('/no/such'))).toMatchObject({ path: '/no/such%0D%0A%7B%22level%22:%22error%22%7D', status: 404 });
  const huge = lines.find((line) => line.path === '/items/8');
  expect(String(huge?.user_agent).length).toBeLessThanOrEqual(513);
  expect(lines.find((line) => line.path === '/items/9')?.query).toBe('token=[Redacted]&password=[Redacted]');
  // Every line of every log file parses (outLines throws otherwise), and no secret is in any.
  for (const text of [pm2.outLog(), pm2.errLog()]) {
    for (const line of text.split('\n').filter((l) => l !== '' && l.startsWith('{'))) expect(() => JSON.parse(line) as unknown).not.toThrow();
    expect(text).not.toContain('hunter2');
  }
  expect(pm2.outLog().split('\n').every((line) => line === '' || line.startsWith('{'))).toBe(true);
});

test('OTEL_LOGS_EXPORTER=none sends no record: the spans flushed at the same stop arrive, no record does', async () => {
  const name = 'e2e-logs-none';
  const service = 'e2e-logs-none-service';
  const nonePort = await startApp(
    pm2,
    name,
    {
      ENABLE_TEST_ROUTES: 'true',
      OTEL_SERVICE_NAME: service,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      OTEL_LOGS_EXPORTER: 'none',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    },
    1,
  );
  expect((await get(nonePort, '/_test/log?marker=none')).status).toBe(200);
  await pm2.run(['delete', name]);
  await receiver.waitFor((spans) => spans.some((s) => s.resource['service.name'] === service && s.attributes['url.path'] === '/_test/log'), 20_000);
  expect(receiver.logs.filter((r) => r.resource['service.name'] === service)).toHaveLength(0);
  expect(outLines().some((line) => line.marker === 'none')).toBe(true);
});

test('through an outage each worker holds more log records than the SDK’s 2,048 by default: 5,000 requests, every record delivered once when the collector is back', async () => {
  // The access log makes one record a request, as many as spans: the ecosystem
  // file holds 8,192 of each a worker (OTEL_BLRP_MAX_QUEUE_SIZE, like
  // OTEL_BSP_MAX_QUEUE_SIZE); at the SDK's 2,048 each worker would drop ~450 here.
  const from = 300_000;
  const to = from + 5000;
  receiver.setFailure('unavailable');
  let answered: number[];
  try {
    const result = await hit(from, to);
    expect(result.failed).toEqual([]);
    answered = result.answered;
  } finally {
    receiver.setFailure('none');
  }
  expect(answered).toHaveLength(5000);
  await waitUntil(() => `5000 access records, got ${accessIds(from, to).records.length}`, () => accessIds(from, to).records.length >= 5000, 60_000);
  exactlyOnce(accessIds(from, to).records, answered);
  // Each worker took more than 2,048 of them, and none reported a drop.
  const perWorker = new Map<unknown, number>();
  for (const line of outLines()) if (line.msg === 'request' && typeof line.path === 'string' && /^\/items\/3\d{5}$/.test(line.path)) perWorker.set(line.pid, (perWorker.get(line.pid) ?? 0) + 1);
  expect(perWorker.size).toBe(2);
  expect([...perWorker.values()].every((n) => n > 2048)).toBe(true);
  expect(pm2.outLog() + pm2.errLog()).not.toMatch(/dropped [1-9]\d* log records/);
});

test('pm2 stop right after traffic loses no line and no record', async () => {
  const from = 200_000;
  const to = from + 300;
  const { answered } = await hit(from, to);
  expect(answered).toHaveLength(300);
  await pm2.run(['stop', APP]);
  await waitUntil(() => `300 access lines and records, got ${JSON.stringify(Object.values(accessIds(from, to)).map((ids) => ids.length))}`, () => {
    const { lines, records } = accessIds(from, to);
    return lines.length >= 300 && records.length >= 300;
  }, 30_000);
  const { lines, records } = accessIds(from, to);
  exactlyOnce(lines, answered);
  exactlyOnce(records, answered);
});
