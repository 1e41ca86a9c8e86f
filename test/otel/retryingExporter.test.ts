import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import { RetryingExporter } from '../../otel/retryingExporter';
import { waitUntil } from '../helpers/waitUntil';

/** `n` spans named `<first>` … `<first + n - 1>`, so that each one can be told apart where it arrives. */
function numbered(first: number, n: number): ReadableSpan[] {
  return Array.from({ length: n }, (_, i) => ({ name: String(first + i) }) as ReadableSpan);
}

const numbers = (spans: ReadableSpan[]): number[] => spans.map((span) => Number(span.name));
const range = (first: number, n: number): number[] => Array.from({ length: n }, (_, i) => first + i);

test('spans arriving while a held batch is in flight push out older held spans, never the batch: each span is delivered or dropped, once', async () => {
  let up = false;
  const answers: Array<() => void> = [];
  const received: number[] = [];
  const inner: SpanExporter = {
    export(spans, done) {
      if (!up) return done({ code: ExportResultCode.FAILED, error: Object.assign(new Error('unavailable'), { code: 14 }) });
      answers.push(() => {
        received.push(...numbers(spans));
        done({ code: ExportResultCode.SUCCESS });
      });
    },
    shutdown: async () => undefined,
  };
  const exporter = new RetryingExporter(inner, { maxHeldSpans: 64, maxBatchSize: 32, initialDelayMs: 5, maxDelayMs: 5, target: 'test', report: () => undefined });
  const ok = (_: ExportResult): void => undefined;
  exporter.export(numbered(0, 32), ok); // fails: the outage begins
  exporter.export(numbered(32, 32), ok); // the hold is full
  up = true;
  await waitUntil('a held batch in flight', () => answers.length > 0, 5000, 5);
  exporter.export(numbered(64, 10), ok);
  while (answers.length > 0 || exporter.getStats().held > 0) {
    answers.shift()?.();
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const stats = exporter.getStats();
  expect(received.length + stats.dropped).toBe(74);
  expect(stats).toMatchObject({ delivered: received.length, dropped: 10, held: 0 });
  // The batch in flight (0-31) was delivered; the 10 oldest behind it (32-41) made room; the rest went out in order.
  expect(received).toEqual([...range(0, 32), ...range(42, 32)]);
});

describe('RetryingExporter', () => {
  /** An inner exporter that fails while `down` is true. */
  function collector() {
    const state = { down: true, received: [] as number[], made: 0 };
    const make = (): SpanExporter => {
      state.made += 1;
      return {
        export(spans, done) {
          if (state.down) return done({ code: ExportResultCode.FAILED, error: Object.assign(new Error('14 UNAVAILABLE'), { code: 14 }) });
          state.received.push(...numbers(spans));
          done({ code: ExportResultCode.SUCCESS });
        },
        shutdown: async () => undefined,
      };
    };
    return { state, make };
  }
  const nothingHeld = (exporter: RetryingExporter) => (): string => `held spans delivered (${JSON.stringify(exporter.getStats())})`;
  const until = (exporter: RetryingExporter): Promise<boolean> => waitUntil(nothingHeld(exporter), () => exporter.getStats().held === 0, 5000, 5);

  test('holds spans through an outage, on a fresh exporter, and delivers them once the collector is back', async () => {
    const { state, make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 5, maxDelayMs: 5, target: 'grpc://c', report: (_l, m) => lines.push(m), renew: make });
    const results: ExportResult[] = [];
    exporter.export(numbered(0, 25), (r) => results.push(r));
    exporter.export(numbered(25, 25), (r) => results.push(r));
    // Both answered at once, as successes: the processor never waits on an outage.
    expect(results.map((r) => r.code)).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
    expect(exporter.getStats()).toMatchObject({ held: 50, delivered: 0, dropped: 0 });
    state.down = false;
    await until(exporter);
    // Each span once, oldest first.
    expect(state.received).toEqual(range(0, 50));
    expect(state.made).toBeGreaterThan(1);
    expect(exporter.getStats()).toMatchObject({ held: 0, delivered: 50, dropped: 0 });
    expect(lines).toEqual([
      'cannot export spans to grpc://c: 14 UNAVAILABLE; holding up to 100 spans and retrying',
      expect.stringMatching(/^export to grpc:\/\/c recovered after [\d.]+ s: delivered 50 held spans, dropped 0$/),
    ]);
  });

  test('drops the oldest spans beyond the hold, counts them, and says so', async () => {
    const { state, make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 30, maxBatchSize: 10, initialDelayMs: 5, maxDelayMs: 5, target: 'c', report: (_l, m) => lines.push(m) });
    for (let i = 0; i < 5; i += 1) exporter.export(numbered(10 * i, 10), () => undefined);
    expect(exporter.getStats()).toMatchObject({ held: 30, dropped: 20 });
    state.down = false;
    await until(exporter);
    expect(state.received.length + exporter.getStats().dropped).toBe(50);
    // The 20 oldest were dropped; the newest 30 are delivered, oldest first.
    expect(state.received).toEqual(range(20, 30));
    expect(lines.filter((line) => /collector still unreachable: dropped \d+ spans so far/.test(line))).toHaveLength(1);
    expect(lines[lines.length - 1]).toMatch(/delivered 30 held spans, dropped 20$/);
  });

  test('a flapping collector costs one report per 30 s, not one per outage', async () => {
    const { state, make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 5, maxDelayMs: 5, target: 'c', report: (_l, m) => lines.push(m) });
    for (let flap = 0; flap < 5; flap += 1) {
      state.down = true;
      exporter.export(numbered(3 * flap, 3), () => undefined);
      state.down = false;
      await until(exporter);
    }
    expect(state.received).toEqual(range(0, 15));
    expect(lines).toHaveLength(2);
  });

  test('reports the spans still held at shutdown', async () => {
    const { make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 1000, target: 'c', report: (_l, m) => lines.push(m) });
    exporter.export(numbered(0, 7), () => undefined);
    await exporter.shutdown();
    expect(lines[lines.length - 1]).toBe('7 spans not delivered at shutdown: collector at c unreachable');
    expect(exporter.getStats()).toMatchObject({ dropped: 7, held: 0 });
  });
});

describe('RetryingExporter and a collector that hangs', () => {
  const spans = (n: number): ReadableSpan[] => Array.from({ length: n }, () => ({}) as ReadableSpan);
  const until = async (check: () => boolean): Promise<void> => {
    for (let i = 0; i < 400 && !check(); i += 1) await new Promise((resolve) => setTimeout(resolve, 5));
  };
  /** An inner exporter that keeps every callback: the test answers, late, or never. */
  function hanging() {
    const calls: Array<{ spans: number; done: (result: ExportResult) => void }> = [];
    const exporter: SpanExporter = {
      export: (batch, done) => void calls.push({ spans: batch.length, done }),
      shutdown: () => new Promise<void>(() => undefined), // waits for its hanging export, forever
    };
    return { calls, exporter };
  }

  test('never keeps the processor waiting, even while an export hangs, so the processor queue never fills', () => {
    const { calls, exporter: inner } = hanging();
    const exporter = new RetryingExporter(inner, { maxHeldSpans: 100, maxBatchSize: 10, exportTimeoutMs: 60_000, target: 'c', report: () => undefined });
    const results: ExportResult[] = [];
    exporter.export(spans(10), (r) => results.push(r));
    exporter.export(spans(10), (r) => results.push(r));
    expect(results.map((r) => r.code)).toEqual([ExportResultCode.SUCCESS, ExportResultCode.SUCCESS]);
    expect(calls).toHaveLength(1); // one export at a time: the second batch waits behind the first
    expect(exporter.getStats()).toMatchObject({ held: 20, delivered: 0 });
    void exporter.abandon();
  });

  test('an export with no answer within exportTimeoutMs is an outage: reported at once, spans held and retried on a fresh exporter', async () => {
    const first = hanging();
    const renewed = hanging();
    const lines: string[] = [];
    const exporter = new RetryingExporter(first.exporter, {
      maxHeldSpans: 100,
      maxBatchSize: 10,
      initialDelayMs: 5,
      maxDelayMs: 5,
      exportTimeoutMs: 30,
      target: 'grpc://c',
      report: (_l, m) => lines.push(m),
      renew: () => renewed.exporter,
    });
    exporter.export(spans(10), () => undefined);
    await until(() => lines.length > 0);
    expect(lines).toEqual(['cannot export spans to grpc://c: no answer within 30 ms; holding up to 100 spans and retrying']);
    expect(exporter.getStats()).toMatchObject({ held: 10, delivered: 0, dropped: 0, failures: 1 });
    await until(() => renewed.calls.length > 0); // retried on the fresh exporter
    expect(renewed.calls[0]!.spans).toBe(10);
    renewed.calls[0]!.done({ code: ExportResultCode.SUCCESS });
    await until(() => exporter.getStats().held === 0);
    expect(exporter.getStats()).toMatchObject({ held: 0, delivered: 10, dropped: 0 });
    expect(lines[1]).toMatch(/^export to grpc:\/\/c recovered after [\d.]+ s: delivered 10 held spans, dropped 0$/);
  });

  test('a success that comes after the export timeout counts for nothing: the spans are sent again and counted once', async () => {
    let answerLate: (() => void) | undefined;
    let sent = 0;
    const inner: SpanExporter = {
      export(batch, done) {
        sent += batch.length;
        if (answerLate === undefined) answerLate = () => done({ code: ExportResultCode.SUCCESS });
        else done({ code: ExportResultCode.SUCCESS });
      },
      shutdown: async () => undefined,
    };
    const exporter = new RetryingExporter(inner, { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 50, maxDelayMs: 50, exportTimeoutMs: 20, target: 'c', report: () => undefined });
    exporter.export(spans(10), () => undefined);
    await until(() => exporter.getStats().failures === 1);
    answerLate!(); // the collector had the spans after all, too late
    expect(exporter.getStats()).toMatchObject({ held: 10, delivered: 0 });
    await until(() => exporter.getStats().held === 0);
    // The collector got them twice (OTLP is at-least-once); the kit counts them once.
    expect(sent).toBe(20);
    expect(exporter.getStats()).toMatchObject({ held: 0, delivered: 10, dropped: 0 });
  });

  test('while an export hangs, spans beyond the hold are dropped (never the batch in flight), counted and reported: every span counted once', () => {
    const { exporter: inner } = hanging();
    const lines: string[] = [];
    const exporter = new RetryingExporter(inner, { maxHeldSpans: 30, maxBatchSize: 10, exportTimeoutMs: 60_000, target: 'c', report: (_l, m) => lines.push(m) });
    for (let i = 0; i < 5; i += 1) exporter.export(spans(10), () => undefined);
    expect(exporter.getStats()).toMatchObject({ held: 30, dropped: 20, delivered: 0 });
    expect(lines).toEqual(['collector at c slower than spans are ended: dropped 10 spans so far (more than 30 held)']);
    expect(exporter.abandon()).toBe(30);
    const stats = exporter.getStats();
    expect(stats.delivered + stats.dropped).toBe(50);
  });

  test('abandon() at the shutdown deadline reports the spans held and in flight, exactly, and lets shutdown finish', async () => {
    const { calls, exporter: inner } = hanging();
    const lines: string[] = [];
    const exporter = new RetryingExporter(inner, { maxHeldSpans: 100, maxBatchSize: 10, exportTimeoutMs: 60_000, target: 'c', report: (_l, m) => lines.push(m) });
    exporter.export(spans(10), () => undefined); // in flight, hanging
    exporter.export(spans(5), () => undefined); // held behind it
    let shutDown = false;
    void exporter.shutdown().then(() => (shutDown = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(shutDown).toBe(false);
    expect(exporter.abandon()).toBe(15);
    await until(() => shutDown);
    expect(shutDown).toBe(true);
    expect(lines).toEqual(['15 spans not delivered at shutdown: collector at c unreachable']);
    calls[0]!.done({ code: ExportResultCode.SUCCESS }); // a late answer changes no count
    expect(exporter.getStats()).toMatchObject({ delivered: 0, dropped: 15, held: 0 });
    expect(exporter.abandon()).toBe(0); // reported once
  });
});
