/**
 * Makes the app's own `OTEL_*` settings visible to the preload under PM2.
 *
 * In cluster mode PM2 forks each worker with the daemon's environment plus a
 * `pm2_env` variable holding the app's environment as JSON; its
 * ProcessContainer copies that JSON into `process.env` only after `-r`
 * preloads have run. So at preload time `process.env` holds the daemon's
 * values, which can be stale (a daemon started earlier, elsewhere, by a boot
 * script). We apply the app's `OTEL_*` values now, and drop `OTEL_*` values
 * that only the daemon had, so every worker, including those added by
 * `pm2 scale` and restarted by PM2, runs with the settings the app was
 * started with. Non-OTEL variables are left for PM2 to copy as usual.
 *
 * Secrets can stay out of PM2's process list and `pm2 save` dump: put them in
 * an env file that Node loads at worker start (`--env-file-if-exists` in
 * `node_args`). Node gives the daemon's stale environment precedence over
 * such a file, so its `OTEL_*` values are applied here too, below the app's.
 */
import fs from 'node:fs';
import { parseEnv } from 'node:util';

export interface Pm2Process {
  /** App name in PM2's list. */
  readonly name: string | undefined;
  /** PM2's process id (`pm_id`), unique in the daemon. */
  readonly pmId: number | undefined;
  /** Instance number within the app (`NODE_APP_INSTANCE`), 0..instances-1. */
  readonly instance: number | undefined;
}

type MutableEnv = Record<string, string | undefined>;

function numberOrUndefined(value: unknown): number | undefined {
  const number = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  return typeof number === 'number' && Number.isInteger(number) ? number : undefined;
}

/**
 * If running under PM2, applies the app's `OTEL_*` variables to `env` and
 * returns what PM2 says about this process; otherwise returns undefined and
 * leaves `env` alone.
 */
export function adoptPm2Env(env: MutableEnv = process.env, envFile?: Record<string, string>): Pm2Process | undefined {
  const raw = env.pm2_env;
  if (raw === undefined) return undefined;
  let app: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(raw);
    if (parsed === null || typeof parsed !== 'object') return undefined;
    app = parsed as Record<string, unknown>;
  } catch {
    return undefined;
  }

  for (const key of Object.keys(env)) {
    if (key.startsWith('OTEL_') && !(key in app)) delete env[key];
  }
  // Read only under PM2: elsewhere Node has applied the file as it should.
  for (const [key, value] of Object.entries(envFile ?? envFileValues(process.execArgv))) {
    if (key.startsWith('OTEL_')) env[key] = value;
  }
  for (const [key, value] of Object.entries(app)) {
    if (key.startsWith('OTEL_') && value !== null && typeof value !== 'object') env[key] = String(value);
  }

  const instanceVar = typeof app.instance_var === 'string' ? app.instance_var : 'NODE_APP_INSTANCE';
  return {
    name: typeof app.name === 'string' ? app.name : undefined,
    pmId: numberOrUndefined(app.pm_id),
    instance: numberOrUndefined(app[instanceVar]),
  };
}

/**
 * The variables of the env files this process was started with
 * (`--env-file=`, `--env-file-if-exists=`), later files winning, as Node
 * reads them. A missing or unreadable file contributes nothing.
 */
export function envFileValues(execArgv: readonly string[]): Record<string, string> {
  const values: Record<string, string> = {};
  execArgv.forEach((arg, index) => {
    const match = /^--env-file(?:-if-exists)?(?:=(.*))?$/.exec(arg);
    if (match === null) return;
    const file = match[1] ?? execArgv[index + 1];
    if (file === undefined) return;
    try {
      Object.assign(values, parseEnv(fs.readFileSync(file, 'utf8')));
    } catch {
      // Absent (the -if-exists case) or unreadable: Node itself reports the latter.
    }
  });
  return values;
}
