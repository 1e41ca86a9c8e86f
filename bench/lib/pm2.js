// @ts-check
'use strict';

/**
 * A PM2 daemon of the benchmark's own: a temp PM2_HOME (never the user's
 * ~/.pm2), driven through the same CLI users type, and killed at the end
 * with its pid checked. The driver registers every daemon for cleanup
 * before it starts, so Ctrl-C or a crash kills it too.
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFile, spawn } = require('node:child_process');
const { alive } = require('./proc');
const { sleep } = require('./http');

const ROOT = path.resolve(__dirname, '..', '..');
const PM2_BIN = path.join(ROOT, 'node_modules', 'pm2', 'bin', 'pm2');

/** @typedef {Record<string, string>} Env */

/**
 * The driver's environment without anything that would change what PM2 or
 * the app does (OTEL_*, PM2_*, the kit's own variables): each config sets
 * exactly what it needs.
 * @param {Env} [extra]
 * @returns {Env}
 */
function cleanEnv(extra = {}) {
  /** @type {Env} */
  const env = {};
  const appVariables = ['PORT', 'HOST', 'APP_NAME', 'WEB_CONCURRENCY', 'NODE_APP_INSTANCE', 'NODE_OPTIONS', 'pm2_env'];
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith('OTEL_') || key.startsWith('PM2_') || appVariables.includes(key)) continue;
    env[key] = value;
  }
  return { ...env, ...extra };
}

/**
 * @typedef {object} Pm2Process
 * @property {string} name
 * @property {number} pid
 * @property {string} status
 * @property {number} restarts
 */

/**
 * @typedef {object} Pm2Daemon
 * @property {string} home
 * @property {number} pid                   the daemon's pid, 0 until started
 * @property {(args: string[]) => Promise<string>} run   `pm2 <args>`, rejects with the output on failure
 * @property {(args: string[]) => { done: Promise<string> }} spawnRun  the same, started now (for timing)
 * @property {(name: string) => Promise<Pm2Process[]>} list
 * @property {(name: string, count: number) => Promise<Pm2Process[]>} waitOnline
 * @property {() => string} logs            everything the apps wrote (PM2's log files)
 * @property {() => Promise<void>} kill     `pm2 kill`, then makes sure every process is gone
 */

/**
 * Creates (but does not start) a daemon handle; `start` it after registering it for cleanup.
 * @param {Env} env the environment of every pm2 command, hence of the daemon and its workers
 * @returns {Pm2Daemon & { start: () => Promise<void> }}
 */
function createPm2(env) {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-pm2-'));
  const fullEnv = cleanEnv({ ...env, PM2_HOME: home, PM2_DISCRETE_MODE: 'true' });
  /** @type {Set<number>} every worker pid seen, so that kill() can check them all */
  const seenPids = new Set();

  /** @param {string[]} args */
  const spawnRun = (args) => {
    const child = spawn(process.execPath, [PM2_BIN, ...args], { env: fullEnv, cwd: os.tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    /** @type {Promise<string>} */
    const done = new Promise((resolve, reject) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        if (code === 0) resolve(output);
        else reject(new Error(`pm2 ${args.join(' ')} exited with ${code}:\n${output.slice(-3000)}`));
      });
    });
    return { done };
  };

  const daemon = {
    home,
    pid: 0,
    /** @param {string[]} args */
    run: (args) => spawnRun(args).done,
    spawnRun,
    async start() {
      await daemon.run(['ping']);
      daemon.pid = Number(fs.readFileSync(path.join(home, 'pm2.pid'), 'utf8'));
    },
    /** @param {string} name */
    async list(name) {
      const output = await new Promise((resolve, reject) =>
        execFile(process.execPath, [PM2_BIN, 'jlist'], { env: fullEnv, maxBuffer: 64 << 20 }, (error, stdout) => (error ? reject(error) : resolve(stdout))),
      );
      /** @type {Array<{ name: string, pid: number, pm2_env: { status: string, restart_time: number } }>} */
      const parsed = JSON.parse(String(output).slice(String(output).indexOf('[')));
      const processes = parsed
        .filter((p) => p.name === name)
        .map((p) => ({ name: p.name, pid: p.pid, status: p.pm2_env.status, restarts: p.pm2_env.restart_time }));
      for (const p of processes) if (p.pid > 0) seenPids.add(p.pid);
      return processes;
    },
    /** @param {string} name @param {number} count */
    async waitOnline(name, count) {
      const deadline = Date.now() + 30_000;
      let last = /** @type {Pm2Process[]} */ ([]);
      while (Date.now() < deadline) {
        last = await daemon.list(name);
        if (last.length === count && last.every((p) => p.status === 'online' && p.pid > 0)) return last;
        await sleep(100);
      }
      throw new Error(`${name}: expected ${count} online workers, got ${JSON.stringify(last)}\n${daemon.logs().slice(-3000)}`);
    },
    logs() {
      const dir = path.join(home, 'logs');
      if (!fs.existsSync(dir)) return '';
      return fs
        .readdirSync(dir)
        .map((file) => fs.readFileSync(path.join(dir, file), 'utf8'))
        .join('\n');
    },
    async kill() {
      await daemon.run(['kill']).catch(() => undefined);
      for (const pid of [daemon.pid, ...seenPids]) {
        if (pid <= 0) continue;
        const deadline = Date.now() + 5000;
        while (alive(pid) && Date.now() < deadline) await sleep(50);
        if (alive(pid)) process.kill(pid, 'SIGKILL');
      }
      fs.rmSync(home, { recursive: true, force: true });
    },
  };
  return daemon;
}

/** The kit's preload, as its ecosystem file names it in node_args. */
const KIT_PRELOAD = path.join(ROOT, 'dist', 'otel', 'register.js');

/**
 * Writes an ecosystem file that takes the kit's own declaration and changes
 * only what a benchmark config needs: name, env (port included), and
 * optionally the preload, swapped for the kit's in node_args with every
 * other runtime flag kept (so that only the tracing setup differs). The
 * kit's file reads its defaults from the environment of the `pm2` command
 * when required, which is why the same values are also in that environment
 * (see `createPm2`).
 * @param {string} dir
 * @param {{ name: string, env: Env, preload?: string }} app
 * @returns {string} the file's path
 */
function writeEcosystem(dir, app) {
  const file = path.join(dir, `${app.name}.ecosystem.config.js`);
  const swapPreload = `
// Swap the kit's preload for this one; fail rather than load both or neither.
const args = [].concat(kit.node_args ?? []);
if (!args.includes(${JSON.stringify(KIT_PRELOAD)})) throw new Error(${JSON.stringify(`bench: the kit's node_args no longer name ${KIT_PRELOAD}`)});
const nodeArgs = args.map((arg) => (arg === ${JSON.stringify(KIT_PRELOAD)} ? ${JSON.stringify(app.preload)} : arg));
`;
  const text = `'use strict';
// Generated by bench/run.js: the kit's ecosystem.config.js, with only what the benchmark changes.
const kit = require(${JSON.stringify(path.join(ROOT, 'ecosystem.config.js'))}).apps[0];
${app.preload === undefined ? '' : swapPreload}
module.exports = {
  apps: [
    {
      ...kit,
      name: ${JSON.stringify(app.name)},
      env: { ...kit.env, ...${JSON.stringify(app.env)} },${app.preload === undefined ? '' : '\n      node_args: nodeArgs,'}
    },
  ],
};
`;
  fs.writeFileSync(file, text);
  return file;
}

module.exports = { createPm2, writeEcosystem, cleanEnv, ROOT };
