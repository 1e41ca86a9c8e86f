/**
 * Metrics under a real PM2 daemon and a real OTLP receiver: each worker
 * writes its own series (its own service.instance.id, PM2's instance number
 * on the resource), the counts over workers add up to the requests sent, a
 * reload never lets two processes share an id, a stop flushes the last
 * interval, PM2's monitor shows the key figures, and hostile paths add no
 * series.
 */
import { startReceiver, type OtlpReceiver, type ReceivedMetric } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { get, startLoad } from '../helpers/load';

jest.setTimeout(180_000);

const APP = 'e2e-metrics';
const SERVICE = 'e2e-metrics-service';
const DURATION = 'http.server.request.duration';

let receiver: OtlpReceiver;
let pm2: Pm2;
let port: number;
/** Requests answered 200 on /items/:id by the app so far, over all tests. */
let itemsAnswered = 0;

function key(point: ReceivedMetric): string {
  return `${String(point.resource['service.instance.id'])} ${JSON.stringify(Object.entries(point.attributes).sort())}`;
}

/** The latest point of each series (cumulative temporality: the running totals). */
function latest(points: ReceivedMetric[]): ReceivedMetric[] {
  const byKey = new Map<string, ReceivedMetric>();
  for (const point of points) byKey.set(key(point), point);
  return [...byKey.values()];
}

function durations(metrics: ReceivedMetric[], service = SERVICE): ReceivedMetric[] {
  return latest(metrics.filter((m) => m.name === DURATION && m.resource['service.name'] === service));
}

/** Requests counted on route `/items/:id` with status 200, over every process. */
function itemCount(metrics: ReceivedMetric[], service = SERVICE): number {
  return durations(metrics, service)
    .filter((p) => p.attributes['http.route'] === '/items/:id' && p.attributes['http.response.status_code'] === 200)
    .reduce((total, p) => total + p.count, 0);
}

async function hit(count: number, from: number, target = port): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const res = await get(target, `/items/${from + i}`);
    expect(res.status).toBe(200);
    if (target === port) itemsAnswered += 1;
  }
}

/** Every service.instance.id maps to one process, across all data received. */
function pidsById(metrics: ReceivedMetric[]): Map<string, Set<unknown>> {
  const ids = new Map<string, Set<unknown>>();
  for (const m of metrics) {
    const id = String(m.resource['service.instance.id']);
    if (!ids.has(id)) ids.set(id, new Set());
    ids.get(id)?.add(m.resource['process.pid']);
  }
  return ids;
}

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
  port = await startApp(pm2, APP, {
    OTEL_SERVICE_NAME: SERVICE,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_METRIC_EXPORT_INTERVAL: '500',
    OTEL_BSP_SCHEDULE_DELAY: '200',
  });
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

test('each worker writes its own series, and the counts over workers add up to the requests sent', async () => {
  await hit(40, 1);
  const metrics = await receiver.waitForMetrics((all) => itemCount(all) === itemsAnswered, 30_000);
  const workers = (await pm2.list()).filter((p) => p.name === APP);
  const points = durations(metrics).filter((p) => p.attributes['http.route'] === '/items/:id');
  expect(new Set(points.map((p) => p.resource['process.pid']))).toEqual(new Set(workers.map((w) => w.pid)));
  expect(new Set(points.map((p) => p.resource['service.instance.id'])).size).toBe(2);
  expect(new Set(points.map((p) => p.resource['pm2.instance']))).toEqual(new Set([0, 1]));
  expect(points.every((p) => p.count > 0 && p.resource['pm2.app.name'] === APP)).toBe(true);
  for (const pids of pidsById(metrics).values()) expect(pids.size).toBe(1);
});

test("PM2's monitor shows each worker's request rate, latency, event-loop delay and telemetry health", async () => {
  const wanted = ['HTTP req/s', 'HTTP mean latency', 'HTTP active', 'Event loop delay p99', 'Heap used', 'Spans exported', 'Spans dropped', 'Spans held'];
  type Listed = { pm_id: number; name: string; pm2_env: { axm_monitor?: Record<string, { value: unknown; unit?: string }> } };
  let listed: Listed[] = [];
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    await hit(10, 10_000);
    const output = await pm2.run(['jlist']);
    listed = (JSON.parse(output.slice(output.indexOf('['))) as Listed[]).filter((p) => p.name === APP);
    const ready = listed.length === 2 && listed.every((p) => wanted.every((name) => p.pm2_env.axm_monitor?.[name] !== undefined) && Number(p.pm2_env.axm_monitor?.['Spans exported']?.value) > 0);
    if (ready) break;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  for (const worker of listed) {
    const monitor = worker.pm2_env.axm_monitor ?? {};
    expect(Object.keys(monitor)).toEqual(expect.arrayContaining(wanted));
    expect(monitor['HTTP req/s']).toMatchObject({ unit: 'req/s', value: expect.any(Number) });
    expect(monitor['Event loop delay p99']).toMatchObject({ unit: 'ms', value: expect.any(Number) });
    expect(Number(monitor['Spans exported']?.value)).toBeGreaterThan(0);
  }
  const described = await pm2.run(['describe', String(listed[0]?.pm_id)]);
  expect(described).toContain('Code metrics value');
  expect(described).toContain('HTTP req/s');
  expect(described).toContain('Spans exported');
});

test('2,000 distinct unmatched paths add no series', async () => {
  const sets = (metrics: ReceivedMetric[]): Set<string> => new Set(durations(metrics).map((p) => JSON.stringify(Object.entries(p.attributes).sort())));
  const notFound = (metrics: ReceivedMetric[]): number =>
    durations(metrics)
      .filter((p) => p.attributes['http.response.status_code'] === 404)
      .reduce((total, p) => total + p.count, 0);
  const sendNotFound = async (paths: string[]): Promise<void> => {
    // 16 at a time, each on a fresh connection.
    for (let i = 0; i < paths.length; i += 16) {
      const answers = await Promise.all(paths.slice(i, i + 16).map((path) => get(port, path)));
      for (const answer of answers) expect(answer.status).toBe(404);
    }
  };
  // The baseline: both workers have answered a 404.
  await sendNotFound(Array.from({ length: 10 }, (_, i) => `/baseline/${i}`));
  const before = await receiver.waitForMetrics((all) => notFound(all) >= 10, 30_000);
  const baseline = sets(before);
  expect(baseline).toContain(JSON.stringify(Object.entries({ 'http.request.method': 'GET', 'url.scheme': 'http', 'http.response.status_code': 404 }).sort()));

  const hostile = Array.from({ length: 2000 }, (_, i) => `/${i.toString(36)}/${'x'.repeat(i % 50)}/%2e%2e/${i}?q=${i}`);
  await sendNotFound(hostile);
  const after = await receiver.waitForMetrics((all) => notFound(all) >= 2010, 60_000);
  expect(sets(after)).toEqual(baseline);
  // No attribute value anywhere came from a raw path.
  expect(after.filter((m) => m.name === DURATION).some((m) => Object.values(m.attributes).some((v) => String(v).includes('xx')))).toBe(false);
});

test('through pm2 reload the old and the new workers never share a service.instance.id, and no count is lost', async () => {
  const before = await pm2.list();
  const oldPids = new Set(before.filter((p) => p.name === APP).map((p) => p.pid));
  const load = startLoad({ port, keepAliveClients: 2, oneShotClients: 2, firstId: 200_000, pauseMs: 5 });
  await new Promise((resolve) => setTimeout(resolve, 500));
  await pm2.run(['reload', APP]);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const result = await load.stop();
  expect(result.failed).toBe(0);
  itemsAnswered += result.ok;
  const workers = await pm2.waitOnline(APP, 2);
  const newPids = new Set(workers.map((p) => p.pid));
  expect([...newPids].some((pid) => oldPids.has(pid))).toBe(false);

  // Old workers flushed their totals at SIGINT; the new ones export on their interval.
  const metrics = await receiver.waitForMetrics((all) => itemCount(all) === itemsAnswered, 30_000);
  const ids = pidsById(metrics.filter((m) => m.resource['service.name'] === SERVICE));
  for (const [id, pids] of ids) expect([id, pids.size]).toEqual([id, 1]);
  const idsOf = (pids: Set<number>): Set<string> =>
    new Set([...ids].filter(([, p]) => [...p].some((pid) => pids.has(Number(pid)))).map(([id]) => id));
  const oldIds = idsOf(oldPids);
  const newIds = idsOf(newPids);
  expect(oldIds.size).toBe(2);
  expect(newIds.size).toBe(2);
  expect([...newIds].filter((id) => oldIds.has(id))).toEqual([]);
  // The same PM2 slots (NODE_APP_INSTANCE 0 and 1) carry new ids.
  const newPoints = durations(metrics).filter((p) => newPids.has(Number(p.resource['process.pid'])));
  expect(new Set(newPoints.map((p) => p.resource['pm2.instance']))).toEqual(new Set([0, 1]));
});

test('pm2 stop flushes the last interval', async () => {
  const app = 'e2e-metrics-stop';
  const stopPort = await startApp(pm2, app, {
    OTEL_SERVICE_NAME: app,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    // Nothing is exported on the timer within the test: only the shutdown flush delivers.
    OTEL_METRIC_EXPORT_INTERVAL: '60000',
  });
  await hit(30, 1, stopPort);
  expect(durations(receiver.metrics, app)).toHaveLength(0);
  await pm2.run(['stop', app]);
  const metrics = await receiver.waitForMetrics((all) => itemCount(all, app) >= 30, 20_000);
  expect(itemCount(metrics, app)).toBe(30);
  expect(new Set(durations(metrics, app).map((p) => p.resource['service.instance.id'])).size).toBe(2);
  await pm2.run(['delete', app]);
});
