// @ts-check
'use strict';

/**
 * Everything the bench starts (PM2 daemons, gunicorn, the sink, the load
 * generator) is registered here the moment it exists, and torn down on the
 * normal path, on an error, and on Ctrl-C / SIGTERM, newest first.
 */

/** @type {Map<number, { name: string, stop: () => Promise<void> | void }>} */
const tasks = new Map();
let nextId = 1;

/**
 * @param {string} name for the message if stopping it fails
 * @param {() => Promise<void> | void} stop
 * @returns {() => Promise<void>} runs `stop` now and forgets it
 */
function onCleanup(name, stop) {
  const id = nextId++;
  tasks.set(id, { name, stop });
  return async () => {
    if (!tasks.delete(id)) return;
    await stop();
  };
}

/** Stops everything still registered, newest first; never throws. */
async function cleanupAll() {
  const pending = [...tasks.entries()].reverse();
  tasks.clear();
  for (const [, task] of pending) {
    try {
      await task.stop();
    } catch (error) {
      console.error(`bench: could not stop ${task.name}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}

let stopping = false;

/** Whether a signal is being handled: start nothing new (cleanup would miss it). */
const signalled = () => stopping;

/** Ctrl-C or SIGTERM: clean up, then exit as a signal would (a second Ctrl-C is ignored meanwhile). */
function cleanupOnSignals() {
  for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM', 'SIGHUP'])) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      console.error(`\nbench: ${signal}, stopping everything it started...`);
      void cleanupAll().then(() => process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1)));
    });
  }
}

module.exports = { onCleanup, cleanupAll, cleanupOnSignals, signalled };
