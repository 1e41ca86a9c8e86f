/**
 * HTTP/1.x over a bare TCP socket, for requests no HTTP client would send
 * (malformed request lines, NUL bytes, invalid method tokens, smuggling
 * attempts) and for checking that the answer is a complete response rather
 * than a dropped or reset connection.
 */
import net from 'node:net';

export interface RawResponse {
  /** Status code of the first response, or 0 when no status line arrived. */
  status: number;
  /** Headers of the first response, names lower-cased (repeated ones joined with ', '). */
  headers: Record<string, string>;
  /** Body of the first response, de-chunked. */
  body: string;
  /**
   * True when a whole response arrived: status line, headers, and a body of
   * the announced length (Content-Length, chunked, or until the server closed).
   */
  complete: boolean;
  /** Socket error code seen (e.g. ECONNRESET), if any, and whether it came after a complete response. */
  error?: string;
  errorAfterResponse: boolean;
  /** The client gave up after `timeoutMs` without the server closing the connection. */
  timedOut: boolean;
  /** Everything received, latin1. */
  raw: string;
}

export interface RawRequestOptions {
  /** Give up (and destroy the socket) after this long; default 5000 ms. */
  timeoutMs?: number;
  /** The request was a HEAD: a response to it has no body whatever its headers say. */
  head?: boolean;
  /** Pause between the chunks of `data` when it is an array. */
  chunkDelayMs?: number;
}

/** Splits a chunked body; undefined while the terminating chunk has not arrived. */
function dechunk(text: string): string | undefined {
  let body = '';
  let at = 0;
  for (;;) {
    const lineEnd = text.indexOf('\r\n', at);
    if (lineEnd === -1) return undefined;
    const size = Number.parseInt(text.slice(at, lineEnd).split(';')[0] ?? '', 16);
    if (!Number.isFinite(size)) return undefined;
    const start = lineEnd + 2;
    if (size === 0) return text.indexOf('\r\n', start) === -1 ? undefined : body;
    if (text.length < start + size + 2) return undefined;
    body += text.slice(start, start + size);
    at = start + size + 2;
  }
}

/** Parses the first response in `raw`; `closed` says the server ended the connection. */
export function parseResponse(raw: string, options: { head?: boolean; closed: boolean }): Omit<RawResponse, 'error' | 'errorAfterResponse' | 'timedOut'> {
  const empty = { status: 0, headers: {}, body: '', complete: false, raw };
  const headEnd = raw.indexOf('\r\n\r\n');
  if (headEnd === -1) return empty;
  const [statusLine = '', ...lines] = raw.slice(0, headEnd).split('\r\n');
  const match = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(statusLine);
  if (!match) return empty;
  const status = Number(match[1]);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  const rest = raw.slice(headEnd + 4);
  if (options.head || status === 204 || status === 304) return { status, headers, body: '', complete: true, raw };
  if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
    const body = dechunk(rest);
    return { status, headers, body: body ?? '', complete: body !== undefined, raw };
  }
  const length = headers['content-length'];
  if (length !== undefined) {
    const size = Number(length);
    return { status, headers, body: rest.slice(0, size), complete: Buffer.byteLength(rest, 'latin1') >= size, raw };
  }
  return { status, headers, body: rest, complete: options.closed, raw };
}

/**
 * Sends `data` (one write, or several with `chunkDelayMs` between them) on a
 * fresh connection to 127.0.0.1:`port` and collects everything until the
 * server closes the connection. Send `Connection: close` (or HTTP/1.0) so the
 * server does close it; never rejects.
 */
export function rawRequest(port: number, data: string | Buffer | (string | Buffer)[], options: RawRequestOptions = {}): Promise<RawResponse> {
  const chunks = (Array.isArray(data) ? data : [data]).map((c) => (typeof c === 'string' ? Buffer.from(c, 'latin1') : c));
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const received: Buffer[] = [];
    let error: string | undefined;
    let errorAfterResponse = false;
    let timedOut = false;
    const parse = (closed: boolean): ReturnType<typeof parseResponse> =>
      parseResponse(Buffer.concat(received).toString('latin1'), { head: options.head, closed });
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, options.timeoutMs ?? 5000);
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.on('error', (caught: NodeJS.ErrnoException) => {
      error ??= caught.code ?? caught.message;
      errorAfterResponse = parse(false).complete;
    });
    socket.on('close', () => {
      clearTimeout(timer);
      const response = parse(error === undefined && !timedOut);
      resolve({ ...response, error, errorAfterResponse, timedOut });
    });
    void (async () => {
      for (const [index, chunk] of chunks.entries()) {
        if (socket.destroyed) return;
        if (index > 0 && options.chunkDelayMs) await new Promise((r) => setTimeout(r, options.chunkDelayMs));
        // A write after the server answered and closed may fail; the 'error' listener records it.
        socket.write(chunk);
      }
    })();
  });
}

/**
 * A client that sends `partial` (half a request) and then nothing: resolves
 * after `waitMs` with what the server did meanwhile, and closes the socket.
 */
export function stalledRequest(port: number, partial: string, waitMs: number): Promise<{ received: string; serverClosed: boolean; error?: string }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    let serverClosed = false;
    let error: string | undefined;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('end', () => (serverClosed = true));
    socket.on('error', (caught: NodeJS.ErrnoException) => (error ??= caught.code ?? caught.message));
    socket.write(partial);
    setTimeout(() => {
      socket.destroy();
      resolve({ received, serverClosed, error });
    }, waitMs);
  });
}

/** Every response in `raw`, in order (Content-Length bodies, which is what this server sends). */
export function responses(raw: string): { status: number; headers: Record<string, string>; body: string }[] {
  const found = [];
  let rest = raw;
  for (;;) {
    const response = parseResponse(rest, { closed: false });
    if (!response.complete) return found;
    found.push({ status: response.status, headers: response.headers, body: response.body });
    rest = rest.slice(rest.indexOf('\r\n\r\n') + 4 + Number(response.headers['content-length']));
  }
}

export interface KeepAliveConnection {
  /**
   * Sends a GET on this connection and resolves with its response; with
   * status 0 if the server closed the connection first or `timeoutMs` passed.
   */
  get(path: string, timeoutMs?: number): Promise<{ status: number; headers: Record<string, string>; body: string }>;
  /** Resolves once the connection is closed: undefined when the server closed it cleanly, else the socket error (e.g. ECONNRESET). */
  readonly ended: Promise<string | undefined>;
  destroy(): void;
}

/** A connection to 127.0.0.1:`port` that stays open for several requests, one at a time. */
export async function keepAliveConnection(port: number): Promise<KeepAliveConnection> {
  const socket = net.connect(port, '127.0.0.1');
  socket.setEncoding('latin1');
  let received = '';
  let check: (() => void) | undefined;
  let closed = false;
  socket.on('data', (chunk: string) => {
    received += chunk;
    check?.();
  });
  const ended = new Promise<string | undefined>((resolve) => {
    let error: string | undefined;
    socket.on('error', (caught: NodeJS.ErrnoException) => (error ??= caught.code ?? caught.message));
    socket.on('close', () => {
      closed = true;
      check?.();
      resolve(error);
    });
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  return {
    ended,
    destroy: () => socket.destroy(),
    get(path, timeoutMs = 10_000) {
      received = '';
      socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
      return new Promise((resolve) => {
        const timer = setTimeout(() => finish({ status: 0, headers: {}, body: '' }), timeoutMs);
        const finish = (response: { status: number; headers: Record<string, string>; body: string }): void => {
          clearTimeout(timer);
          check = undefined;
          resolve(response);
        };
        check = () => {
          const [response] = responses(received);
          if (response) finish(response);
          else if (closed) finish({ status: 0, headers: {}, body: '' });
        };
        check();
      });
    },
  };
}
