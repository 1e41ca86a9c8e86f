/**
 * A real Prometheus server for a test (Debian's `prometheus` package): its
 * own config, TSDB in a temp dir, web on a free loopback port, scraping the
 * given targets every second; stopped by PID at the end. Also the
 * exposition checks shared by the unit and end-to-end tests.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { alive, freePort } from './pm2';

export interface PromSample {
  metric: Record<string, string>;
  value: number;
}

export interface Prometheus {
  readonly url: string;
  readonly pid: number;
  /** An instant PromQL query, now. */
  query(promql: string): Promise<PromSample[]>;
  /** Polls `promql` until `accept` holds for its result; rejects with the last result after `timeoutMs`. */
  waitFor(promql: string, accept: (samples: PromSample[]) => boolean, timeoutMs?: number): Promise<PromSample[]>;
  /** Prometheus's own log (stderr). */
  log(): string;
  stop(): Promise<void>;
}

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const file = path.join(dir, name);
    if (dir !== '' && fs.existsSync(file)) return file;
  }
  for (const dir of ['/usr/bin', '/usr/local/bin', '/usr/sbin']) {
    const file = path.join(dir, name);
    if (fs.existsSync(file)) return file;
  }
  return undefined;
}

export const PROMETHEUS_BIN = findOnPath('prometheus');
export const PROMTOOL_BIN = findOnPath('promtool');

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts Prometheus scraping `targets` (`host:port`) at `/metrics` every `interval`. */
export async function startPrometheus(targets: string[], options: { interval?: string; timeout?: string } = {}): Promise<Prometheus> {
  if (PROMETHEUS_BIN === undefined) throw new Error('prometheus is not installed (apt-get install -y prometheus)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prometheus-test-'));
  const interval = options.interval ?? '1s';
  const config = [
    'global:',
    `  scrape_interval: ${interval}`,
    `  scrape_timeout: ${options.timeout ?? interval}`,
    'scrape_configs:',
    '  - job_name: kit',
    '    static_configs:',
    `      - targets: [${targets.map((t) => `'${t}'`).join(', ')}]`,
    '',
  ].join('\n');
  fs.writeFileSync(path.join(dir, 'prometheus.yml'), config);
  const port = await freePort();
  const child: ChildProcess = spawn(
    PROMETHEUS_BIN,
    [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (log += chunk));
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const url = `http://127.0.0.1:${port}`;
  const pid = child.pid ?? 0;

  const stop = async (): Promise<void> => {
    if (alive(pid)) process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 10_000;
    while (alive(pid) && Date.now() < deadline) await sleep(50);
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    await exited; // after SIGKILL at the latest
    fs.rmSync(dir, { recursive: true, force: true });
  };

  const query = async (promql: string): Promise<PromSample[]> => {
    const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    if (body.status !== 'success' || body.data === undefined) throw new Error(`query ${promql}: ${body.error ?? res.status}`);
    if (body.data.resultType !== 'vector') throw new Error(`query ${promql}: expected a vector, got ${body.data.resultType}`);
    return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (!alive(pid)) {
      await stop();
      throw new Error(`prometheus exited at start:\n${log}`);
    }
    const ready = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus not ready after 30 s:\n${log}`);
    }
    await sleep(200);
  }

  return {
    url,
    pid,
    query,
    async waitFor(promql, accept, timeoutMs = 30_000) {
      const until = Date.now() + timeoutMs;
      let last: PromSample[] = [];
      for (;;) {
        last = await query(promql);
        if (accept(last)) return last;
        if (Date.now() > until) throw new Error(`${promql}: condition not met within ${timeoutMs} ms; last result ${JSON.stringify(last)}\n${log.slice(-2000)}`);
        await sleep(500);
      }
    },
    log: () => log,
    stop,
  };
}

/** `promtool check metrics` on an exposition: its complaints (empty when clean), or the parse error. */
export function promtoolCheck(exposition: string): Promise<string> {
  if (PROMTOOL_BIN === undefined) return Promise.reject(new Error('promtool is not installed'));
  return new Promise((resolve) => {
    const child = execFile(PROMTOOL_BIN, ['check', 'metrics'], { timeout: 30_000 }, (_error, stdout, stderr) => resolve(`${stdout}${stderr}`.trim()));
    child.stdin?.end(exposition);
  });
}

/**
 * Checks the text format's grouping rules: each family's lines contiguous,
 * one HELP and one TYPE each, before its samples. Returns the violations.
 */
export function groupingViolations(exposition: string): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  const help = new Map<string, number>();
  const type = new Map<string, number>();
  let current: string | undefined;
  const familyOf = (sample: string): string => {
    const name = /^[^{\s]+/.exec(sample)?.[0] ?? sample;
    for (const suffix of ['_bucket', '_count', '_sum', '_total', '_created']) {
      const base = name.endsWith(suffix) ? name.slice(0, -suffix.length) : name;
      if (base !== name && (type.has(base) || help.has(base))) return base;
    }
    return name;
  };
  const enter = (family: string): void => {
    if (family === current) return;
    if (seen.has(family)) problems.push(`${family}: lines not contiguous`);
    seen.add(family);
    current = family;
  };
  for (const line of exposition.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE|UNIT) (\S+)/.exec(line);
    if (meta) {
      const [, keyword, name] = meta as unknown as [string, string, string];
      enter(name);
      const counts = keyword === 'HELP' ? help : keyword === 'TYPE' ? type : undefined;
      if (counts !== undefined) {
        counts.set(name, (counts.get(name) ?? 0) + 1);
        if (counts.get(name) === 2) problems.push(`${name}: more than one ${keyword}`);
      }
      continue;
    }
    if (line.startsWith('#')) continue;
    const family = familyOf(line);
    enter(family);
    if (!type.has(family)) problems.push(`${family}: sample before its TYPE`);
  }
  return [...new Set(problems)];
}

/** The values of the sample lines `name{…labels}` whose labels include `match`. */
export function sampleValues(exposition: string, name: string, match: Record<string, string> = {}): number[] {
  const values: number[] = [];
  for (const line of exposition.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(match).every(([key, value]) => line.includes(`{${key}="${value}"`) || line.includes(`,${key}="${value}"`))) continue;
    values.push(Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return values;
}
