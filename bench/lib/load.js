// @ts-check
'use strict';

/**
 * The load generator: wrk when installed (C, little CPU per request, which
 * matters on a 2-core machine where it shares the cores with the server),
 * else autocannon in a child process. Both load one fixed URL with no
 * per-request scripting, one thread: a load generator that itself takes much
 * CPU leaves the servers less of it, and compresses every ratio toward 1.
 * Both report through one JSON line.
 *
 * At a steady rate (BENCH_SCENARIO=steady), wrk's connections each wait a
 * random time between a response and their next request (exponential, mean
 * CONNECTIONS / rate: Poisson arrivals at about that rate overall), so that
 * latency is measured on a server that is not saturated, as a dashboard
 * shows it for a service with headroom, rather than the queue of a
 * saturated one.
 */
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync, spawn } = require('node:child_process');
const { onCleanup } = require('./cleanup');

const CONNECTIONS = 50;
const THREADS = 1;
/** One fixed URL: wrk sends a static request, the cheapest it can. */
const ITEM_PATH = '/items/123';

/**
 * @typedef {object} LoadResult
 * @property {number} requests   responses received (any status)
 * @property {number} errors     socket errors, timeouts and non-2xx answers
 * @property {number} seconds    how long the load ran
 * @property {number} rps
 * @property {number} p50Ms
 * @property {number} p99Ms
 * @property {number} p999Ms
 */

/**
 * @typedef {object} LoadGenerator
 * @property {string} name       e.g. "wrk 4.1.0, 2 threads, 50 connections"
 * @property {(port: number, seconds: number) => Promise<LoadResult>} run
 */

/** @returns {string | undefined} wrk's version, if wrk is on PATH */
function wrkVersion() {
  try {
    // `wrk --version` prints usage and exits 1: read its output either way.
    execFileSync('wrk', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const out = /** @type {{ stdout?: string, code?: string }} */ (error);
    if (out.code === 'ENOENT') return undefined;
    const match = /^wrk (\S+)/m.exec(out.stdout ?? '');
    return match ? match[1] : 'unknown version';
  }
  return 'unknown version';
}

/**
 * Runs a command to completion and parses its BENCH_JSON line.
 * @param {string} command
 * @param {string[]} args
 * @param {Record<string, string>} [env]  added to the bench's own
 * @returns {Promise<LoadResult>}
 */
function runJson(command, args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const forget = onCleanup(command, () => void child.kill('SIGKILL'));
    child.on('exit', () => void forget());
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      const line = output.split('\n').find((l) => l.startsWith('BENCH_JSON '));
      if (code !== 0 || line === undefined) return reject(new Error(`${command} failed (${code}):\n${output.slice(-2000)}`));
      const raw = JSON.parse(line.slice('BENCH_JSON '.length));
      const seconds = raw.duration_us / 1e6;
      resolve({
        requests: raw.requests,
        errors: raw.connect_errors + raw.read_errors + raw.write_errors + raw.timeouts + raw.non2xx,
        seconds,
        rps: raw.requests / seconds,
        p50Ms: raw.p50_us / 1000,
        p99Ms: raw.p99_us / 1000,
        p999Ms: raw.p999_us / 1000,
      });
    });
  });
}

/**
 * Picks wrk, or autocannon; BENCH_LOADGEN=wrk|autocannon forces one. With
 * a rate (requests a second over all connections), wrk at that steady rate.
 * @param {string | undefined} forced
 * @param {number} [rate]
 * @returns {LoadGenerator}
 */
function chooseLoadGenerator(forced, rate) {
  const version = forced === 'autocannon' ? undefined : wrkVersion();
  if (version !== undefined) {
    const script = path.join(__dirname, '..', 'wrk', 'items.lua');
    // The mean wait of a connection between a response and its next request (items.lua).
    const thinkMs = rate === undefined ? undefined : (CONNECTIONS * 1000) / rate;
    const pace = thinkMs === undefined ? '(no per-request Lua)' : `at a steady ~${rate} req/s (each connection waits a random time of mean ${thinkMs.toFixed(1)} ms before its next request: Poisson arrivals)`;
    return {
      name: `wrk ${version}, ${THREADS} thread, ${CONNECTIONS} connections, GET ${ITEM_PATH} ${pace}`,
      run: (port, seconds) =>
        runJson(
          'wrk',
          ['-t', String(THREADS), '-c', String(CONNECTIONS), '-d', `${seconds}s`, '--timeout', '5s', '-s', script, `http://127.0.0.1:${port}${ITEM_PATH}`],
          thinkMs === undefined ? {} : { BENCH_THINK_MS: String(thinkMs) },
        ),
    };
  }
  if (forced === 'wrk' || rate !== undefined) throw new Error(`${rate === undefined ? 'BENCH_LOADGEN=wrk' : 'a steady rate (BENCH_SCENARIO=steady) needs wrk'}, but wrk is not installed (apt-get install -y wrk)`);
  const acVersion = JSON.parse(fs.readFileSync(require.resolve('autocannon/package.json'), 'utf8')).version;
  const child = path.join(__dirname, 'autocannon-child.js');
  return {
    name: `autocannon ${acVersion} (${forced === 'autocannon' ? 'BENCH_LOADGEN=autocannon' : 'wrk not installed'}), ${CONNECTIONS} connections, GET ${ITEM_PATH}`,
    run: (port, seconds) => runJson(process.execPath, [child, `http://127.0.0.1:${port}${ITEM_PATH}`, String(CONNECTIONS), String(seconds)]),
  };
}

module.exports = { chooseLoadGenerator, CONNECTIONS };
