/**
 * A real PM2 daemon for a test: its own PM2_HOME in a temp dir, driven
 * through the same CLI users type, and killed (verified by PID) at the end.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');
const PM2_BIN = path.join(ROOT, 'node_modules/pm2/bin/pm2');

export interface Pm2ProcessInfo {
  name: string;
  pm_id: number;
  pid: number;
  status: string;
  restarts: number;
}

export interface Pm2 {
  readonly home: string;
  /** Runs `pm2 <args>` against this daemon; rejects with the output if it fails. */
  run(args: string[], options?: { env?: Record<string, string>; cwd?: string }): Promise<string>;
  /** `pm2 jlist`, reduced to what tests look at. */
  list(): Promise<Pm2ProcessInfo[]>;
  /** Waits until `app` has exactly `count` online processes. */
  waitOnline(app: string, count: number, timeoutMs?: number): Promise<Pm2ProcessInfo[]>;
  /** Everything the app wrote to stdout (PM2's out log files). */
  outLog(): string;
  errLog(): string;
  /** `pm2 kill`, then makes sure the daemon and its workers are gone. */
  kill(): Promise<void>;
}

/** The test runner's environment without any OTEL_/PM2 settings of its own. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith('OTEL_') || key.startsWith('PM2_') || key === 'pm2_env') continue;
    if (['PORT', 'HOST', 'APP_NAME', 'WEB_CONCURRENCY', 'NODE_APP_INSTANCE'].includes(key)) continue;
    env[key] = value;
  }
  return { ...env, ...extra };
}

function exec(args: string[], env: Record<string, string>, cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [PM2_BIN, ...args], { env, cwd, timeout: 60_000, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`pm2 ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Whether a process with this PID exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

function readLogs(home: string, kind: 'out' | 'error'): string {
  const dir = path.join(home, 'logs');
  if (!fs.existsSync(dir)) return '';
  return fs
    .readdirSync(dir)
    .filter((file) => file.includes(`-${kind}`))
    .map((file) => fs.readFileSync(path.join(dir, file), 'utf8'))
    .join('');
}

/**
 * Starts a daemon with `daemonEnv` from `cwd` (by default a temp dir, not the
 * project: the kit must not depend on where the daemon was started).
 */
export async function startPm2(options: { daemonEnv?: Record<string, string>; cwd?: string } = {}): Promise<Pm2> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pm2-test-'));
  const baseEnv = (extra: Record<string, string> = {}): Record<string, string> =>
    cleanEnv({ PM2_HOME: home, PM2_DISCRETE_MODE: 'true', ...extra });
  await exec(['ping'], baseEnv(options.daemonEnv), options.cwd ?? os.tmpdir());
  const daemonPid = Number(fs.readFileSync(path.join(home, 'pm2.pid'), 'utf8'));

  const pm2: Pm2 = {
    home,
    run: (args, runOptions = {}) => exec(args, baseEnv(runOptions.env), runOptions.cwd ?? ROOT),
    async list() {
      const output = await exec(['jlist'], baseEnv(), ROOT);
      const start = output.indexOf('[');
      const parsed = JSON.parse(output.slice(start)) as Array<{
        name: string;
        pm_id: number;
        pid: number;
        pm2_env: { status: string; restart_time: number };
      }>;
      return parsed.map((p) => ({ name: p.name, pm_id: p.pm_id, pid: p.pid, status: p.pm2_env.status, restarts: p.pm2_env.restart_time }));
    },
    async waitOnline(app, count, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      let last: Pm2ProcessInfo[] = [];
      while (Date.now() < deadline) {
        last = (await pm2.list()).filter((p) => p.name === app);
        if (last.length === count && last.every((p) => p.status === 'online' && p.pid > 0)) return last;
        await sleep(200);
      }
      throw new Error(`${app}: expected ${count} online processes, got ${JSON.stringify(last)}\n${pm2.errLog().slice(-3000)}`);
    },
    outLog: () => readLogs(home, 'out'),
    errLog: () => readLogs(home, 'error'),
    async kill() {
      const pids = (await pm2.list().catch(() => [])).map((p) => p.pid).filter((pid) => pid > 0);
      await exec(['kill'], baseEnv(), ROOT).catch(() => undefined);
      for (const pid of [daemonPid, ...pids]) {
        const deadline = Date.now() + 5000;
        while (alive(pid) && Date.now() < deadline) await sleep(50);
        if (alive(pid)) process.kill(pid, 'SIGKILL');
      }
      fs.rmSync(home, { recursive: true, force: true });
    },
  };
  return pm2;
}

/** A TCP port that was free a moment ago, on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/**
 * Starts the kit's ecosystem file as app `name` on a free port of 127.0.0.1,
 * with `env` on top, and waits until its workers are online.
 */
export async function startApp(pm2: Pm2, name: string, env: Record<string, string> = {}, instances = 2): Promise<number> {
  const port = await freePort();
  await pm2.run(['start', 'ecosystem.config.js'], {
    env: { APP_NAME: name, WEB_CONCURRENCY: String(instances), HOST: '127.0.0.1', PORT: String(port), ...env },
  });
  await pm2.waitOnline(name, instances);
  return port;
}

/** The telemetry preload's own lines (`otel: …`) written by worker `pid`, from PM2's error log. */
export function preloadLines(pm2: Pm2, pid: number): string[] {
  return pm2
    .errLog()
    .split('\n')
    .flatMap((line) => {
      try {
        const parsed = JSON.parse(line) as { pid?: unknown; msg?: unknown };
        return parsed.pid === pid && typeof parsed.msg === 'string' && parsed.msg.startsWith('otel: ') ? [parsed.msg] : [];
      } catch {
        return [];
      }
    });
}
