// @ts-check
'use strict';

/**
 * The fallback load generator when wrk is not installed: autocannon, run in
 * a process of its own (never in the driver) with the same request mix as
 * bench/wrk/items.lua. Prints one BENCH_JSON line in wrk's units (µs).
 *
 * Usage: node autocannon-child.js <url> <connections> <seconds>
 */
const autocannon = require('autocannon');

const [url = '', connections = '50', seconds = '10'] = process.argv.slice(2);
let counter = 0;

autocannon(
  {
    url,
    connections: Number(connections),
    duration: Number(seconds),
    requests: [
      {
        method: 'GET',
        setupRequest(request) {
          counter += 1;
          return { ...request, path: `/items/${(counter % 1000) + 1}` };
        },
      },
    ],
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
      mean_us: result.latency.mean * 1000,
    };
    process.stdout.write(`BENCH_JSON ${JSON.stringify(summary)}\n`);
  },
);
