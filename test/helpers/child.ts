/**
 * A Node child process started with the telemetry preload (`node -r`), the
 * way PM2 starts a worker, so require-hook patching is tested where it runs
 * and not inside Jest's module registry.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { cleanEnv, ROOT } from './pm2';

export const PRELOAD = path.join(ROOT, 'dist/otel/register.js');
export const SERVER = path.join(ROOT, 'dist/src/server.js');
export const FIXTURES = path.join(ROOT, 'test/fixtures');

export interface Child {
  readonly process: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first stdout line matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves when the process has exited and its output is all read, with its code or signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Kills it if still running (SIGKILL) and waits for the exit. */
  stop(): Promise<void>;
}

/** Runs `script` with the kit's preload, another preload (a path), or none (`false`). */
export function startChild(script: string, env: Record<string, string>, options: { preload?: boolean | string } = {}): Child {
  const preload = options.preload === undefined || options.preload === true ? PRELOAD : options.preload;
  const args = preload === false ? [script] : ['-r', preload, script];
  const child = spawn(process.execPath, args, { env: cleanEnv(env), cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  let closed = false;
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
    for (const wake of waiters) wake();
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  // 'close', not 'exit': only then has all of the child's output been read.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
      closed = true;
      for (const wake of waiters) wake();
      resolve({ code, signal });
    }),
  );

  return {
    process: child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForLine(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          const line = out.split('\n').find((l) => pattern.test(l));
          if (line === undefined) {
            if (!closed) return false;
            cleanup();
            reject(new Error(`process exited before printing ${pattern}\nstdout:\n${out}\nstderr:\n${err}`));
            return true;
          }
          cleanup();
          resolve(line);
          return true;
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms\nstdout:\n${out}\nstderr:\n${err}`));
        }, timeoutMs);
        const wake = (): void => void check();
        const cleanup = (): void => {
          clearTimeout(timer);
          waiters.delete(wake);
        };
        waiters.add(wake);
        check();
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** The port the kit's server printed in its `listening` log line. */
export async function listeningPort(child: Child): Promise<number> {
  const line = await child.waitForLine(/"msg":"listening"/);
  return (JSON.parse(line) as { address: { port: number } }).address.port;
}
