// @ts-check
'use strict';

/**
 * The Python peer: the seed's FastAPI app under gunicorn with 2 uvicorn
 * workers (bench/python/). Optional: without an interpreter that has
 * fastapi, uvicorn and gunicorn, the bench runs without it and says why.
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, spawn } = require('node:child_process');
const { alive, childrenOf } = require('./proc');
const { sleep } = require('./http');
const { cleanEnv } = require('./pm2');

const APP_DIR = path.join(__dirname, '..', 'python');
const INSTALL_HINT = 'apt-get install -y python3-fastapi python3-uvicorn gunicorn';

/**
 * @typedef {object} PythonInfo
 * @property {string} python       the interpreter
 * @property {string} versions     "Python x, FastAPI y, uvicorn z (loop/http), gunicorn w"
 */

/**
 * Finds an interpreter that imports all three packages. Debian's python3 is
 * tried first: a pyenv or venv python3 earlier in PATH usually lacks them.
 * @returns {{ info: PythonInfo } | { skipped: string }}
 */
function findPython() {
  const probe = [
    'import sys, fastapi, uvicorn, gunicorn, importlib.util as u',
    'has = lambda m: u.find_spec(m) is not None',
    'loop = "uvloop" if has("uvloop") else "asyncio"',
    'http = "httptools" if has("httptools") else "h11"',
    'print(f"Python {sys.version.split()[0]}, FastAPI {fastapi.__version__}, uvicorn {uvicorn.__version__} ({loop}, {http}), gunicorn {gunicorn.__version__}")',
  ].join('\n');
  const tried = [];
  for (const python of ['/usr/bin/python3', 'python3']) {
    try {
      const versions = execFileSync(python, ['-c', probe], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 20_000 }).trim();
      return { info: { python, versions } };
    } catch {
      tried.push(python);
    }
  }
  return { skipped: `no Python with fastapi, uvicorn and gunicorn (tried ${tried.join(', ')}); to include it: ${INSTALL_HINT}` };
}

/**
 * @typedef {object} Gunicorn
 * @property {number} pid                      the master
 * @property {number} startedAt                performance.now() at spawn
 * @property {() => string | undefined} died   a message once the master has exited
 * @property {(count: number) => Promise<number[]>} workers  waits for `count` worker pids
 * @property {() => string} logs
 * @property {() => Promise<void>} stop        SIGTERM, then makes sure master and workers are gone
 */

/**
 * Spawns gunicorn; the caller registers `stop` for cleanup at once.
 * @param {PythonInfo} info
 * @param {number} port
 * @returns {Gunicorn}
 */
function startGunicorn(info, port) {
  const logFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bench-gunicorn-')), 'gunicorn.log');
  const log = fs.openSync(logFile, 'a');
  const startedAt = performance.now();
  const child = spawn(info.python, ['-m', 'gunicorn', '-c', 'gunicorn.conf.py', 'app:app'], {
    cwd: APP_DIR,
    env: cleanEnv({ BENCH_PORT: String(port), PYTHONDONTWRITEBYTECODE: '1' }),
    stdio: ['ignore', log, log],
  });
  fs.closeSync(log);
  const pid = /** @type {number} */ (child.pid);
  /** @type {Set<number>} */
  const seenWorkers = new Set();
  /** @type {string | undefined} */
  let exit;
  child.on('exit', (code, signal) => (exit = `gunicorn exited (${signal ?? code}):\n${readLog().slice(-3000)}`));

  function readLog() {
    try {
      return fs.readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  }

  return {
    pid,
    startedAt,
    died: () => exit,
    async workers(count) {
      const deadline = Date.now() + 30_000;
      for (;;) {
        const workers = childrenOf(pid);
        for (const worker of workers) seenWorkers.add(worker);
        if (workers.length === count) return workers;
        if (exit !== undefined) throw new Error(exit);
        if (Date.now() > deadline) throw new Error(`gunicorn: expected ${count} workers, found ${workers.length}`);
        await sleep(50);
      }
    },
    logs: readLog,
    async stop() {
      for (const worker of childrenOf(pid)) seenWorkers.add(worker);
      if (exit === undefined) child.kill('SIGTERM');
      for (const p of [pid, ...seenWorkers]) {
        const deadline = Date.now() + 10_000;
        while (alive(p) && Date.now() < deadline) await sleep(50);
        if (alive(p)) process.kill(p, 'SIGKILL');
      }
      fs.rmSync(path.dirname(logFile), { recursive: true, force: true });
    },
  };
}

module.exports = { findPython, startGunicorn };
