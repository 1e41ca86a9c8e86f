// @ts-check
'use strict';

/**
 * PM2 cluster in one container, or one process per container: the same image
 * run as one container of 2 workers, and as two containers of 1 worker each
 * (host network, one port each), loaded with wrk for the same total
 * connections, rounds interleaved. Spans go to the counting OTLP sink.
 *
 *   IMAGE=localhost/koa-otel-app:bench node bench/containers.js
 *   BENCH_ROUNDS=3 BENCH_DURATION=10 (defaults)
 *
 * Needs podman (runc, cgroupfs, as in test/e2e/container.test.ts) and wrk,
 * and an image built from the Dockerfile. Prints a Markdown table: req/s
 * (sum over containers), p99 (the worse container's), RSS of every process
 * of the containers (pm2-runtime included) after the load.
 */
const { execFileSync, execFile } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { startSink } = require('./lib/sinkClient');

const IMAGE = process.env.IMAGE || 'localhost/koa-otel-app:bench';
const ROUNDS = Number(process.env.BENCH_ROUNDS || 3);
const DURATION = Number(process.env.BENCH_DURATION || 10);
const CONNECTIONS = 50;
const PODMAN = ['--runtime', 'runc', '--cgroup-manager=cgroupfs'];
const LUA = path.join(__dirname, 'wrk/items.lua');

/** @param {string[]} args */
function podman(args) {
  return execFileSync('podman', [...PODMAN, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** @param {number} port */
async function ready(port) {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const ok = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`port ${port} never became ready`);
}

/**
 * @param {string} name
 * @param {number} port
 * @param {number} workers
 * @param {string} endpoint
 */
async function start(name, port, workers, endpoint) {
  const env = { HOST: '127.0.0.1', PORT: String(port), WEB_CONCURRENCY: String(workers), OTEL_EXPORTER_OTLP_ENDPOINT: endpoint };
  podman(['run', '-d', '--name', name, '--network=host', '--read-only', '--ulimit', 'nofile=16384:16384', '--ulimit', 'nproc=4096:4096', ...Object.entries(env).flatMap(([k, v]) => ['-e', `${k}=${v}`]), IMAGE]);
  await ready(port);
  // PM2 starts workers one after the other: wait for all of them.
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && (podman(['logs', name]).match(/\] online/g) || []).length < workers) await new Promise((resolve) => setTimeout(resolve, 200));
}

/** RSS in MB of every process of a container, read from the host's /proc. @param {string} name */
function rssMb(name) {
  const pids = podman(['top', name, 'hpid']).split('\n').slice(1).map(Number).filter(Boolean);
  let kb = 0;
  for (const pid of pids) kb += Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  return kb / 1024;
}

/** @param {number} port @param {number} connections @returns {Promise<{ requests: number, duration_us: number, p99_us: number, errors: number }>} */
function wrk(port, connections) {
  return new Promise((resolve, reject) => {
    execFile('wrk', ['-t1', `-c${connections}`, `-d${DURATION}s`, '-s', LUA, `http://127.0.0.1:${port}/items/123`], { encoding: 'utf8' }, (error, stdout) => {
      if (error) return reject(error);
      const line = stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '));
      if (!line) return reject(new Error(stdout));
      const r = JSON.parse(line.slice('BENCH_JSON '.length));
      resolve({ requests: r.requests, duration_us: r.duration_us, p99_us: r.p99_us, errors: r.connect_errors + r.read_errors + r.write_errors + r.timeouts + r.non2xx });
    });
  });
}

/** @param {number[]} values */
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;

async function main() {
  const sink = await startSink();
  const id = `${process.pid}`;
  const base = 18_600 + (process.pid % 200) * 3;
  /** @type {Record<string, { rps: number[], p99: number[], rss: number[], errors: number }>} */
  const results = { 'one container, 2 workers': { rps: [], p99: [], rss: [], errors: 0 }, 'two containers, 1 worker each': { rps: [], p99: [], rss: [], errors: 0 } };
  const names = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? Object.keys(results) : Object.keys(results).reverse();
      for (const config of order) {
        const layout = config.startsWith('one') ? [{ port: base, workers: 2 }] : [{ port: base + 1, workers: 1 }, { port: base + 2, workers: 1 }];
        const running = layout.map((c, i) => ({ ...c, name: `kit-bench-${id}-${round}-${i}-${layout.length}` }));
        names.push(...running.map((c) => c.name));
        for (const c of running) await start(c.name, c.port, c.workers, sink.url);
        const runs = await Promise.all(running.map((c) => wrk(c.port, CONNECTIONS / running.length)));
        const rss = running.reduce((sum, c) => sum + rssMb(c.name), 0);
        for (const c of running) podman(['rm', '-f', '-t', '5', c.name]);
        const r = results[config];
        if (r === undefined) continue;
        r.rps.push(runs.reduce((sum, x) => sum + x.requests / (x.duration_us / 1e6), 0));
        r.p99.push(Math.max(...runs.map((x) => x.p99_us)) / 1000);
        r.rss.push(rss);
        r.errors += runs.reduce((sum, x) => sum + x.errors, 0);
        process.stderr.write(`round ${round + 1} ${config}: ${r.rps.at(-1)?.toFixed(0)} req/s, p99 ${r.p99.at(-1)?.toFixed(2)} ms, RSS ${rss.toFixed(0)} MB\n`);
      }
    }
  } finally {
    for (const name of names) execFile('podman', [...PODMAN, 'rm', '-f', '-t', '0', name], () => undefined);
    await sink.stop();
  }
  process.stdout.write(`\n| layout (medians of ${ROUNDS} rounds of ${DURATION} s, ${CONNECTIONS} connections) | req/s | p99 ms | RSS MB (all processes) | errors |\n|---|---:|---:|---:|---:|\n`);
  for (const [config, r] of Object.entries(results)) {
    process.stdout.write(`| ${config} | ${median(r.rps).toFixed(0)} | ${median(r.p99).toFixed(2)} | ${median(r.rss).toFixed(0)} | ${r.errors} |\n`);
  }
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
  process.exitCode = 1;
});
