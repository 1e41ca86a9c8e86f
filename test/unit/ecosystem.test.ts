/**
 * The PM2 declaration as PM2 reads it: `ecosystem.config.js` evaluated in a
 * fresh Node process with a given shell environment.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cleanEnv, ROOT } from '../helpers/pm2';

interface App {
  exec_mode: string;
  instances: number | string;
  node_args: string[];
  kill_timeout: number;
  pmx: boolean;
  trace: boolean;
  env: Record<string, string>;
}

function load(env: Record<string, string> = {}): { app?: App; error?: string } {
  const result = spawnSync(process.execPath, ['-e', "process.stdout.write(JSON.stringify(require('./ecosystem.config.js').apps[0]))"], {
    cwd: ROOT,
    env: cleanEnv({ ENV_FILE: '', ...env }),
    encoding: 'utf8',
  });
  if (result.status !== 0) return { error: /Error: (.*)/.exec(result.stderr)?.[1] ?? result.stderr };
  return { app: JSON.parse(result.stdout) as App };
}

test('declares a cluster of 2 instrumented workers by default', () => {
  const { app } = load();
  expect(app).toMatchObject({ exec_mode: 'cluster', instances: 2, pmx: false, trace: false });
  // An absolute preload path: the daemon may run from anywhere.
  const preload = app?.node_args[app.node_args.indexOf('-r') + 1];
  expect(preload).toBe(path.join(ROOT, 'dist/otel/register.js'));
  expect(app?.node_args).toContain(`--env-file-if-exists=${path.join(ROOT, '.env')}`);
  // V8's background threads: the cores left per worker, 1 to 4.
  expect(app?.node_args).toContain(`--v8-pool-size=${Math.min(4, Math.max(1, Math.floor(os.availableParallelism() / 2)))}`);
  // Drain (3 s) and flush (2 s) end before PM2's SIGKILL.
  expect(app?.kill_timeout).toBe(6000);
  expect(app?.env).toMatchObject({ OTEL_SERVICE_NAME: 'koa-otel-app', DRAIN_TIMEOUT_MS: '3000', FLUSH_TIMEOUT_MS: '2000' });
});

test('holds 8192 spans and 8192 log records a worker unless the shell says otherwise', () => {
  // One span and one access record a request: both queues ride out the same stall.
  expect(load().app?.env).toMatchObject({ OTEL_BSP_MAX_QUEUE_SIZE: '8192', OTEL_BLRP_MAX_QUEUE_SIZE: '8192' });
  expect(load({ OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BLRP_MAX_QUEUE_SIZE: '200' }).app?.env).toMatchObject({ OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BLRP_MAX_QUEUE_SIZE: '200' });
});

test.each([
  ['4', 4],
  ['max', 'max'],
])('WEB_CONCURRENCY=%s gives %s instances', (value, instances) => {
  expect(load({ WEB_CONCURRENCY: value }).app?.instances).toBe(instances);
});

test.each([
  ['max', 1],
  ['1', Math.min(4, os.availableParallelism())],
])('WEB_CONCURRENCY=%s gives each worker V8 background threads for the cores left: %s', (value, threads) => {
  expect(load({ WEB_CONCURRENCY: value }).app?.node_args).toContain(`--v8-pool-size=${threads}`);
});

test.each(['0', '-1', '1.5', 'abc', ' 2'])('WEB_CONCURRENCY=%j is refused with a clear message', (value) => {
  expect(load({ WEB_CONCURRENCY: value }).error).toBe(`WEB_CONCURRENCY must be a whole number of workers (1 or more) or "max", got ${JSON.stringify(value)}`);
});

test('a file named by ENV_FILE must exist; the default .env need not', () => {
  const missing = path.join(os.tmpdir(), 'no-such-kit.env');
  expect(load({ ENV_FILE: missing }).error).toBe(`ENV_FILE: no such file ${missing}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kit-env-'));
  const file = path.join(dir, 'otel.env');
  fs.writeFileSync(file, 'OTEL_EXPORTER_OTLP_HEADERS=x\n');
  try {
    expect(load({ ENV_FILE: file }).app?.node_args).toContain(`--env-file-if-exists=${file}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a bad duration is refused with a clear message', () => {
  expect(load({ DRAIN_TIMEOUT_MS: '3s' }).error).toBe('DRAIN_TIMEOUT_MS must be a whole number of milliseconds, got "3s"');
});
