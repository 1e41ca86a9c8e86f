import { adoptPm2Env } from '../../otel/pm2Env';

type Env = Record<string, string | undefined>;

/** A worker's env as PM2 forks it: the daemon's variables plus the app's as `pm2_env` JSON. */
function workerEnv(daemon: Env, app: Record<string, unknown>): Env {
  return { ...daemon, pm2_env: JSON.stringify(app) };
}

describe('adoptPm2Env', () => {
  it('returns undefined and leaves env unchanged when not under PM2', () => {
    const env: Env = { OTEL_TRACES_EXPORTER: 'console', PATH: '/usr/bin' };
    const before = { ...env };
    expect(adoptPm2Env(env)).toBeUndefined();
    expect(env).toEqual(before);
  });

  it.each(['{not json', '', '"a string"', 'null', '42'])('returns undefined and leaves env unchanged when pm2_env is %j', (raw) => {
    const env: Env = { OTEL_TRACES_EXPORTER: 'console', OTEL_SERVICE_NAME: 'daemon', pm2_env: raw };
    const before = { ...env };
    expect(adoptPm2Env(env)).toBeUndefined();
    expect(env).toEqual(before);
  });

  it("applies the app's OTEL_ values over the daemon's", () => {
    const env = workerEnv(
      { OTEL_SERVICE_NAME: 'stale-daemon-name', OTEL_TRACES_EXPORTER: 'console' },
      { OTEL_SERVICE_NAME: 'orders', OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317' },
    );
    adoptPm2Env(env);
    expect(env.OTEL_SERVICE_NAME).toBe('orders');
    expect(env.OTEL_TRACES_EXPORTER).toBe('otlp');
    expect(env.OTEL_EXPORTER_OTLP_ENDPOINT).toBe('http://collector:4317');
  });

  it('removes OTEL_ variables only the daemon had', () => {
    const env = workerEnv({ OTEL_EXPORTER_OTLP_HEADERS: 'authorization=old', OTEL_LOG_LEVEL: 'debug' }, { OTEL_SERVICE_NAME: 'orders' });
    adoptPm2Env(env);
    expect(env).not.toHaveProperty('OTEL_EXPORTER_OTLP_HEADERS');
    expect(env).not.toHaveProperty('OTEL_LOG_LEVEL');
    expect(env.OTEL_SERVICE_NAME).toBe('orders');
  });

  it('leaves variables that are not OTEL_ untouched, both ways', () => {
    const env = workerEnv({ PATH: '/usr/bin', PORT: '8000', HOME: '/root' }, { PORT: '9000', NODE_ENV: 'production' });
    adoptPm2Env(env);
    expect(env.PATH).toBe('/usr/bin');
    expect(env.HOME).toBe('/root');
    // PM2 copies the app's non-OTEL values itself, later.
    expect(env.PORT).toBe('8000');
    expect(env).not.toHaveProperty('NODE_ENV');
  });

  it('stringifies number and boolean values, and skips null and object values', () => {
    const env = workerEnv(
      {},
      { OTEL_BSP_MAX_QUEUE_SIZE: 4096, OTEL_SDK_DISABLED: false, OTEL_NULL: null, OTEL_OBJECT: { a: 1 } },
    );
    adoptPm2Env(env);
    expect(env.OTEL_BSP_MAX_QUEUE_SIZE).toBe('4096');
    expect(env.OTEL_SDK_DISABLED).toBe('false');
    expect(env).not.toHaveProperty('OTEL_NULL');
    expect(env).not.toHaveProperty('OTEL_OBJECT');
  });

  it('does not remove pm2_env itself', () => {
    const env = workerEnv({}, { name: 'api' });
    const raw = env.pm2_env;
    adoptPm2Env(env);
    expect(env.pm2_env).toBe(raw);
  });

  it('returns the name, pm_id and NODE_APP_INSTANCE of the process', () => {
    const env = workerEnv({}, { name: 'api', pm_id: 3, NODE_APP_INSTANCE: 1 });
    expect(adoptPm2Env(env)).toEqual({ name: 'api', pmId: 3, instance: 1 });
  });

  it('reads numbers given as strings', () => {
    const env = workerEnv({}, { name: 'api', pm_id: '7', NODE_APP_INSTANCE: '0' });
    expect(adoptPm2Env(env)).toEqual({ name: 'api', pmId: 7, instance: 0 });
  });

  it('reads the instance from the variable named by instance_var', () => {
    const env = workerEnv({}, { name: 'api', pm_id: 2, instance_var: 'INSTANCE_ID', INSTANCE_ID: 4, NODE_APP_INSTANCE: 9 });
    expect(adoptPm2Env(env)).toEqual({ name: 'api', pmId: 2, instance: 4 });
  });

  it('returns undefined fields for what PM2 does not say or says wrongly', () => {
    const env = workerEnv({}, { name: 5, pm_id: 'x', NODE_APP_INSTANCE: 1.5 });
    expect(adoptPm2Env(env)).toEqual({ name: undefined, pmId: undefined, instance: undefined });
    expect(adoptPm2Env(workerEnv({}, {}))).toEqual({ name: undefined, pmId: undefined, instance: undefined });
  });
});
