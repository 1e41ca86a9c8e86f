/**
 * The Prometheus endpoint's merge and fan-out in-process: names and units,
 * one HELP/TYPE per family with its lines contiguous, `target_info` per
 * worker, `kit_worker_up` 0 for a worker that does not answer in time, stale
 * registry entries pruned. Other workers are stand-ins (a small HTTP server
 * registered under the pid of a live process, this test's parent).
 * The end-to-end behaviour under PM2 is in `test/e2e/prometheus.test.ts`.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { createPrometheusReader, readRegistry, type ClusterPrometheusReader } from '../../otel/prometheus';
import { distinctWorkerIds, mergeExpositions, parseFamilies, prometheusUnit, type WorkerExposition } from '../../otel/prometheusExposition';
import { groupingViolations, PROMTOOL_BIN, promtoolCheck, sampleValues } from '../helpers/prometheus';
import { freePort } from '../helpers/pm2';

const WORKER_A = `# HELP target_info Target metadata
# TYPE target_info gauge
target_info{service_name="svc",service_instance_id="a",process_pid="101"} 1
# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# UNIT http_server_request_duration_seconds seconds
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_count{http_route="/items/:id",service_instance_id="a"} 3
http_server_request_duration_seconds_sum{http_route="/items/:id",service_instance_id="a"} 0.03
http_server_request_duration_seconds_bucket{http_route="/items/:id",service_instance_id="a",le="0.005"} 1
http_server_request_duration_seconds_bucket{http_route="/items/:id",service_instance_id="a",le="+Inf"} 3

# HELP only_a_total Only in a.
# TYPE only_a_total counter
only_a_total{service_instance_id="a"} 7
`;

const WORKER_B = `# HELP target_info Target metadata
# TYPE target_info gauge
target_info{service_name="svc",service_instance_id="b",process_pid="102"} 1
# HELP queue_depth Only in the second worker.
# TYPE queue_depth gauge
queue_depth{service_instance_id="b"} 1
# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# UNIT http_server_request_duration_seconds seconds
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_count{http_route="/items/:id",service_instance_id="b"} 5
http_server_request_duration_seconds_sum{http_route="/items/:id",service_instance_id="b"} 0.05
http_server_request_duration_seconds_bucket{http_route="/items/:id",service_instance_id="b",le="0.005"} 2
http_server_request_duration_seconds_bucket{http_route="/items/:id",service_instance_id="b",le="+Inf"} 5
# HELP only_a_total Redefined with another type.
# TYPE only_a_total gauge
only_a_total{service_instance_id="b"} 1
`;

describe('prometheusUnit', () => {
  test.each([
    ['s', false, 'seconds'],
    ['ms', false, 'milliseconds'],
    ['By', false, 'bytes'],
    ['By/s', false, 'bytes_per_second'],
    ['{request}', false, ''],
    ['{span}', false, ''],
    ['1', true, 'ratio'],
    ['1', false, ''],
    ['1/s', false, 'per_second'],
    ['%', true, 'percent'],
    ['', false, ''],
  ])('maps %j (gauge: %s) to %j', (unit, gauge, expected) => {
    expect(prometheusUnit(unit, gauge)).toBe(expected);
  });
});

describe('mergeExpositions', () => {
  const merged = mergeExpositions([
    { labels: { service_instance_id: 'a', process_pid: '101' }, text: WORKER_A },
    { labels: { service_instance_id: 'b', process_pid: '102' }, text: WORKER_B },
    { labels: { service_instance_id: 'c', process_pid: '103' }, text: undefined, error: 'no answer within 500 ms' },
  ]);

  test('keeps each family contiguous with one HELP and one TYPE', () => {
    expect(groupingViolations(merged.text)).toEqual([]);
    expect(merged.text.match(/^# TYPE http_server_request_duration_seconds /gm)).toHaveLength(1);
    expect(merged.text.match(/^# HELP target_info /gm)).toHaveLength(1);
  });

  test('has every worker\'s series and one target_info line per worker', () => {
    expect(sampleValues(merged.text, 'http_server_request_duration_seconds_count')).toEqual([3, 5]);
    expect(sampleValues(merged.text, 'target_info').length).toBe(2);
    expect(sampleValues(merged.text, 'queue_depth')).toEqual([1]);
  });

  test('marks each worker up or not, and says why one is not', () => {
    expect(sampleValues(merged.text, 'kit_worker_up', { service_instance_id: 'a' })).toEqual([1]);
    expect(sampleValues(merged.text, 'kit_worker_up', { service_instance_id: 'b' })).toEqual([1]);
    expect(sampleValues(merged.text, 'kit_worker_up', { service_instance_id: 'c', process_pid: '103' })).toEqual([0]);
    expect(merged.text).toContain('# worker c: no answer within 500 ms');
  });

  test('leaves out the samples of a worker that disagrees on a family\'s type, and says so', () => {
    expect(merged.conflicts).toEqual(['only_a_total (counter and gauge)']);
    expect(sampleValues(merged.text, 'only_a_total')).toEqual([7]);
  });

  test('parses back into the same families', () => {
    const names = parseFamilies(merged.text).map((f) => f.name);
    expect(names).toEqual(['target_info', 'http_server_request_duration_seconds', 'only_a_total', 'queue_depth', 'kit_worker_up']);
  });

  (PROMTOOL_BIN === undefined ? test.skip : test)('passes promtool check metrics', async () => {
    // promtool prints nothing for a clean exposition (naming and unit conventions included).
    expect(await promtoolCheck(merged.text)).toBe('');
  });
});

describe('distinctWorkerIds', () => {
  test('gives workers that share a service.instance.id distinct labels, in their series too', () => {
    const pinned = (pid: string): WorkerExposition => ({
      labels: { service_instance_id: 'pinned', process_pid: pid },
      text: WORKER_A.replace(/service_instance_id="a"/g, 'service_instance_id="pinned"'),
    });
    const workers = [pinned('101'), pinned('102'), { labels: { service_instance_id: 'c', process_pid: '103' }, text: undefined }];
    expect(distinctWorkerIds(workers)).toEqual(['pinned']);
    const merged = mergeExpositions(workers).text;
    expect(sampleValues(merged, 'http_server_request_duration_seconds_count', { service_instance_id: 'pinned-101' })).toEqual([3]);
    expect(sampleValues(merged, 'http_server_request_duration_seconds_count', { service_instance_id: 'pinned-102' })).toEqual([3]);
    expect(sampleValues(merged, 'kit_worker_up', { service_instance_id: 'pinned-102' })).toEqual([1]);
    expect(sampleValues(merged, 'kit_worker_up', { service_instance_id: 'c' })).toEqual([0]);
    expect(merged).not.toContain('"pinned"');
  });
});

describe('ClusterPrometheusReader', () => {
  let dir: string;
  let port: number;
  let provider: MeterProvider;
  let reader: ClusterPrometheusReader;
  const servers: http.Server[] = [];

  /** A stand-in worker on a loopback port, registered under `pid`. */
  async function fakeWorker(pid: number, handler: http.RequestListener): Promise<number> {
    const server = http.createServer(handler);
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const workerPort = (server.address() as AddressInfo).port;
    fs.writeFileSync(path.join(dir, `${pid}.json`), JSON.stringify({ pid, port: workerPort, workerId: `fake-${pid}` }));
    return workerPort;
  }

  async function scrape(headers: Record<string, string> = {}): Promise<{ status: number; body: string; ms: number }> {
    const started = Date.now();
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { headers });
    return { status: res.status, body: await res.text(), ms: Date.now() - started };
  }

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prom-registry-'));
    port = await freePort();
    reader = createPrometheusReader({ host: '127.0.0.1', port, registryDir: dir, workerTimeoutMs: 500 });
    provider = new MeterProvider({
      resource: resourceFromAttributes({ 'service.name': 'unit-svc', 'service.instance.id': 'self-id', 'process.pid': process.pid }),
      readers: [reader],
    });
    const meter = provider.getMeter('test-meter', '1.2.3');
    const duration = meter.createHistogram('http.server.request.duration', { unit: 's', description: 'Duration of HTTP server requests.' });
    duration.record(0.002, { 'http.route': '/items/:id', 'http.request.method': 'GET' });
    duration.record(0.2, { 'http.route': '/items/:id', 'http.request.method': 'GET' });
    meter.createCounter('spans.dropped', { unit: '{span}', description: 'Spans dropped.' }).add(4);
    meter.createUpDownCounter('http.server.active_requests', { unit: '{request}' }).add(2);
    await reader.ready();
  });

  afterAll(async () => {
    await provider.shutdown();
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('registers itself in the registry directory', () => {
    const entries = readRegistry(dir);
    expect(entries).toEqual([{ pid: process.pid, port: reader.privatePort(), workerId: 'self-id' }]);
  });

  test('serves names with unit suffixes, _total for counters, the worker label and target_info', async () => {
    const { status, body } = await scrape();
    expect(status).toBe(200);
    expect(body).toContain('# TYPE http_server_request_duration_seconds histogram');
    expect(sampleValues(body, 'http_server_request_duration_seconds_count', { service_instance_id: 'self-id', http_route: '/items/:id' })).toEqual([2]);
    expect(sampleValues(body, 'http_server_request_duration_seconds_bucket', { le: '+Inf' })).toEqual([2]);
    expect(sampleValues(body, 'spans_dropped_total', { service_instance_id: 'self-id' })).toEqual([4]);
    expect(body).toContain('# TYPE http_server_active_requests gauge');
    expect(sampleValues(body, 'target_info', { service_instance_id: 'self-id', service_name: 'unit-svc' })).toEqual([1]);
    expect(sampleValues(body, 'kit_worker_up', { service_instance_id: 'self-id', process_pid: String(process.pid) })).toEqual([1]);
    expect(groupingViolations(body)).toEqual([]);
  });

  (PROMTOOL_BIN === undefined ? test.skip : test)('serves an exposition promtool accepts', async () => {
    expect(await promtoolCheck((await scrape()).body)).toBe('');
  });

  test('answers 404 elsewhere', async () => {
    const res = await fetch(`http://127.0.0.1:${port}/other`);
    expect(res.status).toBe(404);
  });

  test('merges another worker\'s exposition, and marks a worker that does not answer in time as not up', async () => {
    const other = process.ppid; // a live process that is not this one
    await fakeWorker(other, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'x-kit-worker-pid': String(other) });
      res.end(WORKER_B.replace(/only_a_total.*\n/g, '').replace(/# (HELP|TYPE) only_a_total.*\n/g, ''));
    });
    const merged = await scrape();
    expect(sampleValues(merged.body, 'http_server_request_duration_seconds_count', { service_instance_id: 'b' })).toEqual([5]);
    expect(sampleValues(merged.body, 'http_server_request_duration_seconds_count', { service_instance_id: 'self-id' })).toEqual([2]);
    expect(sampleValues(merged.body, 'kit_worker_up', { service_instance_id: `fake-${other}` })).toEqual([1]);
    expect(sampleValues(merged.body, 'target_info')).toHaveLength(2);
    expect(groupingViolations(merged.body)).toEqual([]);

    // Now the same worker hangs: the scrape still answers, within the worker deadline.
    await new Promise((resolve) => servers.pop()!.close(resolve));
    await fakeWorker(other, () => undefined); // never answers
    const slow = await scrape();
    expect(slow.status).toBe(200);
    expect(sampleValues(slow.body, 'kit_worker_up', { service_instance_id: `fake-${other}` })).toEqual([0]);
    expect(slow.body).toContain('no answer within 500 ms');
    expect(sampleValues(slow.body, 'kit_worker_up', { service_instance_id: 'self-id' })).toEqual([1]);
    expect(slow.ms).toBeLessThan(5000);
  });

  test('answers within the scrape timeout Prometheus announces', async () => {
    const slow = await scrape({ 'x-prometheus-scrape-timeout-seconds': '0.3' });
    expect(slow.body).toContain('no answer within 100 ms');
  });

  test('drops entries of dead processes and of ports that another process answers', async () => {
    const dead = 2 ** 22 + 12345; // above Linux's pid_max: never alive
    fs.writeFileSync(path.join(dir, `${dead}.json`), JSON.stringify({ pid: dead, port: 1, workerId: 'dead' }));
    // The live parent pid again, but its port now answers for someone else.
    const other = process.ppid;
    await new Promise((resolve) => servers.pop()!.close(resolve));
    await fakeWorker(other, (_req, res) => res.writeHead(200, { 'x-kit-worker-pid': '1' }).end('x 1\n'));
    const { body } = await scrape();
    expect(body).not.toContain('dead');
    expect(body).not.toContain(`fake-${other}`);
    expect(fs.readdirSync(dir).sort()).toEqual([`${process.pid}.json`]);
  });

  test('registers while another process holds the scrape port, and takes the port once it is free', async () => {
    const otherDir = fs.mkdtempSync(path.join(os.tmpdir(), 'prom-registry-'));
    const busyPort = await freePort();
    const holder = http.createServer((_req, res) => res.end('someone else\n'));
    await new Promise<void>((resolve) => holder.listen(busyPort, '127.0.0.1', resolve));
    const lines: string[] = [];
    const second = createPrometheusReader({ host: '127.0.0.1', port: busyPort, registryDir: otherDir, report: (level, message) => lines.push(`${level} ${message}`) });
    const otherProvider = new MeterProvider({ readers: [second] });
    try {
      await second.ready();
      expect(fs.readdirSync(otherDir)).toEqual([`${process.pid}.json`]);
      expect(lines).toEqual([`warn Prometheus port 127.0.0.1:${busyPort} is in use by another process; retrying every 5 s`]);
      await new Promise((resolve) => holder.close(resolve));
      const deadline = Date.now() + 20_000;
      let body = '';
      while (!body.includes('kit_worker_up') && Date.now() < deadline) {
        body = await fetch(`http://127.0.0.1:${busyPort}/metrics`).then((r) => r.text(), () => '');
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      expect(body).toContain(`kit_worker_up{service_instance_id=`);
      expect(lines).toHaveLength(1);
    } finally {
      await otherProvider.shutdown();
      fs.rmSync(otherDir, { recursive: true, force: true });
    }
  }, 30_000);

  test('leaves the registry at shutdown', async () => {
    const otherDir = fs.mkdtempSync(path.join(os.tmpdir(), 'prom-registry-'));
    const second = createPrometheusReader({ host: '127.0.0.1', port: await freePort(), registryDir: otherDir });
    const otherProvider = new MeterProvider({ readers: [second] });
    await second.ready();
    expect(fs.readdirSync(otherDir)).toEqual([`${process.pid}.json`]);
    await otherProvider.shutdown();
    expect(fs.readdirSync(otherDir)).toEqual([]);
    fs.rmSync(otherDir, { recursive: true, force: true });
  });
});
