import supertest from 'supertest';
import type Koa from 'koa';
import { createApp, type AppOptions } from '../../src/app';
import type { Logger } from '../../src/log';

/** A logger whose calls the test can inspect; nothing reaches stdout/stderr. */
function fakeLog(): { log: Logger; error: jest.Mock; warn: jest.Mock; info: jest.Mock } {
  const error = jest.fn();
  const warn = jest.fn();
  const info = jest.fn();
  return { log: { error, warn, info, isLevelEnabled: () => false } as unknown as Logger, error, warn, info };
}

/** A fresh app per test, driven without a port. */
function request(app: Koa) {
  return supertest(app.callback());
}

function build(options: AppOptions = {}): { app: Koa; error: jest.Mock } {
  const { log, error } = fakeLog();
  return { app: createApp({ log, ...options }), error };
}

/**
 * Mounts a middleware after the router: requests the router does not match
 * fall through to it, so it stands in for a handler that fails.
 */
function failOn(app: Koa, path: string, makeError: () => unknown): Koa {
  app.use(async (ctx, next) => {
    if (ctx.path === path) throw makeError();
    await next();
  });
  return app;
}

describe('GET /', () => {
  it('answers the greeting as JSON', async () => {
    const { app } = build();
    const res = await request(app).get('/');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.text).toBe('{"message":"Hello World from Koa with auto-instrumentation!"}');
  });
});

describe('GET /items/:id', () => {
  it.each([
    ['42', 42],
    ['-3', -3],
    ['007', 7],
    ['0', 0],
    ['9007199254740991', 9007199254740991],
    ['-9007199254740991', -9007199254740991],
  ])('answers item_id for the integer %s', async (id, expected) => {
    const { app } = build();
    const res = await request(app).get(`/items/${id}`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({ item_id: expected });
  });

  it('answers exactly {"item_id":42} for /items/42', async () => {
    const { app } = build();
    const res = await request(app).get('/items/42');
    expect(res.text).toBe('{"item_id":42}');
  });

  it.each([
    'abc',
    '1.5',
    '1e3',
    '0x10',
    '+5',
    '9007199254740992', // one beyond Number.MAX_SAFE_INTEGER
    '99999999999999999999',
    '%20',
    '%20%20',
    '%', // malformed percent-encoding reaches the handler undecoded
    '%E0%A4%A',
    '4%202',
    '-',
  ])('answers 422 naming the parameter when the id is %s', async (id) => {
    const { app, error } = build();
    const res = await request(app).get(`/items/${id}`);
    expect(res.status).toBe(422);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({ error: 'path parameter id must be an integer', status: 422, param: 'id' });
    // An expected client error is not a server fault: nothing is logged.
    expect(error).not.toHaveBeenCalled();
  });

  it('decodes the path parameter before checking it', async () => {
    const { app } = build();
    const res = await request(app).get('/items/4%32');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ item_id: 42 });
  });
});

describe('unknown routes and methods', () => {
  it('answers 404 JSON for a path no route handles', async () => {
    const { app, error } = build();
    const res = await request(app).get('/nope');
    expect(res.status).toBe(404);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({ error: 'no route for GET /nope', status: 404 });
    expect(error).not.toHaveBeenCalled();
  });

  it('answers 404 JSON for /items/ without an id', async () => {
    const { app } = build();
    const res = await request(app).get('/items/');
    expect(res.status).toBe(404);
    expect(res.body).toEqual({ error: 'no route for GET /items/', status: 404 });
  });

  it('answers 405 JSON for POST on a GET-only route', async () => {
    const { app, error } = build();
    const res = await request(app).post('/items/1');
    expect(res.status).toBe(405);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({ error: 'method not allowed', status: 405 });
    expect(error).not.toHaveBeenCalled();
  });

  it('lists GET in the Allow header of a 405', async () => {
    const { app } = build();
    const res = await request(app).post('/items/1');
    expect(res.status).toBe(405);
    expect(res.headers['allow']).toEqual(expect.stringContaining('GET'));
  });
});

describe('unexpected errors', () => {
  it('answers a plain 500 without the message or stack, and logs it once with the request', async () => {
    const { app, error } = build();
    failOn(app, '/boom', () => new Error('database password is hunter2'));
    const res = await request(app).get('/boom?x=1');
    expect(res.status).toBe(500);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.text).toBe('{"error":"Internal Server Error","status":500}');
    expect(res.text).not.toContain('hunter2');
    expect(res.text).not.toContain('at ');

    expect(error).toHaveBeenCalledTimes(1);
    expect(error).toHaveBeenCalledWith(
      expect.objectContaining({ method: 'GET', path: '/boom', status: 500, err: expect.any(Error) }),
      'request failed',
    );
    const fields = error.mock.calls[0]?.[0] as { err: Error };
    expect(fields.err.message).toBe('database password is hunter2');
  });

  it('does not leak the message of a non-exposed 503 error', async () => {
    const { app, error } = build();
    failOn(app, '/busy', () => Object.assign(new Error('pool exhausted at 10.0.0.7'), { status: 503, expose: false }));
    const res = await request(app).get('/busy');
    // The error middleware answers every non-exposed error with a plain 500.
    expect(res.status).toBe(500);
    expect(res.body).toEqual({ error: 'Internal Server Error', status: 500 });
    expect(res.text).not.toContain('pool exhausted');
    expect(error).toHaveBeenCalledTimes(1);
    expect(error).toHaveBeenCalledWith(expect.objectContaining({ method: 'GET', path: '/busy', status: 503 }), 'request failed');
  });

  it('does not expose a 5xx error even when it is marked expose: true', async () => {
    const { app } = build();
    failOn(app, '/boom', () => Object.assign(new Error('secret internals'), { status: 502, expose: true }));
    const res = await request(app).get('/boom');
    expect(res.status).toBe(500);
    expect(res.body).toEqual({ error: 'Internal Server Error', status: 500 });
  });

  it('answers 500 for a thrown non-Error value and logs it once', async () => {
    const { app, error } = build();
    failOn(app, '/boom', () => 'a string, not an Error');
    const res = await request(app).get('/boom');
    expect(res.status).toBe(500);
    expect(res.body).toEqual({ error: 'Internal Server Error', status: 500 });
    expect(error).toHaveBeenCalledTimes(1);
  });

  it('answers an exposed 4xx error with its message and headers, without logging', async () => {
    const { app, error } = build();
    failOn(app, '/limited', () =>
      Object.assign(new Error('slow down'), { status: 429, expose: true, headers: { 'Retry-After': '5' } }),
    );
    const res = await request(app).get('/limited');
    expect(res.status).toBe(429);
    expect(res.headers['retry-after']).toBe('5');
    expect(res.body).toEqual({ error: 'slow down', status: 429 });
    expect(error).not.toHaveBeenCalled();
  });
});

describe('health and readiness', () => {
  it('answers 200 on /healthz', async () => {
    const { app } = build();
    const res = await request(app).get('/healthz');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({ status: 'ok' });
  });

  it('answers 200 on /readyz while running and 503 once shutting down', async () => {
    let shuttingDown = false;
    const { app, error } = build({ isShuttingDown: () => shuttingDown });

    const ready = await request(app).get('/readyz');
    expect(ready.status).toBe(200);
    expect(ready.headers['content-type']).toMatch(/^application\/json/);
    expect(ready.body).toEqual({ status: 'ready' });

    shuttingDown = true;
    const draining = await request(app).get('/readyz');
    expect(draining.status).toBe(503);
    expect(draining.headers['content-type']).toMatch(/^application\/json/);
    expect(draining.body).toEqual({ status: 'shutting down' });
    // A 503 set by a handler is an answer, not an error.
    expect(error).not.toHaveBeenCalled();
  });

  it('answers 200 on /readyz when no isShuttingDown option is given', async () => {
    const res = await request(createApp({ log: fakeLog().log })).get('/readyz');
    expect(res.status).toBe(200);
  });
});

describe('test routes', () => {
  it('are not mounted unless asked for', async () => {
    const res = await request(build().app).get('/_test/slow?ms=0');
    expect(res.status).toBe(404);
  });

  it('answers /_test/slow after ms milliseconds with the pid', async () => {
    const { app } = build({ testRoutes: true });
    const started = Date.now();
    const res = await request(app).get('/_test/slow?ms=150');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ pid: process.pid, ms: 150 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
  });

  it.each(['', '-1', '1.5', 'abc', '30001', '1e3'])('answers 400 on /_test/slow for ms=%s', async (ms) => {
    const { app, error } = build({ testRoutes: true });
    const res = await request(app).get(`/_test/slow?ms=${ms}`);
    expect(res.status).toBe(400);
    expect(res.body).toEqual({ error: 'query parameter ms must be an integer from 0 to 30000', status: 400 });
    expect(error).not.toHaveBeenCalled();
  });

  it('answers 400 on /_test/slow without ms', async () => {
    const res = await request(build({ testRoutes: true }).app).get('/_test/slow');
    expect(res.status).toBe(400);
  });
});
