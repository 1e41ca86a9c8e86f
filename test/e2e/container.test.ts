/**
 * The kit as the Dockerfile packs and runs it, without Docker (no image
 * registry is reachable here): the Dockerfile's steps done in a temp dir —
 * a production install (`npm ci --omit=dev`) beside the built `dist/`,
 * `package.json` and `ecosystem.config.js` — then its command,
 * `pm2-runtime start ecosystem.config.js`, in the foreground. `docker stop`
 * sends SIGTERM to it: every worker drains and flushes, and it exits 0.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startReceiver, type OtlpReceiver } from '../helpers/otlpReceiver';
import { alive, cleanEnv, freePort, ROOT } from '../helpers/pm2';
import { get } from '../helpers/load';

jest.setTimeout(180_000);

const APP = 'e2e-container';
const REQUESTS = 20;

let receiver: OtlpReceiver;
let image: string;
let runtime: ChildProcess | undefined;
let output = '';

function run(command: string, args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env: cleanEnv(), timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve();
    });
  });
}

/** The runtime's child processes (its workers), from /proc. */
function childrenOf(pid: number): number[] {
  const tasks = path.join('/proc', String(pid), 'task');
  return fs
    .readdirSync(tasks)
    .flatMap((task) => fs.readFileSync(path.join(tasks, task, 'children'), 'utf8').trim().split(/\s+/))
    .filter(Boolean)
    .map(Number);
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${output.slice(-3000)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

beforeAll(async () => {
  receiver = await startReceiver();
  image = fs.mkdtempSync(path.join(os.tmpdir(), 'kit-image-'));
  for (const file of ['package.json', 'package-lock.json', 'ecosystem.config.js']) fs.copyFileSync(path.join(ROOT, file), path.join(image, file));
  fs.cpSync(path.join(ROOT, 'dist'), path.join(image, 'dist'), { recursive: true });
  await run('npm', ['ci', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund'], image);
});

afterAll(async () => {
  if (runtime?.pid !== undefined && alive(runtime.pid)) {
    const workers = childrenOf(runtime.pid);
    runtime.kill('SIGKILL');
    for (const pid of workers) if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  await receiver?.close();
  if (image) fs.rmSync(image, { recursive: true, force: true });
});

test('the production install leaves the build and test tools out', () => {
  // Some dev dependencies are also needed at run time by a dependency (@grpc/grpc-js); these are not.
  for (const tool of ['typescript', 'jest', 'ts-jest', 'eslint', 'fast-check']) expect([tool, fs.existsSync(path.join(image, 'node_modules', tool))]).toEqual([tool, false]);
});

test('pm2-runtime serves traced requests, and SIGTERM drains, flushes and exits 0', async () => {
  const port = await freePort();
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pm2-runtime-'));
  runtime = spawn(process.execPath, [path.join(image, 'node_modules/pm2/bin/pm2-runtime'), 'start', 'ecosystem.config.js'], {
    cwd: image,
    env: cleanEnv({
      PM2_HOME: home,
      APP_NAME: APP,
      HOST: '127.0.0.1',
      PORT: String(port),
      WEB_CONCURRENCY: '2',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
      // Only the flush at stop can deliver these spans.
      OTEL_BSP_SCHEDULE_DELAY: '60000',
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  runtime.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  runtime.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => runtime?.once('exit', (code, signal) => resolve({ code, signal })));
  const pid = runtime.pid as number;

  try {
    const workers = await waitFor('two online workers', async () => {
      const children = childrenOf(pid);
      return children.length === 2 && (await get(port, '/readyz')).status === 200 ? children : undefined;
    }, 30_000);
    for (let i = 0; i < REQUESTS; i++) expect((await get(port, `/items/${i}`)).status).toBe(200);

    runtime.kill('SIGTERM');
    expect(await exited).toEqual({ code: 0, signal: null });
    expect(workers.filter(alive)).toEqual([]);

    const spans = receiver.spans.filter((s) => s.kind === 2 && s.attributes['http.route'] === '/items/:id');
    expect(spans.map((s) => s.attributes['url.path']).sort()).toEqual(Array.from({ length: REQUESTS }, (_, i) => `/items/${i}`).sort());
    expect(new Set(spans.map((s) => s.resource['service.name']))).toEqual(new Set([APP]));
    expect(output).toContain('PM2 successfully stopped');
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});
