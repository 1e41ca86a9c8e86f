// @ts-check
'use strict';

/** The driver's handle on `bench/sink.js`, which runs in a child process of its own. */
const path = require('node:path');
const { fork } = require('node:child_process');
const { sleep } = require('./http');

/** @typedef {import('../sink').SinkStats} SinkStats */

/**
 * @typedef {object} Sink
 * @property {number} port
 * @property {number} pid
 * @property {string} url                 what OTEL_EXPORTER_OTLP_ENDPOINT is set to
 * @property {string} httpUrl             OTLP http/protobuf, Datadog agent, Elastic APM server
 * @property {string} flappingUrl         an OTLP/gRPC endpoint that refuses every other second
 * @property {() => Promise<SinkStats>} stats
 * @property {(options: QuietOptions) => Promise<SinkStats>} waitQuiet
 * @property {() => Promise<void>} stop
 */

/**
 * @typedef {object} QuietOptions
 * @property {number} quietMs    return once no span arrived for this long,
 * @property {number} [atLeast]  counting quiet time only once the span count reached this
 *                               (spans sit up to OTEL_BSP_SCHEDULE_DELAY in a worker first);
 * @property {number} [notBefore] but never before this Date.now() time (when every batch
 *                               processor's timer has fired);
 * @property {number} maxMs      or after this long in any case.
 */

/** @returns {Promise<Sink>} */
function startSink() {
  const child = fork(path.join(__dirname, '..', 'sink.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  let nextId = 1;
  /** @type {Map<number, (stats: SinkStats) => void>} */
  const pending = new Map();
  child.on('message', (/** @type {{ type: string, id: number, stats: SinkStats }} */ message) => {
    if (message.type !== 'stats') return;
    pending.get(message.id)?.(message.stats);
    pending.delete(message.id);
  });

  /** @returns {Promise<SinkStats>} */
  const stats = () =>
    new Promise((resolve, reject) => {
      if (!child.connected) return reject(new Error('the sink has exited'));
      const id = nextId++;
      pending.set(id, resolve);
      child.send({ type: 'stats', id });
    });

  /** @param {QuietOptions} options */
  const waitQuiet = async ({ quietMs, maxMs, atLeast = 0, notBefore = 0 }) => {
    const started = Date.now();
    let last = await stats();
    let changedAt = Date.now();
    const quiet = () => last.spans >= atLeast && Date.now() >= notBefore && Date.now() - changedAt >= quietMs;
    while (!quiet() && Date.now() - started < maxMs) {
      await sleep(100);
      const now = await stats();
      if (now.spans !== last.spans) changedAt = Date.now();
      last = now;
    }
    return last;
  };

  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    // Closing the channel makes the sink shut its server down and exit.
    if (child.connected) child.disconnect();
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  };

  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`the sink exited with code ${code} before it was ready`)));
    child.once('message', (/** @type {{ type: string, port: number, httpPort: number, flappingPort: number }} */ message) => {
      if (message.type !== 'ready') return reject(new Error(`unexpected first message from the sink: ${JSON.stringify(message)}`));
      const at = (/** @type {number} */ port) => `http://127.0.0.1:${port}`;
      resolve({ port: message.port, pid: /** @type {number} */ (child.pid), url: at(message.port), httpUrl: at(message.httpPort), flappingUrl: at(message.flappingPort), stats, waitQuiet, stop });
    });
  });
}

module.exports = { startSink };
