/**
 * The image, built from the repository's Dockerfile with podman and run: it
 * serves traced requests with the container's resource attributes, as a
 * non-root user on a read-only root filesystem; `podman stop` (SIGTERM)
 * drains, flushes every span and exits 0 within Docker's 10 s; the
 * HEALTHCHECK passes while serving and fails once stopping begins; and the
 * image holds no dev dependencies, tests, `.env` or npm credentials.
 *
 * No image registry is reachable here: the base is a local stand-in for
 * `node:24-bookworm-slim` (see `ensureNodeBase`), given through the
 * Dockerfile's NODE_IMAGE argument. npm's configuration reaches the build as
 * a build secret. Skipped (one line) only where podman cannot run and CI is
 * unset; in CI it must run.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { get } from '../helpers/load';
import { startReceiver, type OtlpReceiver } from '../helpers/otlpReceiver';
import { freePort, ROOT } from '../helpers/pm2';
import { parseResponse } from '../helpers/rawHttp';
import { buildImage, ensureNodeBase, npmBuildSecrets, podman, podmanUnavailable, ulimitFlags, walk, type BuildSecrets } from '../helpers/podman';

jest.setTimeout(180_000);

const unavailable = podmanUnavailable();
const skip = unavailable !== undefined && !process.env.CI;
if (skip) process.stderr.write(`container.test.ts skipped: ${unavailable} (with CI set it fails instead)\n`);

const APP = 'e2e-container';
const REQUESTS = 20;
const RUN_ID = `${process.pid}-${Date.now().toString(36)}`;
const IMAGE = `localhost/kit-app-test:${RUN_ID}`;
/** Docker's (and podman's) default stop timeout: SIGKILL after this. */
const STOP_TIMEOUT_S = 10;

let receiver: OtlpReceiver;
let secretsDir: string;
let secrets: BuildSecrets;
let baseImage: string;
const containers: string[] = [];

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, context: () => Promise<string> = async () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${(await context()).slice(-3000)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function logs(name: string): Promise<string> {
  const { stdout, stderr } = await podman(['logs', name], { allowFailure: true });
  return stdout + stderr;
}

/**
 * Runs the image the way a hardened deployment does: non-root (the image's
 * USER), read-only root filesystem (podman mounts a tmpfs on /tmp, where
 * PM2_HOME and the compile cache live), host network to reach the test's
 * receiver on loopback. Resolves once both workers are online and ready.
 */
async function runContainer(suffix: string, env: Record<string, string>): Promise<{ name: string; port: number }> {
  const name = `kit-e2e-${RUN_ID}-${suffix}`;
  const port = await freePort();
  const settings = {
    APP_NAME: APP,
    HOST: '127.0.0.1',
    PORT: String(port),
    WEB_CONCURRENCY: '2',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    ...env,
  };
  containers.push(name);
  await podman(['run', '-d', '--name', name, '--network=host', '--read-only', ...ulimitFlags(), ...Object.entries(settings).flatMap(([k, v]) => ['-e', `${k}=${v}`]), IMAGE]);
  await waitFor(
    'two online workers and /readyz',
    async () => {
      const output = await logs(name);
      const online = [0, 1].every((id) => output.includes(`App [${APP}:${id}] online`));
      return online && (await get(port, '/readyz')).status === 200 ? true : undefined;
    },
    60_000,
    () => logs(name),
  );
  return { name, port };
}

async function inspect(name: string, format: string): Promise<string> {
  return (await podman(['inspect', '--format', format, name])).stdout.trim();
}

/** A keep-alive connection, after one answered request: the worker holding it drains it at stop. */
async function keepAliveConnection(port: number): Promise<{ send(request: string): void; response(): Promise<string> }> {
  const socket = net.connect(port, '127.0.0.1');
  let received = '';
  let waiter: (() => void) | undefined;
  socket.setEncoding('latin1').on('data', (chunk: string) => {
    received += chunk;
    waiter?.();
  });
  socket.on('error', () => waiter?.());
  socket.on('close', () => waiter?.());
  const response = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no response, got ${JSON.stringify(received)}`)), 15_000);
      waiter = () => {
        if (!parseResponse(received, { closed: socket.destroyed }).complete && !socket.destroyed) return;
        clearTimeout(timer);
        const whole = received;
        received = '';
        resolve(whole);
      };
      waiter();
    });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write('GET /items/1 HTTP/1.1\r\nHost: kit\r\n\r\n');
  expect(parseResponse(await response(), { closed: false }).status).toBe(200);
  return { send: (request) => socket.write(request), response };
}

(skip ? describe.skip : describe)('the container image', () => {
  beforeAll(async () => {
    receiver = await startReceiver();
    secretsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kit-build-secrets-'));
    secrets = await npmBuildSecrets(secretsDir);
    baseImage = await ensureNodeBase();
    await buildImage(ROOT, IMAGE, { NODE_IMAGE: baseImage }, secrets);
    const size = Number(await inspect(IMAGE, '{{.Size}}'));
    const base = Number(await inspect(baseImage, '{{.Size}}'));
    const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(0)} MB`;
    process.stdout.write(`container image: ${mb(size)} (base ${mb(base)}, the kit's layers ${mb(size - base)})\n`);
  }, 1_200_000);

  afterAll(async () => {
    for (const name of containers) await podman(['rm', '-f', '-t', '0', name], { allowFailure: true });
    await podman(['image', 'unmount', IMAGE], { allowFailure: true });
    await podman(['rmi', '-f', IMAGE], { allowFailure: true });
    await receiver?.close();
    if (secretsDir) fs.rmSync(secretsDir, { recursive: true, force: true });
  });

  test('holds no dev dependencies, tests, .env or npm credentials', async () => {
    const root = (await podman(['image', 'mount', IMAGE])).stdout.trim();
    try {
      const app = path.join(root, 'app');
      for (const devOnly of ['typescript', 'jest', 'ts-jest', 'eslint', 'fast-check', 'supertest', 'autocannon', '@types/jest']) {
        expect([devOnly, fs.existsSync(path.join(app, 'node_modules', devOnly))]).toEqual([devOnly, false]);
      }
      expect(fs.readdirSync(app).sort()).toEqual(['dist', 'ecosystem.config.js', 'node_modules', 'package.json']);
      expect([...walk(path.join(app, 'dist'))].filter((file) => /\.test\.|(^|\/)test\//.test(file))).toEqual([]);

      // The npm secrets: no copy of the CA file, no npmrc with our settings,
      // in any file of the image (the build stage is not part of it).
      const caSize = secrets.caFile === undefined ? -1 : fs.statSync(secrets.caFile).size;
      const leaks: string[] = [];
      for (const file of walk(root)) {
        const full = path.join(root, file);
        const stat = fs.statSync(full);
        if (/(^|\/)\.?npmrc$/.test(file) && !file.includes('node_modules/')) leaks.push(file);
        if (stat.size === caSize && fs.readFileSync(full).equals(fs.readFileSync(secrets.caFile as string))) leaks.push(file);
        if (stat.size < 200e6 && fs.readFileSync(full).includes(secrets.marker)) leaks.push(file);
      }
      expect(leaks).toEqual([]);
    } finally {
      await podman(['image', 'unmount', IMAGE], { allowFailure: true });
    }
    const history = (await podman(['history', '--no-trunc', '--format', '{{.CreatedBy}}', IMAGE])).stdout;
    expect(history).not.toContain(secrets.marker);
    expect(history).not.toContain('BEGIN CERTIFICATE');
  });

  test('serves traced requests as non-root on a read-only root; podman stop flushes everything and exits 0', async () => {
    const { name, port } = await runContainer('serve', {
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=container-test,service.version=9.9.9',
      // Only the flush at stop can deliver these spans.
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    });
    const id = await inspect(name, '{{.Id}}');

    expect((await podman(['exec', name, 'id', '-u'])).stdout.trim()).toBe('1000');
    expect(await inspect(name, '{{.HostConfig.ReadonlyRootfs}}')).toBe('true');
    const write = await podman(['exec', name, 'touch', '/app/written'], { allowFailure: true });
    expect(write.stderr).toContain('Read-only file system');
    // PM2's home and Node's compile cache on the tmpfs: both worked.
    expect((await podman(['exec', name, 'ls', '/tmp/pm2/pm2.pid', '/tmp/node-compile-cache'])).code).toBe(0);

    for (let i = 0; i < REQUESTS; i++) expect((await get(port, `/items/${i}`)).status).toBe(200);

    const started = Date.now();
    await podman(['stop', '-t', String(STOP_TIMEOUT_S), name], { timeoutMs: 60_000 });
    const stopMs = Date.now() - started;
    process.stdout.write(`podman stop took ${stopMs} ms\n`);
    // SIGKILL after the timeout would leave 137.
    expect(await inspect(name, '{{.State.ExitCode}}')).toBe('0');
    const output = await logs(name);
    expect(output).toContain('PM2 successfully stopped');
    expect(output).not.toMatch(/compile cache|EROFS|read-only/i);

    // What must have arrived once the container stopped, one line per signal.
    const flushed: Array<[signal: string, check: () => void]> = [
      [
        'spans',
        () => {
          const spans = receiver.spans.filter((s) => s.kind === 2 && s.attributes['http.route'] === '/items/:id');
          expect(spans.map((s) => s.attributes['url.path']).sort()).toEqual(Array.from({ length: REQUESTS }, (_, i) => `/items/${i}`).sort());
          for (const span of spans) {
            expect(span.resource).toMatchObject({
              'service.name': APP,
              'service.version': '9.9.9',
              'deployment.environment.name': 'container-test',
              'container.id': id,
            });
          }
        },
      ],
      [
        'metrics',
        () => {
          // Cumulative counts (the last point of each worker's series): every
          // request counted once, on the container's resource.
          const points = receiver.metrics.filter((m) => m.name === 'http.server.request.duration' && m.attributes['http.route'] === '/items/:id');
          const last = new Map<string, number>();
          for (const point of points) {
            expect(point.resource).toMatchObject({ 'service.name': APP, 'container.id': id });
            const key = JSON.stringify([point.resource['service.instance.id'], point.attributes]);
            last.set(key, Math.max(last.get(key) ?? 0, point.count));
          }
          expect([...last.values()].reduce((sum, n) => sum + n, 0)).toBe(REQUESTS);
        },
      ],
      [
        'logs',
        () => {
          // One access record per request, each once, linked to its server span.
          const records = receiver.logs.filter((r) => r.body === 'request' && r.attributes.route === '/items/:id');
          expect(records.map((r) => r.attributes.path).sort()).toEqual(Array.from({ length: REQUESTS }, (_, i) => `/items/${i}`).sort());
          const spanIds = new Set(receiver.spans.map((s) => s.spanId));
          for (const record of records) {
            expect(record.resource).toMatchObject({ 'service.name': APP, 'container.id': id });
            expect(spanIds.has(record.spanId)).toBe(true);
          }
        },
      ],
    ];
    for (const [, check] of flushed) check();
  });

  test('the HEALTHCHECK passes while serving and fails once stopping begins', async () => {
    // Drain long enough for the check to run while a request is held open.
    const { name, port } = await runContainer('health', { DRAIN_TIMEOUT_MS: '6000', OTEL_TRACES_EXPORTER: 'none' });
    expect((await podman(['healthcheck', 'run', name], { allowFailure: true })).code).toBe(0);

    const connection = await keepAliveConnection(port);
    connection.send('GET /items/2 HTTP/1.1\r\nHost: kit\r\n'); // headers not finished: in flight
    // What `podman stop` and Kubernetes send first; `podman stop` itself
    // marks the container as stopping, and podman then runs no checks in it.
    await podman(['kill', '--signal', 'SIGTERM', name]);
    // The workers get SIGINT from pm2-runtime a moment after; the request held open keeps the container up.
    const check = await waitFor(
      'the health check to fail',
      async () => {
        const result = await podman(['healthcheck', 'run', name], { allowFailure: true });
        return result.code === 0 ? undefined : result;
      },
      5000,
      () => logs(name),
    );
    expect([check.code, check.stdout.trim()]).toEqual([1, 'unhealthy']);

    // The request in flight is still answered, and told the connection closes.
    connection.send('\r\n');
    const answer = parseResponse(await connection.response(), { closed: true });
    expect([answer.status, answer.headers.connection]).toEqual([200, 'close']);
    await podman(['wait', name], { timeoutMs: 30_000 });
    expect(await inspect(name, '{{.State.ExitCode}}')).toBe('0');
  });
});
