/**
 * Hostile input against a real PM2 cluster: thousands of generated requests
 * (malicious paths, broken percent-encodings, odd methods, malformed trace
 * context headers, broken request lines) and a list of known-nasty cases.
 * Every request must get a complete answer with one of the app's statuses,
 * never a 5xx or a dropped connection, and no worker may crash.
 *
 * The fault-injection routes are NOT mounted here (ENABLE_TEST_ROUTES=false):
 * `/_test/*` answers 404 like any unknown path, and the generators never aim
 * at it. A failing run prints fast-check's seed and path to replay it.
 */
import net from 'node:net';
import fc from 'fast-check';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startApp, startPm2, type Pm2, type Pm2ProcessInfo } from '../helpers/pm2';
import { get } from '../helpers/load';
import { parseResponse, rawRequest, type RawResponse } from '../helpers/rawHttp';
import { waitUntil } from '../helpers/waitUntil';

jest.setTimeout(120_000);

const APP = 'e2e-hostile';
const SERVICE = 'e2e-hostile-service';
/** Every status the app or its clientError handler answers with. */
const APP_STATUSES = new Set([200, 400, 404, 405, 408, 414, 422, 431]);
const RUNS = 2500;

let receiver: OtlpReceiver;
let pm2: Pm2;
let port: number;
/** The workers as a test found them. */
let workersAtStart: Pm2ProcessInfo[];

async function workers(): Promise<Pm2ProcessInfo[]> {
  return (await pm2.list()).filter((p) => p.name === APP).sort((a, b) => a.pm_id - b.pm_id);
}

beforeAll(async () => {
  receiver = await startReceiver();
  pm2 = await startPm2();
  port = await startApp(pm2, APP, {
    OTEL_SERVICE_NAME: SERVICE,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl,
    OTEL_BSP_SCHEDULE_DELAY: '200',
    // Explicitly off, whatever the runner's environment says: PM2 passes it on.
    ENABLE_TEST_ROUTES: 'false',
  });
});

beforeEach(async () => {
  workersAtStart = await workers();
});

// Every test leaves the workers as it found them: the same two, not
// restarted, online and serving.
afterEach(async () => {
  for (let i = 0; i < 4; i += 1) expect((await get(port, '/')).status).toBe(200);
  const after = await workers();
  expect(after.map((p) => [p.pm_id, p.pid, p.restarts, p.status])).toEqual(workersAtStart.map((p) => [p.pm_id, p.pid, p.restarts, 'online']));
});

afterAll(async () => {
  await pm2?.kill();
  await receiver?.close();
});

let nextMarker = 1;

/**
 * Sends marker requests (each with a trace id of its own) until a server
 * span of each worker has arrived. A worker exports its spans in the order
 * they ended, so everything it did before its marker has arrived by then;
 * and what it logged then has long been written.
 */
async function markThrough(): Promise<void> {
  const pids = workersAtStart.map((p) => p.pid);
  const traces = new Set<string>();
  await waitUntil(
    () => `a marker span from each of ${pids.join(', ')}`,
    async () => {
      const marked = new Set(receiver.spans.filter((s) => s.kind === 2 && traces.has(s.traceId)).map((s) => Number(s.resource['process.pid'])));
      if (pids.every((pid) => marked.has(pid))) return true;
      for (let i = 0; i < 4; i += 1) {
        const traceId = (nextMarker++).toString(16).padStart(32, 'f');
        traces.add(traceId);
        expect((await get(port, '/items/1', { traceparent: `00-${traceId}-00f067aa0ba902b7-01` })).status).toBe(200);
      }
      return false;
    },
    30_000,
    400,
  );
}

// ---------------------------------------------------------------------------
// Generators

/** Percent-encodes every byte of the UTF-8 form (lone surrogates become U+FFFD, never a URIError). */
function percentEncode(text: string): string {
  return [...Buffer.from(text, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
}

const nastySegment = fc.constantFrom(
  '..', '.', '', '%2e%2e', '%2E%2E', '%2e', '..%2f', '%2f..', '%00', 'a%00b', '%E0%A4%A', '%E0%A4', '%zz', '%', '%%', '%2', '%FF', '%C0%AF',
  '%ED%A0%80', '%F0%9F%98%80', '%2F', '%5C', '%u002e', '~', ';', ';jsessionid=1', 'etc', 'passwd', 'items', 'healthz', 'readyz', 'ITEMS',
  '0', '-0', '+1', '1e3', '0x10', '1.5', '99999999999999999999', '-9007199254740993', '9007199254740991', 'NaN', 'Infinity', '%31',
);
const segment = fc.oneof(
  { weight: 4, arbitrary: nastySegment },
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@-]{0,24}$/) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 8 }).map(percentEncode) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 8 }).map(percentEncode) },
  { weight: 1, arbitrary: fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n }).map(String) },
);
/** Very long segments: up to about twice the app's 8 KiB URL limit (414), under the parser's 64 KiB limit. */
const longSegment = fc
  .tuple(fc.constantFrom('a', '9', '%2e', '%zz', '%C3%A9', '..%2f'), fc.integer({ min: 256, max: 16_000 }))
  .map(([unit, length]) => unit.repeat(Math.ceil(length / unit.length)));
const path = fc.oneof(
  { weight: 6, arbitrary: fc.array(segment, { maxLength: 6 }).map((segments) => `/${segments.join('/')}`) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('/items/', '/items/%20', '/', '//', '/./items/', '/items/../items/'), segment).map(([prefix, s]) => prefix + s) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('/items/', '/', '/a/'), longSegment).map(([prefix, s]) => prefix + s) },
  // The app's own routes, so that the trace headers reach a handler and a span.
  { weight: 4, arbitrary: fc.oneof(fc.constantFrom('/', '/healthz', '/readyz'), fc.integer({ min: -1e9, max: 1e12 }).map((id) => `/items/${id}`)) },
);
const queryPart = fc.oneof(
  fc.constantFrom('x=%zz', '%E0%A4%A=1', 'a[b][c]=1', '__proto__=1', 'constructor[prototype][x]=1', 'a=1&a=2&a=3', '=', '&&&', '%00=%00', '+=+'),
  fc.tuple(fc.stringMatching(/^[A-Za-z0-9%_.-]{0,10}$/), fc.stringMatching(/^[A-Za-z0-9%_.~+-]{0,20}$/)).map(([k, v]) => `${k}=${v}`),
);
const query = fc.option(fc.array(queryPart, { minLength: 1, maxLength: 8 }).map((parts) => `?${parts.join('&')}`), { nil: '' });

/** Request targets with bytes no client would send unencoded: most are 400 from the parser. */
const rawTarget = fc.oneof(
  fc.constantFrom('/a\u0000b', '/a b', '/a\tb', '/\u00e9', '/items/1\u007f', '*', 'items', '', '/%', 'http://evil.example/items/1', '//evil.example', '/#x', '/?#'),
  fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 20 }).map((s) => `/${s.replace(/[\r\n]/g, '')}`),
);

const METHODS = ['GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'PROPFIND', 'TRACE', 'MKCOL', 'LOCK', 'SEARCH', 'PURGE', 'QUERY', 'CONNECT'];
const method = fc.oneof(
  { weight: 30, arbitrary: fc.constantFrom(...METHODS) },
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Z]{1,12}$/) },
  { weight: 1, arbitrary: fc.constantFrom('G@T', 'get', 'GE T', 'GET\u0000', '\u00c9T', 'M-SEARCH', '-', '') },
);

const hex = (length: number): fc.Arbitrary<string> => fc.stringMatching(new RegExp(`^[0-9a-f]{${length}}$`));
const traceparent = fc.oneof(
  fc.tuple(hex(32), hex(16), fc.constantFrom('00', '01', 'ff', '0g')).map(([t, s, f]) => `00-${t}-${s}-${f}`),
  fc.tuple(fc.constantFrom('00', 'ff', 'FF', '01', 'zz', ''), hex(32), hex(16)).map(([v, t, s]) => `${v}-${t}-${s}-01`),
  fc.tuple(hex(32), hex(16)).map(([t, s]) => `00-${t.toUpperCase()}-${s.toUpperCase()}-01`),
  fc.constant('00-00000000000000000000000000000000-0000000000000000-01'),
  fc.tuple(hex(32), hex(16), fc.string({ maxLength: 200 })).map(([t, s, extra]) => `00-${t}-${s}-01-${extra}`),
  fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 20 })).map(([a, b]) => `00-${'a'.repeat(a)}-${'b'.repeat(b)}-01`),
  fc.string({ maxLength: 100 }),
);
const tracestate = fc.oneof(
  fc.array(fc.tuple(fc.stringMatching(/^[a-z0-9_*/@-]{1,20}$/), fc.stringMatching(/^[\x21-\x2b\x2d-\x3c\x3e-\x7e]{0,30}$/)), { maxLength: 150 }).map((entries) =>
    entries.map(([k, v]) => `${k}=${v}`).join(','),
  ),
  fc.constantFrom('===', ',,,', 'a=b=c', 'a=,=b', ' , ', 'k='.repeat(1000)),
  fc.string({ maxLength: 300 }),
);
const baggage = fc.oneof(
  fc.array(fc.tuple(fc.stringMatching(/^[A-Za-z0-9%_-]{0,12}$/), fc.stringMatching(/^[A-Za-z0-9%=;_-]{0,24}$/)), { maxLength: 300 }).map((entries) =>
    entries.map(([k, v]) => `${k}=${v}`).join(','),
  ),
  fc.constantFrom('%zz=%E0%A4%A', 'k=v;prop=%;=;', '=,=,==', ';;;', 'k=v,'.repeat(4000)),
  fc.integer({ min: 1000, max: 20_000 }).map((n) => `k=${'v'.repeat(n)}`),
  fc.string({ maxLength: 300 }),
);
/** Drops control characters (all of them, or only CR and LF) by code, not by a regex of control characters. */
function dropControls(text: string, keep: (code: number) => boolean): string {
  return [...text]
    .filter((c) => {
      const code = c.charCodeAt(0);
      return (code >= 0x20 && code !== 0x7f) || keep(code);
    })
    .join('');
}

/** Header values: visible ASCII, tabs, obs-text, now and then a control byte (400); never CR or LF. */
const headerValue = fc.oneof(
  { weight: 24, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 60 }).map((s) => dropControls(s, (code) => code === 0x09)) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 20 }).map((s) => dropControls(s, (code) => code !== 0x0a && code !== 0x0d)) },
  { weight: 4, arbitrary: fc.uint8Array({ min: 0x80, max: 0xff, maxLength: 20 }).map((b) => Buffer.from(b).toString('latin1')) },
  { weight: 4, arbitrary: fc.integer({ min: 1000, max: 12_000 }).map((n) => 'x'.repeat(n)) },
);
const headerName = fc.oneof(
  fc.constantFrom('user-agent', 'accept', 'accept-encoding', 'accept-language', 'cookie', 'referer', 'origin', 'authorization', 'range', 'if-none-match',
    'if-modified-since', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'forwarded', 'x-request-id', 'host', 'content-type'),
  fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}$/).map((n) => `x-${n}`),
);
const header = fc.oneof(
  { weight: 16, arbitrary: traceparent.map((v): [string, string] => ['traceparent', v]) },
  { weight: 12, arbitrary: tracestate.map((v): [string, string] => ['tracestate', v]) },
  { weight: 12, arbitrary: baggage.map((v): [string, string] => ['baggage', v]) },
  { weight: 20, arbitrary: fc.tuple(headerName, headerValue) },
  // Broken header lines: no colon, a space in the name, obsolete folding (all 400).
  { weight: 1, arbitrary: fc.constantFrom<[string, string]>(['x a', 'b'], ['x-a', 'b\r\n folded'], ['', 'empty name'], ['x-\u0000', 'nul']) },
);

interface GeneratedRequest {
  method: string;
  target: string;
  version: string;
  host: 'normal' | 'none' | 'twice';
  headers: [string, string][];
  /** Split the bytes in two writes at this fraction (0: one write). */
  split: number;
}

/**
 * Requests stay under the parser's 64 KiB limit (MAX_HEADER_SIZE in
 * src/server.ts): above it the server stops reading mid-request, and the
 * fixed cases below cover that.
 */
const request: fc.Arbitrary<GeneratedRequest> = fc.record({
  method,
  target: fc.oneof({ weight: 16, arbitrary: fc.tuple(path, query).map(([p, q]) => p + q) }, { weight: 1, arbitrary: rawTarget }),
  version: fc.oneof({ weight: 16, arbitrary: fc.constant('HTTP/1.1') }, { weight: 2, arbitrary: fc.constant('HTTP/1.0') }, { weight: 1, arbitrary: fc.constantFrom('HTTP/1.2', 'HTTP/2.0', 'HTTP/1.1 x', 'HTTP/1', 'http/1.1') }),
  host: fc.oneof({ weight: 16, arbitrary: fc.constant<GeneratedRequest['host']>('normal') }, { weight: 1, arbitrary: fc.constantFrom<GeneratedRequest['host']>('none', 'twice') }),
  headers: fc.array(header, { maxLength: 10 }),
  split: fc.constantFrom(0, 0, 0, 0.1, 0.5, 0.9),
}).filter((r) => serialize(r).length < 60 * 1024);

function serialize(r: GeneratedRequest): Buffer {
  const lines = [`${r.method} ${r.target} ${r.version}`];
  if (r.host !== 'none') lines.push(`Host: 127.0.0.1:${port}`);
  if (r.host === 'twice') lines.push('Host: other.example');
  for (const [name, value] of r.headers) lines.push(`${name}: ${value}`);
  lines.push('Connection: close', '', '');
  // Non-ASCII characters go out as their UTF-8 bytes (obs-text in header values, 400 in a request line).
  return Buffer.from(lines.join('\r\n'), 'utf8');
}

function show(r: RawResponse): string {
  return `status ${r.status}, complete ${r.complete}, error ${r.error ?? '-'}, timedOut ${r.timedOut}: ${JSON.stringify(r.raw.slice(0, 300))}`;
}

/** Whether the (non-empty) body of an error response is the app's JSON `{ error, status }`. */
function isJsonError(r: RawResponse): boolean {
  try {
    const body = JSON.parse(r.body) as { error?: unknown; status?: unknown };
    return typeof body.error === 'string' && body.status === r.status;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------

test(`${RUNS} generated hostile requests each get a complete answer with one of the app's statuses, and no worker crashes`, async () => {
  const statuses = new Map<number, number>();
  let sent = 0;
  let incomplete = 0;
  let nonJsonErrors = 0;

  await fc.assert(
    fc.asyncProperty(request, async (generated) => {
      const bytes = serialize(generated);
      const cut = Math.floor(bytes.length * generated.split);
      const chunks = cut > 0 ? [bytes.subarray(0, cut), bytes.subarray(cut)] : [bytes];
      const response = await rawRequest(port, chunks, { head: generated.method === 'HEAD', chunkDelayMs: 2, timeoutMs: 5000 });
      sent += 1;
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      if (!response.complete || response.error !== undefined || response.timedOut) incomplete += 1;
      if (response.status >= 400 && response.body !== '' && !isJsonError(response)) nonJsonErrors += 1;
      // The properties: a whole response, never reset, never 5xx, only statuses the app uses.
      if (!response.complete || response.error !== undefined || response.timedOut) throw new Error(`incomplete answer: ${show(response)}`);
      if (!APP_STATUSES.has(response.status)) throw new Error(`unexpected status: ${show(response)}`);
    }),
    { numRuns: RUNS },
  );

  expect(sent).toBeGreaterThanOrEqual(RUNS);
  expect(incomplete).toBe(0);
  expect([...statuses.keys()].filter((s) => s >= 500)).toEqual([]);
  // Every error response with a body is the app's JSON (only Node's own bodiless 400s are exempt).
  expect(nonJsonErrors).toBe(0);
  // The generators reach the app's routes and its error paths, not only the parser's 400.
  expect(statuses.get(200) ?? 0).toBeGreaterThan(RUNS / 20);
  expect(statuses.get(404) ?? 0).toBeGreaterThan(RUNS / 20);
  expect(statuses.get(400) ?? 0).toBeGreaterThan(RUNS / 20);
  expect(statuses.get(422) ?? 0).toBeGreaterThan(0);
  expect(statuses.get(405) ?? 0).toBeGreaterThan(0);
  expect(statuses.get(414) ?? 0).toBeGreaterThan(0);

  // Everything the workers did for those requests has been exported and logged before their markers:
  // no server span was marked as an error (5xx), nothing was logged as an unexpected failure.
  await markThrough();
  expect(receiver.spans.filter((s) => s.kind === 2).length).toBeGreaterThan(RUNS / 20);
  expect(receiver.spans.filter((s) => s.kind === 2 && s.status.code === 2)).toHaveLength(0);
  expect(pm2.errLog().match(/"msg":"request failed"/g) ?? []).toHaveLength(0);
});

// ---------------------------------------------------------------------------

const CRLF = '\r\n';
const close = `Host: 127.0.0.1${CRLF}Connection: close${CRLF}${CRLF}`;
const requestLine = (target: string, method = 'GET', version = 'HTTP/1.1'): string => `${method} ${target} ${version}${CRLF}${close}`;
const withHeaders = (target: string, headers: string[]): string => `GET ${target} HTTP/1.1${CRLF}${headers.map((h) => h + CRLF).join('')}${close}`;

const NASTY: { name: string; bytes: string; expected: number[] }[] = ([
  ['a URL of 10 KB', requestLine(`/${'a'.repeat(10 * 1024)}`), [414]],
  ['a URL of 100 KB', requestLine(`/${'a'.repeat(100 * 1024)}`), [414]],
  ['one header of 100 KB', withHeaders('/', [`x-big: ${'a'.repeat(100 * 1024)}`]), [431]],
  ['5000 small headers', withHeaders('/', Array.from({ length: 5000 }, (_, i) => `x-h${i}: v`)), [431]],
  ['an invalid percent-encoding in the id', requestLine('/items/%E0%A4%A'), [422]],
  ['an id beyond the safe integers', requestLine('/items/99999999999999999999'), [422]],
  ['an invalid percent-encoding in the query', requestLine('/items/1?x=%zz'), [200]],
  ['an encoded path traversal', requestLine('/%2e%2e/%2e%2e/etc/passwd'), [404]],
  ['a NUL byte in the path', requestLine('/items/1\u0000'), [400]],
  ['an invalid method token', requestLine('/', 'G@T'), [400]],
  ['a lower-case method', requestLine('/', 'get'), [400]],
  ['a method no route knows', requestLine('/', 'PROPFIND'), [405]],
  ['a fault route, not mounted here', requestLine('/_test/uncaught'), [404]],
  ['a traceparent with upper-case hex', withHeaders('/items/1', ['traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01']), [200]],
  ['a traceparent with version ff', withHeaders('/items/1', ['traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01']), [200]],
  ['a traceparent too long', withHeaders('/items/1', [`traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-${'a'.repeat(4096)}`]), [200]],
  ['a baggage of 64 KB of k=v,', withHeaders('/', [`baggage: ${'k=v,'.repeat(16 * 1024)}`]), [200, 431]],
  ['a tracestate with 100 entries', withHeaders('/items/1', ['traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', `tracestate: ${Array.from({ length: 100 }, (_, i) => `k${i}=v${i}`).join(',')}`]), [200]],
  ['HTTP/1.0 without Host', `GET / HTTP/1.0${CRLF}${CRLF}`, [200, 400]],
  ['HTTP/1.1 without Host', `GET / HTTP/1.1${CRLF}Connection: close${CRLF}${CRLF}`, [400]],
  ['both Content-Length and Transfer-Encoding (smuggling)', `POST / HTTP/1.1${CRLF}Host: x${CRLF}Content-Length: 5${CRLF}Transfer-Encoding: chunked${CRLF}Connection: close${CRLF}${CRLF}0${CRLF}${CRLF}`, [400]],
  ['two different Content-Lengths', `POST / HTTP/1.1${CRLF}Host: x${CRLF}Content-Length: 1${CRLF}Content-Length: 2${CRLF}Connection: close${CRLF}${CRLF}ab`, [400]],
  ['a TLS ClientHello on the plain port', '\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u0001\u00fc\u0003\u0003', [400]],
] as [string, string, number[]][]).map(([name, bytes, expected]) => ({ name, bytes, expected }));

test.each(NASTY)('answers $name with $expected', async ({ bytes, expected }) => {
  const response = await rawRequest(port, bytes);
  expect(response.complete).toBe(true);
  expect(response.timedOut).toBe(false);
  expect(expected).toContain(response.status);
  if (response.status >= 400 && response.body !== '') expect(isJsonError(response)).toBe(true);
});

// Without a 'connect' listener Node would destroy the socket of a CONNECT
// request: the client would get no answer at all.
test('answers CONNECT with a complete 4xx response instead of dropping the connection', async () => {
  const response = await rawRequest(port, `CONNECT 127.0.0.1:443 HTTP/1.1${CRLF}Host: 127.0.0.1:443${CRLF}${CRLF}`, { timeoutMs: 2000 });
  expect(response.complete).toBe(true);
  expect(APP_STATUSES).toContain(response.status);
});

// isLongRequestLine() judges from the chunk the parser failed on; a big
// header that arrives in pieces fails on a chunk with no line end, which must
// not be taken for the middle of a long request target.
test('answers a 100 KB header that arrives in pieces with 431, not 414', async () => {
  const pieces = [`GET / HTTP/1.1${CRLF}Host: 127.0.0.1${CRLF}x-big: `, ...Array.from({ length: 13 }, () => 'a'.repeat(8192)), `${CRLF}Connection: close${CRLF}${CRLF}`];
  const response = await rawRequest(port, pieces, { chunkDelayMs: 5 });
  expect(response.status).toBe(431);
});

test('an all-zero traceparent is ignored: 200, and the server span starts a new trace', async () => {
  const zero = '00-00000000000000000000000000000000-0000000000000000-01';
  const response = await rawRequest(port, withHeaders('/items/424242', [`traceparent: ${zero}`]));
  expect(response.status).toBe(200);
  const spans = await receiver.waitFor((all) => all.some((s) => s.kind === 2 && s.attributes['url.path'] === '/items/424242'), 10_000);
  const server = spans.filter((s) => s.kind === 2 && s.attributes['url.path'] === '/items/424242');
  expect(server).toHaveLength(1);
  expect(server[0]!.traceId).toMatch(/^[0-9a-f]{32}$/);
  expect(server[0]!.traceId).not.toBe('0'.repeat(32));
  expect(server[0]!.parentSpanId).toBe('');
});

test('a malformed traceparent never becomes the parent of the server span', async () => {
  const bad: [number, string][] = [
    [424243, '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01'],
    [424244, `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-${'a'.repeat(64)}`],
    [424245, '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01'],
    [424246, 'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'],
  ];
  for (const [id, value] of bad) expect((await get(port, `/items/${id}`, { traceparent: value })).status).toBe(200);
  const isOurs = (s: ReceivedSpan): boolean => s.kind === 2 && bad.some(([id]) => s.attributes['url.path'] === `/items/${id}`);
  const spans = (await receiver.waitFor((all) => all.filter(isOurs).length === bad.length, 10_000)).filter(isOurs);
  expect(spans).toHaveLength(bad.length);
  for (const span of spans) {
    expect(span.parentSpanId).toBe('');
    expect(span.traceId).not.toBe('4bf92f3577b34da6a3ce929d0e0e4736');
  }
});

/** A connection that has sent `partial`; `finish(rest)` sends the rest and resolves with everything received. */
async function halfRequest(partial: string): Promise<{ finish(rest: string): Promise<{ raw: string; error?: string }> }> {
  const socket = net.connect(port, '127.0.0.1');
  let raw = '';
  let error: string | undefined;
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (raw += chunk));
  socket.on('error', (caught: NodeJS.ErrnoException) => (error ??= caught.code ?? caught.message));
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  socket.write(partial);
  return {
    async finish(rest) {
      if (!socket.destroyed) socket.write(rest);
      await closed;
      return { raw, error };
    },
  };
}

test('clients that send half a request line and stop do not hurt the server, which answers each once it is complete', async () => {
  const stalled = await Promise.all(Array.from({ length: 4 }, () => halfRequest('GET /items/12')));
  // While they hold their connections, others are served.
  for (let i = 0; i < 4; i += 1) expect((await get(port, '/items/12')).status).toBe(200);
  const answers = await Promise.all(stalled.map((s) => s.finish(` HTTP/1.1${CRLF}Host: 127.0.0.1${CRLF}Connection: close${CRLF}${CRLF}`)));
  // Each answer is the 200 to the completed request, and the first thing the server sent:
  // nothing was answered to the half request, and the connection was kept.
  for (const { raw, error } of answers) {
    expect(error).toBeUndefined();
    expect(raw.startsWith('HTTP/1.1 200 ')).toBe(true);
    expect(parseResponse(raw, { closed: true })).toMatchObject({ status: 200, body: '{"item_id":12}', complete: true });
  }
});
