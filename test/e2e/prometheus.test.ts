/**
 * The Prometheus endpoint under a real PM2 daemon, scraped every second by a
 * real Prometheus server: one target for the whole app whose sums over
 * workers are exact, through `pm2 scale`, `pm2 reload` under load, a worker
 * killed with SIGKILL, and a worker whose event loop is blocked.
 */
import fs from 'node:fs';
import http from 'node:http';
import { defaultRegistryDir } from '../../otel/prometheus';
import { get, startLoad } from '../helpers/load';
import { freePort, startApp, startPm2, type Pm2 } from '../helpers/pm2';
import { groupingViolations, PROMETHEUS_BIN, PROMTOOL_BIN, promtoolCheck, sampleValues, startPrometheus, type Prometheus, type PromSample } from '../helpers/prometheus';

jest.setTimeout(180_000);

const APP = 'e2e-prometheus';
const ROUTE = '{http_route="/items/:id"}';
const COUNT = `http_server_request_duration_seconds_count${ROUTE}`;
const missing = PROMETHEUS_BIN === undefined && process.env.CI === undefined;
if (missing) process.stderr.write('test/e2e/prometheus.test.ts skipped: no prometheus binary (apt-get install -y prometheus); in CI it must run\n');

let pm2: Pm2;
let prometheus: Prometheus;
let appPort: number;
let metricsPort: number;
let sent = 0;

/** Requests on fresh connections, so that PM2's round-robin spreads them over the workers. */
async function hit(count: number): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const res = await get(appPort, `/items/${sent + 1}`);
    expect(res.status).toBe(200);
    sent += 1;
  }
}

function total(samples: PromSample[]): number {
  return samples.reduce((sum, s) => sum + s.value, 0);
}

/** One scrape of the app's target on a fresh connection. */
function scrape(timeoutMs: number): Promise<{ body: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: metricsPort, path: '/metrics', agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => (res.statusCode === 200 ? resolve({ body, ms: Date.now() - started }) : reject(new Error(`HTTP ${res.statusCode}: ${body}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

(missing ? describe.skip : describe)('Prometheus endpoint under PM2', () => {
  beforeAll(async () => {
    pm2 = await startPm2();
    metricsPort = await freePort();
    appPort = await startApp(pm2, APP, {
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_METRICS_EXPORTER: 'prometheus',
      OTEL_EXPORTER_PROMETHEUS_HOST: '127.0.0.1',
      OTEL_EXPORTER_PROMETHEUS_PORT: String(metricsPort),
      ENABLE_TEST_ROUTES: 'true',
    });
    prometheus = await startPrometheus([`127.0.0.1:${metricsPort}`]);
  });

  afterAll(async () => {
    await prometheus?.stop();
    await pm2?.kill();
    if (metricsPort !== undefined) fs.rmSync(defaultRegistryDir(metricsPort), { recursive: true, force: true });
  });

  test('sums over 2 workers are exact, with one series per worker', async () => {
    await prometheus.waitFor('sum(kit_worker_up)', (r) => total(r) === 2);
    await hit(40);
    await prometheus.waitFor(`sum(${COUNT})`, (r) => total(r) === 40);
    // Scrapes (Prometheus's, and the workers' to each other) are not app requests: not counted.
    expect(total(await prometheus.query('sum(http_server_request_duration_seconds_count)'))).toBe(40);
    const perWorker = await prometheus.query(`sum by (service_instance_id) (${COUNT})`);
    expect(perWorker).toHaveLength(2);
    expect(perWorker.every((s) => s.value > 0)).toBe(true);
    // target_info joins each worker's series to its resource (pid, PM2 instance).
    const info = await prometheus.query(`sum by (pm2_instance) (${COUNT} * on (service_instance_id) group_left (pm2_instance) target_info)`);
    expect(info.map((s) => s.metric.pm2_instance).sort()).toEqual(['0', '1']);
    expect(total(info)).toBe(40);
    expect((await prometheus.query('up{job="kit"}')).map((s) => s.value)).toEqual([1]);
  });

  test('the README\'s dashboard queries answer', async () => {
    // The same PromQL as the table in README, "Metrics under PM2 / Prometheus".
    const withData = [
      'sum by (http_route) (rate(http_server_request_duration_seconds_count[1m]))',
      'histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket[1m])))',
      'sum(http_server_active_requests)',
      'max by (service_instance_id) (nodejs_eventloop_delay_p99_seconds)',
      'count(kit_worker_up == 1)',
    ];
    for (const promql of withData) await prometheus.waitFor(promql, (r) => r.length > 0);
    // No errors and no span exporter in this app: these only need to be valid.
    await prometheus.query('sum(rate(http_server_request_duration_seconds_count{http_response_status_code=~"5.."}[1m])) / sum(rate(http_server_request_duration_seconds_count[1m]))');
    await prometheus.query('sum(rate(otel_sdk_exporter_span_exported_total{error_type="dropped"}[5m]))');
  });

  test('the exposition has each family once and passes promtool', async () => {
    const { body } = await scrape(10_000);
    expect(groupingViolations(body)).toEqual([]);
    expect(body).toMatch(/^# TYPE http_server_request_duration_seconds histogram$/m);
    expect(body).toMatch(/^# TYPE nodejs_eventloop_delay_p99_seconds gauge$/m);
    expect(sampleValues(body, 'target_info')).toHaveLength(2);
    if (PROMTOOL_BIN !== undefined) expect(await promtoolCheck(body)).toBe('');
  });

  test('pm2 scale to 4: still exact, with series from 4 workers', async () => {
    await pm2.run(['scale', APP, '4']);
    await pm2.waitOnline(APP, 4);
    await prometheus.waitFor('sum(kit_worker_up)', (r) => total(r) === 4);
    const before = sent;
    await hit(40);
    await prometheus.waitFor(`sum(${COUNT})`, (r) => total(r) === sent);
    expect(sent).toBe(before + 40);
    const perWorker = await prometheus.waitFor(`sum by (service_instance_id) (${COUNT})`, (r) => r.length === 4);
    expect(perWorker.every((s) => s.value > 0)).toBe(true);
  });

  test('pm2 reload under load: every scrape succeeds and no counter goes backwards', async () => {
    const started = Date.now();
    const oldIds = new Set((await prometheus.query('kit_worker_up')).map((s) => s.metric.service_instance_id));
    const load = startLoad({ port: appPort, keepAliveClients: 2, oneShotClients: 2, firstId: 500_000 });
    await sleep(1500);
    await pm2.run(['reload', APP]);
    await pm2.waitOnline(APP, 4);
    // Until the new workers are all in the scrape, with load still on.
    await prometheus.waitFor('kit_worker_up', (r) => r.length === 4 && r.every((s) => !oldIds.has(s.metric.service_instance_id)));
    await sleep(2000);
    const result = await load.stop();
    expect(result.errors).toEqual([]);
    expect(result.failed).toBe(0);
    await sleep(2000); // one more scrape after the load
    const window = `${Math.ceil((Date.now() - started) / 1000) + 2}s`;
    // `up` is Prometheus's own: 0 for any failed scrape of the target.
    const up = await prometheus.query(`min_over_time(up{job="kit"}[${window}])`);
    expect(up.map((s) => s.value)).toEqual([1]);
    const scrapes = await prometheus.query(`count_over_time(up{job="kit"}[${window}])`);
    expect(scrapes[0]!.value).toBeGreaterThanOrEqual(5);
    // kit_worker_up is not checked here: on a loaded machine a starting
    // worker may honestly miss the deadline of one scrape (800 ms here).
    // Old and new workers of one slot overlapped with distinct series: none reset.
    const resets = await prometheus.query(`resets(http_server_request_duration_seconds_count[${window}]) > 0`);
    expect(resets.map((s) => s.metric)).toEqual([]);
    const series = await prometheus.query(`count(count by (service_instance_id) (last_over_time(${COUNT}[${window}])))`);
    expect(series[0]!.value).toBeGreaterThan(4); // old and new workers both reported during the window
  });

  test('a worker killed with SIGKILL is replaced, and its successor reports', async () => {
    const before = (await pm2.list()).filter((p) => p.name === APP);
    const victim = before[0]!;
    await prometheus.waitFor(`kit_worker_up{process_pid="${victim.pid}"}`, (r) => r.length === 1 && r[0]!.value === 1);
    process.kill(victim.pid, 'SIGKILL');
    const deadline = Date.now() + 30_000;
    let successor: number | undefined;
    while (successor === undefined && Date.now() < deadline) {
      const now = (await pm2.list()).find((p) => p.pm_id === victim.pm_id);
      if (now !== undefined && now.status === 'online' && now.pid > 0 && now.pid !== victim.pid) successor = now.pid;
      else await sleep(200);
    }
    expect(successor).toBeDefined();
    const [up] = await prometheus.waitFor(`kit_worker_up{process_pid="${successor}"}`, (r) => r.length === 1 && r[0]!.value === 1);
    await prometheus.waitFor(`kit_worker_up{process_pid="${victim.pid}"}`, (r) => r.length === 0);
    expect(fs.existsSync(`${defaultRegistryDir(metricsPort)}/${victim.pid}.json`)).toBe(false);
    const id = up!.metric.service_instance_id;
    for (let round = 0; round < 10; round += 1) {
      await hit(8);
      if ((await prometheus.query(`${COUNT.replace('}', `,service_instance_id="${id}"}`)}`)).length > 0) break;
      await sleep(1000);
    }
    await prometheus.waitFor(`sum(http_server_request_duration_seconds_count{service_instance_id="${id}"})`, (r) => total(r) > 0);
  });

  test('a worker whose event loop is blocked is marked not up, and the scrape answers in bounded time', async () => {
    await prometheus.waitFor('sum(kit_worker_up)', (r) => total(r) === 4);
    const blocked = JSON.parse((await get(appPort, '/_test/block?ms=10000')).body) as { pid: number };
    await sleep(200); // the block starts once the answer is sent
    // Three scrapes at once on fresh connections: the cluster hands at most
    // one to the blocked worker (it waits for it); the others answer.
    const started = Date.now();
    const answers = await Promise.allSettled([scrape(30_000), scrape(30_000), scrape(30_000)]);
    const fast = answers
      .filter((a): a is PromiseFulfilledResult<{ body: string; ms: number }> => a.status === 'fulfilled')
      .sort((a, b) => a.value.ms - b.value.ms)[0]?.value;
    expect(fast).toBeDefined();
    // The worker deadline is 2 s; generous room for a busy machine.
    expect(fast!.ms).toBeLessThan(6000);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(sampleValues(fast!.body, 'kit_worker_up', { process_pid: String(blocked.pid) })).toEqual([0]);
    const others = (await pm2.list()).filter((p) => p.name === APP && p.pid !== blocked.pid);
    for (const worker of others) expect(sampleValues(fast!.body, 'kit_worker_up', { process_pid: String(worker.pid) })).toEqual([1]);
    expect(fast!.body).toMatch(/# worker .*: no answer within 2000 ms/);
    expect(groupingViolations(fast!.body)).toEqual([]);
    // Once unblocked, it answers again.
    const until = Date.now() + 40_000;
    let last = '';
    while (Date.now() < until) {
      last = (await scrape(30_000)).body;
      if (sampleValues(last, 'kit_worker_up', { process_pid: String(blocked.pid) })[0] === 1) break;
      await sleep(500);
    }
    expect(sampleValues(last, 'kit_worker_up', { process_pid: String(blocked.pid) })).toEqual([1]);
  });
});
