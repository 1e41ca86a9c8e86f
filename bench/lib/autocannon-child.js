// @ts-check
'use strict';

/**
 * The fallback load generator when wrk is not installed: autocannon, run in
 * a process of its own (never in the driver) on the same fixed URL as wrk. Prints one BENCH_JSON line in wrk's units (µs).
 *
 * Usage: node autocannon-child.js <url> <connections> <seconds>
 */
const { createRequire } = require('node:module');

/**
 * The little of autocannon's result used here (latencies in ms).
 * @typedef {{ requests: { total: number }, duration: number, errors: number, timeouts: number, non2xx: number,
 *   latency: { p50: number, p99: number, p99_9: number, mean: number } }} AutocannonResult
 * @typedef {(options: object, done: (error: Error | null, result: AutocannonResult) => void) => unknown} Autocannon
 */

// autocannon ships no type declarations: load it untyped and type what is used.
const autocannon = /** @type {Autocannon} */ (createRequire(__filename)('autocannon'));

const [url = '', connections = '50', seconds = '10'] = process.argv.slice(2);
autocannon(
  {
    url,
    connections: Number(connections),
    duration: Number(seconds),
  },
  (error, result) => {
    if (error) {
      console.error(error);
      process.exit(1);
    }
    const summary = {
      requests: result.requests.total,
      duration_us: Math.round(result.duration * 1e6),
      connect_errors: result.errors,
      read_errors: 0,
      write_errors: 0,
      timeouts: result.timeouts,
      non2xx: result.non2xx,
      p50_us: result.latency.p50 * 1000,
      p99_us: result.latency.p99 * 1000,
      p999_us: result.latency.p99_9 * 1000,
      mean_us: result.latency.mean * 1000,
    };
    process.stdout.write(`BENCH_JSON ${JSON.stringify(summary)}\n`);
  },
);
