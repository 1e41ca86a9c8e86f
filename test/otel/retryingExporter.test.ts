import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import { RetryingExporter } from '../../otel/retryingExporter';

test('spans arriving while a held batch is in flight push out older held spans, never the batch: each span is delivered or dropped, once', async () => {
  let up = false;
  const answers: Array<() => void> = [];
  let received = 0;
  const inner: SpanExporter = {
    export(spans, done) {
      if (!up) return done({ code: ExportResultCode.FAILED, error: Object.assign(new Error('unavailable'), { code: 14 }) });
      answers.push(() => {
        received += spans.length;
        done({ code: ExportResultCode.SUCCESS });
      });
    },
    shutdown: async () => undefined,
  };
  const exporter = new RetryingExporter(inner, { maxHeldSpans: 64, maxBatchSize: 32, initialDelayMs: 5, maxDelayMs: 5, target: 'test', report: () => undefined });
  const spans = (n: number): ReadableSpan[] => Array.from({ length: n }, () => ({}) as ReadableSpan);
  const ok = (_: ExportResult): void => undefined;
  exporter.export(spans(32), ok); // fails: the outage begins
  exporter.export(spans(32), ok); // the hold is full
  up = true;
  while (answers.length === 0) await new Promise((resolve) => setTimeout(resolve, 5)); // a held batch is in flight
  exporter.export(spans(10), ok);
  while (answers.length > 0 || exporter.getStats().held > 0) {
    answers.shift()?.();
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const stats = exporter.getStats();
  expect(received + stats.dropped).toBe(74);
  expect(stats).toMatchObject({ delivered: received, dropped: 10, held: 0 });
});

describe('RetryingExporter', () => {
  /** An inner exporter that fails while `down` is true. */
  function collector() {
    const state = { down: true, received: 0, made: 0 };
    const make = (): SpanExporter => {
      state.made += 1;
      return {
        export(spans, done) {
          if (state.down) return done({ code: ExportResultCode.FAILED, error: Object.assign(new Error('14 UNAVAILABLE'), { code: 14 }) });
          state.received += spans.length;
          done({ code: ExportResultCode.SUCCESS });
        },
        shutdown: async () => undefined,
      };
    };
    return { state, make };
  }
  const spans = (n: number): ReadableSpan[] => Array.from({ length: n }, () => ({}) as ReadableSpan);
  const until = async (check: () => boolean): Promise<void> => {
    for (let i = 0; i < 400 && !check(); i += 1) await new Promise((resolve) => setTimeout(resolve, 5));
  };

  test('holds spans through an outage, on a fresh exporter, and delivers them once the collector is back', async () => {
    const { state, make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 5, maxDelayMs: 5, target: 'grpc://c', report: (_l, m) => lines.push(m), renew: make });
    const results: ExportResult[] = [];
    exporter.export(spans(25), (r) => results.push(r));
    exporter.export(spans(25), (r) => results.push(r));
    expect(results.every((r) => r.code === ExportResultCode.SUCCESS)).toBe(true);
    expect(exporter.getStats()).toMatchObject({ held: 50, delivered: 0, dropped: 0 });
    state.down = false;
    await until(() => exporter.getStats().held === 0);
    expect(state.received).toBe(50);
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
    for (let i = 0; i < 5; i += 1) exporter.export(spans(10), () => undefined);
    expect(exporter.getStats()).toMatchObject({ held: 30, dropped: 20 });
    state.down = false;
    await until(() => exporter.getStats().held === 0);
    expect(state.received + exporter.getStats().dropped).toBe(50);
    expect(lines.filter((line) => /collector still unreachable: dropped \d+ spans so far/.test(line))).toHaveLength(1);
    expect(lines[lines.length - 1]).toMatch(/delivered 30 held spans, dropped 20$/);
  });

  test('a flapping collector costs one report per 30 s, not one per outage', async () => {
    const { state, make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 5, maxDelayMs: 5, target: 'c', report: (_l, m) => lines.push(m) });
    for (let flap = 0; flap < 5; flap += 1) {
      state.down = true;
      exporter.export(spans(3), () => undefined);
      state.down = false;
      await until(() => exporter.getStats().held === 0);
    }
    expect(state.received).toBe(15);
    expect(lines).toHaveLength(2);
  });

  test('reports the spans still held at shutdown', async () => {
    const { make } = collector();
    const lines: string[] = [];
    const exporter = new RetryingExporter(make(), { maxHeldSpans: 100, maxBatchSize: 10, initialDelayMs: 1000, target: 'c', report: (_l, m) => lines.push(m) });
    exporter.export(spans(7), () => undefined);
    await exporter.shutdown();
    expect(lines[lines.length - 1]).toBe('7 spans not delivered at shutdown: collector at c unreachable');
    expect(exporter.getStats()).toMatchObject({ dropped: 7, held: 0 });
  });
});
