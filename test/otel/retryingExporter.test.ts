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
