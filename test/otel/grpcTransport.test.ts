/**
 * The kit's OTLP/gRPC transport on `node:http2` (otel/grpcTransport.ts)
 * against the library's exporter on grpc-js
 * (`@opentelemetry/exporter-trace-otlp-grpc`): the same spans reach a real
 * gRPC receiver with the same metadata, compressed or not, over TLS and
 * mutual TLS; failures carry the same gRPC codes and messages; and the
 * cases grpc-js handles for the library (deadlines, HTTP statuses from a
 * proxy, stream resets, a collector restarted on the same port, an idle
 * session) are handled too.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { SpanKind, type Attributes } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace';
import { Http2GrpcTransport, proxyFor, type GrpcCallError } from '../../otel/grpcTransport';
import { createOtlpTraceExporter } from '../../otel/otlpTraceExporter';
import { startReceiver, type OtlpReceiver, type ReceivedRequest, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startChild } from '../helpers/child';

const TRACES = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

/** Spans made by the SDK: `count` server spans with attributes (and `extra`) and an event, each with a child. */
function someSpans(count = 3, extra: Attributes = {}): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ resource: resourceFromAttributes({ 'service.name': 'grpc-test' }), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  const tracer = provider.getTracer('grpc-transport-test', '1.0.0');
  for (let i = 0; i < count; i++) {
    tracer.startActiveSpan(`GET /items/:id ${i}`, { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'GET', 'url.path': `/items/${i}`, 'http.response.status_code': 200, ...extra } }, (span) => {
      span.addEvent('checked', { 'items.count': i });
      tracer.startSpan('db query').end();
      span.end();
    });
  }
  return exporter.getFinishedSpans();
}

function exportWith(exporter: SpanExporter, spans: ReadableSpan[]): Promise<ExportResult> {
  return new Promise((resolve) => exporter.export(spans, resolve));
}

/** A span as received, without what differs between two exports of the same span (nothing should). */
const sorted = (spans: ReceivedSpan[]): ReceivedSpan[] => [...spans].sort((a, b) => (a.spanId < b.spanId ? -1 : 1));

/** Runs `body` with these variables set in `process.env` (as the preload sets them under PM2), then restores them. */
async function withEnv<T>(vars: Record<string, string>, body: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]));
  Object.assign(process.env, vars);
  try {
    return await body();
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

/** Exports `spans` once through the kit's exporter and once through the library's, to the same URL; both shut down. */
async function bothExport(url: string, spans: ReadableSpan[]): Promise<{ kit: ExportResult; library: ExportResult }> {
  const kit = createOtlpTraceExporter('grpc', url);
  const library = new OTLPTraceExporter({ url });
  try {
    return { kit: await exportWith(kit, spans), library: await exportWith(library, spans) };
  } finally {
    await Promise.all([kit.shutdown(), library.shutdown()]);
  }
}

const failure = (result: ExportResult): { code: unknown; message: string | undefined } => ({
  code: (result.error as { code?: unknown } | undefined)?.code,
  message: result.error?.message,
});

describe('the gRPC transport on node:http2, against the library on grpc-js', () => {
  let receiver: OtlpReceiver;
  beforeEach(async () => {
    receiver = await startReceiver();
  });
  afterEach(async () => {
    await receiver.close();
  });

  test('delivers the same spans with the same metadata', async () => {
    const spans = someSpans();
    const { kit, library } = await withEnv({ OTEL_EXPORTER_OTLP_HEADERS: 'x-tenant=acme,Authorization=Bearer%20t0ken', OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-tenant=orders' }, () =>
      bothExport(receiver.grpcUrl, spans),
    );
    expect([kit.code, library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
    expect(receiver.requests).toHaveLength(2);
    const [fromKit, fromLibrary] = receiver.requests as [ReceivedRequest, ReceivedRequest];
    expect(fromKit.path).toBe(TRACES);
    expect(fromKit.spanCount).toBe(spans.length);
    expect(sorted(receiver.spans.slice(0, spans.length))).toEqual(sorted(receiver.spans.slice(spans.length)));
    // grpc-js appends its own name to the library's user agent.
    const { 'user-agent': kitAgent, ...kitMetadata } = fromKit.headers;
    const { 'user-agent': libraryAgent, ...libraryMetadata } = fromLibrary.headers;
    expect(kitMetadata).toEqual(libraryMetadata);
    expect(kitMetadata).toEqual({ 'x-tenant': 'orders', authorization: 'Bearer t0ken' });
    expect(kitAgent).toMatch(/^OTel-OTLP-Exporter-JavaScript\/\d+\.\d+\.\d+$/);
    expect(libraryAgent?.startsWith(`${kitAgent} grpc-node-js/`)).toBe(true);
  });

  test('compresses with gzip when OTEL_EXPORTER_OTLP_COMPRESSION=gzip, and the receiver decodes the same spans', async () => {
    const spans = someSpans(50);
    const { kit, library } = await withEnv({ OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: 'gzip' }, () => bothExport(receiver.grpcUrl, spans));
    expect([kit.code, library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
    expect(sorted(receiver.spans.slice(0, spans.length))).toEqual(sorted(receiver.spans.slice(spans.length)));
  });

  test('sends a batch larger than HTTP/2 flow-control windows (3 MB) whole', async () => {
    const size = 3 * 1024 * 1024;
    const { kit, library } = await bothExport(receiver.grpcUrl, someSpans(1, { blob: 'x'.repeat(size) }));
    expect([kit.code, library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
    expect(receiver.spans.filter((span) => span.attributes.blob !== undefined).map((span) => (span.attributes.blob as string).length)).toEqual([size, size]);
  });

  test('a refusing collector: the same gRPC status and message', async () => {
    receiver.setFailure('unavailable');
    const { kit, library } = await bothExport(receiver.grpcUrl, someSpans(1));
    expect(failure(kit)).toEqual(failure(library));
    expect(failure(kit)).toEqual({ code: 14, message: '14 UNAVAILABLE: test receiver is set to fail' });
  });

  test('nothing listening: UNAVAILABLE, naming the connection error', async () => {
    const url = receiver.grpcUrl;
    await receiver.close();
    const { kit, library } = await bothExport(url, someSpans(1));
    expect([failure(kit).code, failure(library).code]).toEqual([14, 14]);
    expect(failure(kit).message).toMatch(/^14 UNAVAILABLE: No connection established\. Last error: connect ECONNREFUSED 127\.0\.0\.1:\d+$/);
    receiver = await startReceiver();
  });

  test('a collector that answers late: DEADLINE_EXCEEDED at OTEL_EXPORTER_OTLP_TIMEOUT', async () => {
    const slow = await startReceiver({ answerAfterMs: 3000 });
    try {
      const started = Date.now();
      const { kit, library } = await withEnv({ OTEL_EXPORTER_OTLP_TIMEOUT: '300' }, () => bothExport(slow.grpcUrl, someSpans(1)));
      expect([failure(kit).code, failure(library).code]).toEqual([4, 4]);
      expect(failure(kit).message).toBe('4 DEADLINE_EXCEEDED: Deadline exceeded after 300 ms');
      expect(Date.now() - started).toBeLessThan(2500);
    } finally {
      await slow.close();
    }
  });

  test('a collector restarted on the same port: the next export reconnects', async () => {
    const kit = createOtlpTraceExporter('grpc', receiver.grpcUrl);
    try {
      expect((await exportWith(kit, someSpans(1))).code).toBe(ExportResultCode.SUCCESS);
      const port = Number(new URL(receiver.grpcUrl).port);
      await receiver.close();
      const during = await exportWith(kit, someSpans(1));
      expect(failure(during).code).toBe(14);
      receiver = await startReceiver({ grpcPort: port });
      expect((await exportWith(kit, someSpans(2))).code).toBe(ExportResultCode.SUCCESS);
      expect(receiver.spans).toHaveLength(4);
    } finally {
      await kit.shutdown();
    }
  });
});

describe('the gRPC transport on node:http2, against servers that are not a gRPC collector', () => {
  /** An HTTP/2 server (cleartext) whose streams `answer` handles; closed after the test. */
  async function withServer(answer: (stream: http2.ServerHttp2Stream) => void, body: (url: string) => Promise<void>): Promise<void> {
    const server = http2.createServer();
    server.on('stream', (stream) => {
      stream.on('error', () => undefined);
      stream.resume();
      stream.on('end', () => answer(stream));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await body(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  async function sendOnce(url: string, timeoutMillis = 2000): Promise<{ status: string; code?: number; message?: string; data?: Uint8Array }> {
    const transport = new Http2GrpcTransport({ url, method: TRACES });
    try {
      const response = await transport.send(new Uint8Array([10, 0]), timeoutMillis);
      if (response.status === 'success') return { status: response.status, data: response.data };
      const error = response.error as GrpcCallError;
      return { status: response.status, code: error.code, message: error.message };
    } finally {
      transport.shutdown();
    }
  }

  test.each([
    [503, 14, 'UNAVAILABLE'],
    [429, 14, 'UNAVAILABLE'],
    [401, 16, 'UNAUTHENTICATED'],
    [403, 7, 'PERMISSION_DENIED'],
    [404, 12, 'UNIMPLEMENTED'],
    [400, 13, 'INTERNAL'],
    [500, 2, 'UNKNOWN'],
  ])('a proxy answering HTTP %i: gRPC %i (%s), as grpc-js maps it', async (httpStatus, code, name) => {
    await withServer(
      (stream) => stream.respond({ ':status': httpStatus, 'content-type': 'text/plain' }, { endStream: true }),
      async (url) => expect(await sendOnce(url)).toEqual({ status: 'failure', code, message: `${code} ${name}: Received HTTP status code ${httpStatus}` }),
    );
  });

  test('a trailers-only answer with a status and a percent-encoded message', async () => {
    await withServer(
      (stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '8', 'grpc-message': 'too%20many%20spans' }, { endStream: true }),
      async (url) => expect(await sendOnce(url)).toEqual({ status: 'failure', code: 8, message: '8 RESOURCE_EXHAUSTED: too many spans' }),
    );
  });

  test('a stream reset: REFUSED_STREAM is UNAVAILABLE (retried), others INTERNAL', async () => {
    await withServer(
      (stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM),
      async (url) => expect(await sendOnce(url)).toMatchObject({ status: 'failure', code: 14 }),
    );
    await withServer(
      (stream) => stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR),
      async (url) => expect(await sendOnce(url)).toMatchObject({ status: 'failure', code: 13 }),
    );
  });

  test('an answer without a gRPC status is an error, not a success', async () => {
    await withServer(
      (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.end(Buffer.from([0, 0, 0, 0, 0]));
      },
      async (url) => expect(await sendOnce(url)).toMatchObject({ status: 'failure', code: 13 }),
    );
  });

  test('a gzip-compressed answer is decompressed for the exporter (partial success is read from it)', async () => {
    const message = Buffer.from([0x0a, 0x04, 0x08, 0x02, 0x12, 0x00]);
    const compressed = zlib.gzipSync(message);
    const frame = Buffer.concat([Buffer.from([1, 0, 0, 0, compressed.length]), compressed]);
    await withServer(
      (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-encoding': 'gzip' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(frame);
      },
      async (url) => expect(await sendOnce(url)).toEqual({ status: 'success', data: message }),
    );
  });

  test('an idle session does not keep the process alive', async () => {
    const receiver = await startReceiver();
    const script = path.join(os.tmpdir(), `grpc-idle-${process.pid}.js`);
    fs.writeFileSync(
      script,
      `const { Http2GrpcTransport } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/otel/grpcTransport.js'))});
       new Http2GrpcTransport({ url: process.env.URL, method: ${JSON.stringify(TRACES)} })
         .send(new Uint8Array(0), 5000).then((r) => console.log('sent', r.status));`,
    );
    const child = startChild(script, { URL: receiver.grpcUrl }, { preload: false });
    try {
      let timer: NodeJS.Timeout | undefined;
      const exit = await Promise.race([child.exited, new Promise((resolve) => (timer = setTimeout(() => resolve('still running after 5 s'), 5000)))]);
      clearTimeout(timer);
      expect(exit).toEqual({ code: 0, signal: null });
      expect(child.stdout()).toBe('sent success\n');
    } finally {
      await child.stop();
      await receiver.close();
      fs.rmSync(script, { force: true });
    }
  });
});

describe('the gRPC transport on node:http2 over TLS', () => {
  let dir: string;
  const pem = (name: string): Buffer => fs.readFileSync(path.join(dir, name));
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'grpc-tls-'));
    fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=kit test CA');
    for (const name of ['server', 'client']) {
      openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
      openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', ...(name === 'server' ? ['-extfile', 'server.ext'] : []));
    }
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('https:// with OTEL_EXPORTER_OTLP_CERTIFICATE: delivered, as by the library', async () => {
    const receiver = await startReceiver({ grpcTls: { key: pem('server.key'), cert: pem('server.pem') } });
    try {
      expect(receiver.grpcUrl.startsWith('https://')).toBe(true);
      const { kit, library } = await withEnv({ OTEL_EXPORTER_OTLP_CERTIFICATE: path.join(dir, 'ca.pem') }, () => bothExport(receiver.grpcUrl, someSpans(2)));
      expect([kit.code, library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
      expect(receiver.spans).toHaveLength(8);
    } finally {
      await receiver.close();
    }
  });

  test('a certificate the client does not trust: UNAVAILABLE, nothing sent', async () => {
    const receiver = await startReceiver({ grpcTls: { key: pem('server.key'), cert: pem('server.pem') } });
    try {
      const { kit, library } = await bothExport(receiver.grpcUrl, someSpans(1));
      expect([failure(kit).code, failure(library).code]).toEqual([14, 14]);
      expect(failure(kit).message).toMatch(/certificate/i);
      expect(receiver.spans).toHaveLength(0);
    } finally {
      await receiver.close();
    }
  });

  test('mutual TLS with OTEL_EXPORTER_OTLP_CLIENT_KEY and _CLIENT_CERTIFICATE; refused without them', async () => {
    const receiver = await startReceiver({ grpcTls: { key: pem('server.key'), cert: pem('server.pem'), clientCa: pem('ca.pem') } });
    try {
      const trust = { OTEL_EXPORTER_OTLP_CERTIFICATE: path.join(dir, 'ca.pem') };
      const withClient = await withEnv({ ...trust, OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: path.join(dir, 'client.key'), OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: path.join(dir, 'client.pem') }, () =>
        bothExport(receiver.grpcUrl, someSpans(1)),
      );
      expect([withClient.kit.code, withClient.library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
      expect(receiver.spans).toHaveLength(4);
      const without = await withEnv(trust, () => bothExport(receiver.grpcUrl, someSpans(1)));
      expect([without.kit.code, without.library.code]).toEqual([ExportResultCode.FAILED, ExportResultCode.FAILED]);
      expect(receiver.spans).toHaveLength(4);
    } finally {
      await receiver.close();
    }
  });
});

describe('the gRPC transport on node:http2 through an HTTP proxy, as grpc-js reads it from the environment', () => {
  /** A CONNECT proxy on loopback that records each tunnel's target and credentials. */
  async function startProxy(answer = 200): Promise<{ url: string; tunnels: Array<{ target: string; auth: string | undefined }>; close(): Promise<void> }> {
    const tunnels: Array<{ target: string; auth: string | undefined }> = [];
    const sockets = new Set<net.Socket>();
    const server = http.createServer((_req, res) => res.writeHead(405).end());
    server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
      tunnels.push({ target: req.url ?? '', auth: req.headers['proxy-authorization'] });
      sockets.add(client);
      if (answer !== 200) return void client.end(`HTTP/1.1 ${answer} No\r\nContent-Length: 0\r\n\r\n`);
      const [host, port] = (req.url ?? '').split(':');
      const upstream = net.connect(Number(port), host, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length > 0) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      sockets.add(upstream);
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return {
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      tunnels,
      close: async () => {
        for (const socket of sockets) socket.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  }

  let receiver: OtlpReceiver;
  beforeEach(async () => {
    receiver = await startReceiver();
  });
  afterEach(async () => {
    await receiver.close();
  });

  test('grpc_proxy with credentials: both tunnel through it, authenticated', async () => {
    const proxy = await startProxy();
    try {
      const proxyUrl = proxy.url.replace('http://', 'http://otel:s%3Acret@');
      const { kit, library } = await withEnv({ grpc_proxy: proxyUrl }, () => bothExport(receiver.grpcUrl, someSpans(1)));
      expect([kit.code, library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
      const authority = new URL(receiver.grpcUrl).host;
      const auth = `Basic ${Buffer.from('otel:s:cret').toString('base64')}`;
      expect(proxy.tunnels).toEqual([{ target: authority, auth }, { target: authority, auth }]);
      expect(receiver.spans).toHaveLength(4);
    } finally {
      await proxy.close();
    }
  });

  test('no_grpc_proxy (or no_proxy) listing the host: no tunnel', async () => {
    const proxy = await startProxy();
    try {
      for (const exempt of [{ no_grpc_proxy: '127.0.0.0/8' }, { no_proxy: 'example.com,.0.1' }] as Array<Record<string, string>>) {
        const { kit, library } = await withEnv({ http_proxy: proxy.url, ...exempt }, () => bothExport(receiver.grpcUrl, someSpans(1)));
        expect([kit.code, library.code]).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
      }
      expect(proxy.tunnels).toEqual([]);
    } finally {
      await proxy.close();
    }
  });

  test('a proxy that refuses the tunnel: UNAVAILABLE, naming the proxy and its answer, never its credentials', async () => {
    const proxy = await startProxy(407);
    try {
      const kit = await withEnv({ https_proxy: proxy.url.replace('http://', 'http://otel:hunter2@') }, async () => {
        const exporter = createOtlpTraceExporter('grpc', receiver.grpcUrl);
        try {
          return await exportWith(exporter, someSpans(1));
        } finally {
          await exporter.shutdown();
        }
      });
      expect(failure(kit)).toEqual({
        code: 14,
        message: `14 UNAVAILABLE: No connection established. Last error: proxy ${new URL(proxy.url).host} answered CONNECT ${new URL(receiver.grpcUrl).host} with HTTP 407`,
      });
      expect(receiver.spans).toHaveLength(0);
    } finally {
      await proxy.close();
    }
  });

  test.each([
    [{}, undefined],
    [{ HTTPS_PROXY: 'http://p:1' }, undefined],
    [{ http_proxy: 'http://p:1' }, { host: 'p', port: 1, credentials: undefined }],
    [{ http_proxy: 'http://p' }, { host: 'p', port: 80, credentials: undefined }],
    [{ http_proxy: 'http://p:1', https_proxy: 'http://q:2' }, { host: 'q', port: 2, credentials: undefined }],
    [{ https_proxy: 'http://q:2', grpc_proxy: 'http://u@g:3' }, { host: 'g', port: 3, credentials: 'u' }],
    [{ http_proxy: 'https://p:1' }, undefined],
    [{ http_proxy: 'not a url' }, undefined],
    [{ http_proxy: 'http://p:1', no_proxy: 'collector.internal' }, undefined],
    [{ http_proxy: 'http://p:1', no_proxy: '10.0.0.0/8' }, { host: 'p', port: 1, credentials: undefined }],
    [{ http_proxy: 'http://p:1', no_grpc_proxy: 'other', no_proxy: 'collector.internal' }, { host: 'p', port: 1, credentials: undefined }],
  ])('proxyFor("collector.internal") with %j', (env, expected) => {
    expect(proxyFor('collector.internal', env)).toEqual(expected);
  });

  test.each([
    ['10.1.2.3', '10.0.0.0/8', undefined],
    ['11.1.2.3', '10.0.0.0/8', { host: 'p', port: 1, credentials: undefined }],
    ['192.168.1.7', '192.168.1.0/24', undefined],
    ['192.168.2.7', '192.168.1.0/24', { host: 'p', port: 1, credentials: undefined }],
    ['8.8.8.8', '0.0.0.0/0', undefined],
  ])('proxyFor(%s) with no_proxy=%s', (host, noProxy, expected) => {
    expect(proxyFor(host, { http_proxy: 'http://p:1', no_proxy: noProxy })).toEqual(expected);
  });
});
