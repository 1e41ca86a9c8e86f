// @ts-check
'use strict';

/** Small HTTP helpers for the driver: readiness polling, a few sequential requests, free ports. */
const http = require('node:http');
const net = require('node:net');

const HOST = '127.0.0.1';

/**
 * One GET on a fresh connection (no agent: a kept-alive socket would pin
 * every poll to the first worker that answered).
 * @param {number} port
 * @param {string} path
 * @param {number} timeoutMs
 * @returns {Promise<number>} the status code, 0 on a connection error or timeout
 */
function get(port, path, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path, agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(0));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `path` every `intervalMs` until it answers 200.
 * @param {number} port
 * @param {string} path
 * @param {{ intervalMs?: number, timeoutMs?: number, gaveUp?: () => string | undefined }} [options]
 *   `gaveUp` is asked between polls and stops the wait with its message (the server died).
 * @returns {Promise<number>} when the first 200 arrived (performance.now())
 */
async function waitFor200(port, path, options = {}) {
  const { intervalMs = 10, timeoutMs = 30_000 } = options;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const started = performance.now();
    if ((await get(port, path, 1000)) === 200) return performance.now();
    const reason = options.gaveUp?.();
    if (reason !== undefined) throw new Error(reason);
    if (performance.now() > deadline) throw new Error(`no 200 on ${path} within ${timeoutMs} ms`);
    // "every 10 ms": from the start of one poll to the start of the next.
    await sleep(Math.max(0, intervalMs - (performance.now() - started)));
  }
}

/**
 * Sends `count` GET /items/<n> one after another.
 * @param {number} port
 * @param {number} count
 * @returns {Promise<number>} how many answered 200
 */
async function sequentialItems(port, count) {
  let ok = 0;
  for (let i = 1; i <= count; i++) if ((await get(port, `/items/${i}`)) === 200) ok += 1;
  return ok;
}

/** @returns {Promise<number>} a TCP port on 127.0.0.1 that was free a moment ago */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

module.exports = { HOST, get, waitFor200, sequentialItems, freePort, sleep };
