import { LOG_PREFIX, RateLimitedDiagLogger, writeLine } from '../../otel/diagLogger';

const SECRET = 'Bearer sk_live_S3CR3T';

interface Line {
  level: string;
  time: string;
  pid: number;
  msg: string;
  repeatedSinceLast?: number;
}

let stderr: jest.SpiedFunction<typeof process.stderr.write>;

/** Every line written to stderr so far, parsed. */
function lines(): Line[] {
  return stderr.mock.calls.map(([chunk]) => {
    const text = String(chunk);
    expect(text.endsWith('\n')).toBe(true);
    expect(text.slice(0, -1)).not.toContain('\n');
    return JSON.parse(text) as Line;
  });
}

/** Everything written to stderr so far, as raw text. */
function output(): string {
  return stderr.mock.calls.map(([chunk]) => String(chunk)).join('');
}

beforeEach(() => {
  jest.useFakeTimers({ now: new Date('2030-01-01T00:00:00Z') });
  stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
});

afterEach(() => {
  stderr.mockRestore();
  jest.useRealTimers();
});

describe('writeLine', () => {
  it('writes one JSON line in the app log format, prefixed as the SDK', () => {
    writeLine('warn', 'something happened', { extra: 1 });
    expect(lines()).toEqual([
      { level: 'warn', time: '2030-01-01T00:00:00.000Z', pid: process.pid, msg: `${LOG_PREFIX}something happened`, extra: 1 },
    ]);
  });
});

describe('RateLimitedDiagLogger', () => {
  it('writes a message as one line at its level', () => {
    const logger = new RateLimitedDiagLogger([]);
    logger.error('export failed', 'after', 3, 'retries');
    expect(lines()).toEqual([{ level: 'error', time: '2030-01-01T00:00:00.000Z', pid: process.pid, msg: 'otel: export failed after 3 retries' }]);
  });

  it('writes debug and verbose messages at info level', () => {
    const logger = new RateLimitedDiagLogger([]);
    logger.debug('a debug message');
    logger.verbose('a verbose message');
    expect(lines().map((line) => [line.level, line.msg])).toEqual([
      ['info', 'otel: a debug message'],
      ['info', 'otel: a verbose message'],
    ]);
  });

  it('writes the same message once per 30 s even when its numbers vary', () => {
    const logger = new RateLimitedDiagLogger([]);
    for (let i = 0; i < 50; i += 1) {
      logger.warn(`dropped ${i} spans, queue at ${i * 7}`);
      jest.advanceTimersByTime(100);
    }
    expect(lines()).toHaveLength(1);
    expect(lines()[0]).toMatchObject({ level: 'warn', msg: 'otel: dropped 0 spans, queue at 0' });
    expect(lines()[0]).not.toHaveProperty('repeatedSinceLast');
  });

  it('reports how many repeats it suppressed with the next line after the window', () => {
    const logger = new RateLimitedDiagLogger([]);
    for (let i = 0; i < 50; i += 1) logger.warn(`dropped ${i} spans`);
    jest.setSystemTime(Date.now() + 30_001);
    logger.warn('dropped 99 spans');

    const written = lines();
    expect(written).toHaveLength(2);
    expect(written[1]).toMatchObject({ level: 'warn', msg: 'otel: dropped 99 spans', repeatedSinceLast: 49 });

    // The count starts again after it has been reported.
    jest.setSystemTime(Date.now() + 30_001);
    logger.warn('dropped 1 spans');
    expect(lines()[2]).not.toHaveProperty('repeatedSinceLast');
  });

  it('still suppresses a repeat just inside the window', () => {
    const logger = new RateLimitedDiagLogger([]);
    logger.warn('collector unavailable');
    jest.setSystemTime(Date.now() + 29_999);
    logger.warn('collector unavailable');
    expect(lines()).toHaveLength(1);
  });

  it('limits different messages and levels separately', () => {
    const logger = new RateLimitedDiagLogger([]);
    logger.warn('first problem');
    logger.warn('second problem');
    logger.error('first problem');
    logger.warn('first problem');
    expect(lines().map((line) => `${line.level} ${line.msg}`)).toEqual([
      'warn otel: first problem',
      'warn otel: second problem',
      'error otel: first problem',
    ]);
  });

  it('renders Error arguments as their message', () => {
    const logger = new RateLimitedDiagLogger([]);
    logger.error('export failed:', new Error('connect ECONNREFUSED 127.0.0.1:4317'));
    expect(lines()[0]?.msg).toBe('otel: export failed: connect ECONNREFUSED 127.0.0.1:4317');
    expect(output()).not.toContain('    at ');
  });

  it('renders object arguments as JSON and collapses whitespace to one line', () => {
    const logger = new RateLimitedDiagLogger([]);
    logger.info('retrying\n  in', { delayMs: 500 });
    expect(lines()[0]?.msg).toBe('otel: retrying in {"delayMs":500}');
  });

  it('renders arguments that cannot be JSON without throwing', () => {
    const logger = new RateLimitedDiagLogger([]);
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    expect(() => logger.info('odd', circular, undefined, 10n)).not.toThrow();
    expect(lines()[0]?.msg).toBe('otel: odd [object Object] undefined 10');
  });

  it('never writes a secret, wherever the SDK puts it', () => {
    const logger = new RateLimitedDiagLogger([SECRET, '']);
    logger.error(`request with authorization: ${SECRET} failed`);
    logger.warn('headers were', { authorization: SECRET });
    logger.info('export failed', new Error(`401 for token ${SECRET}`));
    logger.debug(`${SECRET}${SECRET}`);

    expect(lines()).toHaveLength(4);
    expect(output()).not.toContain(SECRET);
    expect(output()).not.toContain('S3CR3T');
    expect(lines()[0]?.msg).toBe('otel: request with authorization: *** failed');
    expect(lines()[3]?.msg).toBe('otel: ******');
  });

  it('counts a redacted message with its repeats', () => {
    const logger = new RateLimitedDiagLogger([SECRET]);
    logger.error(`token ${SECRET} rejected`);
    logger.error(`token ${SECRET} rejected`);
    jest.setSystemTime(Date.now() + 31_000);
    logger.error(`token ${SECRET} rejected`);
    expect(lines()).toEqual([
      expect.objectContaining({ msg: 'otel: token *** rejected' }),
      expect.objectContaining({ msg: 'otel: token *** rejected', repeatedSinceLast: 1 }),
    ]);
    expect(output()).not.toContain('S3CR3T');
  });

  it('redacts a secret that contains another, shorter secret', () => {
    const logger = new RateLimitedDiagLogger(['acme', 'acme-token-S3CR3T']);
    logger.error('rejected token acme-token-S3CR3T');
    expect(lines().map((line) => line.msg)).toEqual(['otel: rejected token ***']);
    expect(output()).not.toContain('S3CR3T');
  });

  it('redacts a secret that contains a tab or repeated spaces', () => {
    const logger = new RateLimitedDiagLogger(['Basic\tS3CR3T', 'Token  S3CR3T2']);
    logger.error('rejected Basic\tS3CR3T');
    // Another message: the same one would be rate-limited, and the second secret never written.
    logger.error('refused Token  S3CR3T2');
    expect(lines().map((line) => line.msg)).toEqual(['otel: rejected ***', 'otel: refused ***']);
    expect(output()).not.toContain('S3CR3T');
  });
});
