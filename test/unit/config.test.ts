import { ConfigError, loadConfig } from '../../src/config';

describe('loadConfig', () => {
  it('uses the Gunicorn-equivalent defaults when nothing is set', () => {
    expect(loadConfig({})).toEqual({
      host: '0.0.0.0',
      port: 8000,
      backlog: 2048,
      keepAliveTimeoutMs: 2000,
      requestTimeoutMs: 60_000,
      maxConnections: 1000,
      drainTimeoutMs: 3000,
      flushTimeoutMs: 2000,
      testRoutes: false,
      logLevel: 'info',
      accessLog: true,
    });
  });

  it('returns a frozen object', () => {
    const config = loadConfig({});
    expect(Object.isFrozen(config)).toBe(true);
    expect(() => {
      (config as { port: number }).port = 1;
    }).toThrow(TypeError);
  });

  it('treats empty and blank values as unset', () => {
    expect(loadConfig({ HOST: '', PORT: '  ', BACKLOG: '' })).toMatchObject({ host: '0.0.0.0', port: 8000, backlog: 2048 });
  });

  it('reads every setting from its variable', () => {
    expect(
      loadConfig({
        HOST: '127.0.0.1',
        PORT: '3000',
        BACKLOG: '511',
        KEEP_ALIVE_TIMEOUT_MS: '5000',
        REQUEST_TIMEOUT_MS: '30000',
        MAX_CONNECTIONS: '250',
        DRAIN_TIMEOUT_MS: '1000',
        FLUSH_TIMEOUT_MS: '1500',
        ENABLE_TEST_ROUTES: 'true',
        LOG_LEVEL: 'warning',
        ACCESS_LOG: 'false',
      }),
    ).toEqual({
      host: '127.0.0.1',
      port: 3000,
      backlog: 511,
      keepAliveTimeoutMs: 5000,
      requestTimeoutMs: 30_000,
      maxConnections: 250,
      drainTimeoutMs: 1000,
      flushTimeoutMs: 1500,
      testRoutes: true,
      logLevel: 'warn',
      accessLog: false,
    });
  });

  it('rejects a flag that is neither true nor false', () => {
    expect(() => loadConfig({ ENABLE_TEST_ROUTES: 'yes' })).toThrow(new ConfigError('ENABLE_TEST_ROUTES must be true or false, got "yes"'));
  });

  it("maps Gunicorn's loglevel names onto pino's levels, in any case", () => {
    expect(['debug', 'INFO', 'warning', 'error', 'critical', 'trace', 'silent'].map((LOG_LEVEL) => loadConfig({ LOG_LEVEL }).logLevel)).toEqual([
      'debug',
      'info',
      'warn',
      'error',
      'fatal',
      'trace',
      'silent',
    ]);
  });

  it('rejects an unknown LOG_LEVEL with the accepted names', () => {
    expect(() => loadConfig({ LOG_LEVEL: 'verbose' })).toThrow(
      new ConfigError('LOG_LEVEL must be one of trace, debug, info, warn, warning, error, critical, fatal, silent, got "verbose"'),
    );
    expect(() => loadConfig({ LOG_LEVEL: '__proto__' })).toThrow(ConfigError);
  });

  it('turns the access log off with ACCESS_LOG=false or 0, and rejects anything but a flag', () => {
    expect(loadConfig({ ACCESS_LOG: '0' }).accessLog).toBe(false);
    expect(loadConfig({ ACCESS_LOG: 'TRUE' }).accessLog).toBe(true);
    expect(() => loadConfig({ ACCESS_LOG: 'off' })).toThrow(new ConfigError('ACCESS_LOG must be true or false, got "off"'));
  });

  it('trims whitespace around values', () => {
    expect(loadConfig({ HOST: ' localhost ', PORT: ' 8080 ' })).toMatchObject({ host: 'localhost', port: 8080 });
  });

  it('accepts port 0 and 65535, the ends of the range', () => {
    expect(loadConfig({ PORT: '0' }).port).toBe(0);
    expect(loadConfig({ PORT: '65535' }).port).toBe(65535);
  });

  it('accepts an IPv6 address as HOST', () => {
    expect(loadConfig({ HOST: '::' }).host).toBe('::');
  });

  it.each([
    [{ PORT: 'abc' }, 'PORT must be an integer from 0 to 65535, got "abc"'],
    [{ PORT: '70000' }, 'PORT must be an integer from 0 to 65535, got "70000"'],
    [{ PORT: '-1' }, 'PORT must be an integer from 0 to 65535, got "-1"'],
    [{ PORT: '0x1F' }, 'PORT must be an integer from 0 to 65535, got "0x1F"'],
    [{ PORT: '1e3' }, 'PORT must be an integer from 0 to 65535, got "1e3"'],
    [{ BACKLOG: '1.5' }, 'BACKLOG must be an integer from 1 to 65535, got "1.5"'],
    [{ BACKLOG: '0' }, 'BACKLOG must be an integer from 1 to 65535, got "0"'],
    [{ MAX_CONNECTIONS: '0' }, 'MAX_CONNECTIONS must be an integer from 1 to 1000000, got "0"'],
    [{ KEEP_ALIVE_TIMEOUT_MS: '2s' }, 'KEEP_ALIVE_TIMEOUT_MS must be an integer from 0 to 3600000, got "2s"'],
    [{ REQUEST_TIMEOUT_MS: '3600001' }, 'REQUEST_TIMEOUT_MS must be an integer from 0 to 3600000, got "3600001"'],
    [{ DRAIN_TIMEOUT_MS: '-5' }, 'DRAIN_TIMEOUT_MS must be an integer from 0 to 600000, got "-5"'],
    [{ FLUSH_TIMEOUT_MS: 'soon' }, 'FLUSH_TIMEOUT_MS must be an integer from 0 to 600000, got "soon"'],
    [{ HOST: 'a b' }, 'HOST must be a host name or IP address, got "a b"'],
    [{ HOST: 'http://example.com' }, 'HOST must be a host name or IP address, got "http://example.com"'],
  ])('rejects %j with an exact message naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(new ConfigError(message));
    expect(() => loadConfig(env)).toThrow(ConfigError);
  });

  it('throws errors named ConfigError', () => {
    let caught: unknown;
    try {
      loadConfig({ PORT: 'abc' });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as Error).name).toBe('ConfigError');
  });

  it('ignores variables it does not own', () => {
    expect(loadConfig({ OTEL_TRACES_EXPORTER: 'console', NODE_ENV: 'production' })).toEqual(loadConfig({}));
  });
});
