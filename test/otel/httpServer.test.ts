/**
 * The kit's server instrumentation against the library it replaces: the same
 * requests, served by the same app, give the same server spans.
 */
import net from 'node:net';
import path from 'node:path';
import { startReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { FIXTURES, listeningPort, SERVER, startChild } from '../helpers/child';

jest.setTimeout(60_000);

let receiver: OtlpReceiver;

beforeAll(async () => {
  receiver = await startReceiver();
});

afterAll(async () => {
  await receiver.close();
});

const TRACE = '6bf92f3577b34da6a3ce929d0e0e4736';

/** Raw request lines and headers, so that Host and the target are exactly what the test says. */
const REQUESTS: Array<[string, string]> = [
  ['plain path', 'GET /items/5 HTTP/1.1\r\nHost: example.test:8080\r\nUser-Agent: kit-test\r\n'],
  ['with traceparent', `GET /items/6 HTTP/1.1\r\nHost: example.test\r\ntraceparent: 00-${TRACE}-00f067aa0ba902b7-01\r\n`],
  ['query with a signature to redact', 'GET /items/7?a=1&sig=secret&b=x%20y HTTP/1.1\r\nHost: example.test\r\n'],
  ['dot segments', 'GET /x/../items/8 HTTP/1.1\r\nHost: example.test\r\n'],
  ['encoded dot segments', 'GET /x/%2e%2e/items/9 HTTP/1.1\r\nHost: example.test\r\n'],
  ['percent-encoded path', 'GET /items/%31%30 HTTP/1.1\r\nHost: example.test\r\n'],
  ['characters the URL parser encodes', 'GET /it"ems/{1}|x HTTP/1.1\r\nHost: example.test\r\n'],
  ['not an integer', 'GET /items/abc HTTP/1.1\r\nHost: example.test\r\n'],
  ['unknown route', 'GET /nowhere HTTP/1.1\r\nHost: example.test\r\n'],
  ['unknown method', 'PROPFIND /items/1 HTTP/1.1\r\nHost: example.test\r\n'],
  ['lower-case known method', 'DELETE /items/1 HTTP/1.1\r\nHost: [::1]:9000\r\n'],
  ['handler error', 'GET /_test/error HTTP/1.1\r\nHost: example.test\r\n'],
  ['HTTP/1.0 without Host', 'GET /items/11 HTTP/1.0\r\n'],
  ['invalid Host', 'GET /items/12 HTTP/1.1\r\nHost: exa mple\r\n'],
  ['numeric Host that is no IPv4 address', 'GET /items/13 HTTP/1.1\r\nHost: 1.2.3.4.5\r\n'],
  ['X-Forwarded-For and -Host', 'GET /items/14 HTTP/1.1\r\nHost: internal:8000\r\nX-Forwarded-For: 203.0.113.9:1234, 10.0.0.1\r\nX-Forwarded-Host: shop.example\r\nX-Forwarded-Proto: https\r\n'],
  ['Forwarded', 'GET /items/15 HTTP/1.1\r\nHost: internal\r\nForwarded: for="[2001:db8::1]:4711";host=api.example:8443;proto=https\r\n'],
  ['absolute-form target', 'GET http://example.test/items/16 HTTP/1.1\r\nHost: example.test\r\n'],
];

function send(port: number, head: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.end(`${head}Connection: close\r\n\r\n`));
    socket.resume();
    socket.on('close', () => resolve());
    socket.on('error', reject);
  });
}

/** What a user sees of a server span, without what differs between two runs. */
function comparable(span: ReceivedSpan): unknown {
  const { 'network.peer.port': _peerPort, ...attributes } = span.attributes;
  return {
    name: span.name,
    kind: span.kind,
    parent: span.traceId === TRACE ? span.parentSpanId : span.parentSpanId === '' ? 'root' : 'child',
    attributes,
    status: span.status,
    events: span.events.map((event) => ({ name: event.name, type: event.attributes['exception.type'], message: event.attributes['exception.message'] })),
  };
}

async function serverSpans(preload: 'kit' | 'library'): Promise<Map<string, unknown>> {
  receiver.reset();
  const env = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcUrl, OTEL_BSP_SCHEDULE_DELAY: '60000', ENABLE_TEST_ROUTES: 'true', HOST: '127.0.0.1', PORT: '0' };
  const child =
    preload === 'kit'
      ? startChild(SERVER, env)
      : startChild(SERVER, env, { preload: path.join(FIXTURES, 'library-http-preload.js') });
  try {
    const port = await listeningPort(child);
    for (const [, head] of REQUESTS) await send(port, head);
    child.process.kill('SIGINT');
    await child.exited;
  } finally {
    await child.stop();
  }
  const server = receiver.spans.filter((s) => s.kind === 2).sort((a, b) => Number(a.startTimeUnixNano - b.startTimeUnixNano));
  expect(server).toHaveLength(REQUESTS.length);
  return new Map(server.map((span, i) => [REQUESTS[i]![0], comparable(span)]));
}

test('gives the same server spans as @opentelemetry/instrumentation-http', async () => {
  const library = await serverSpans('library');
  const kit = await serverSpans('kit');
  for (const [name] of REQUESTS) expect([name, kit.get(name)]).toEqual([name, library.get(name)]);
  // The comparison is not vacuous: these were traced, named and redacted.
  expect(kit.get('plain path')).toMatchObject({ name: 'GET /items/:id', attributes: { 'server.port': 8080, 'url.path': '/items/5', 'http.route': '/items/:id' } });
  expect(kit.get('with traceparent')).toMatchObject({ parent: '00f067aa0ba902b7' });
  expect(kit.get('query with a signature to redact')).toMatchObject({ attributes: { 'url.query': 'a=1&sig=REDACTED&b=x+y' } });
  expect(kit.get('handler error')).toMatchObject({ status: { code: 2 }, attributes: { 'error.type': '500' } });
});
