/**
 * Writes each span as one JSON line on stdout.
 *
 * The SDK's ConsoleSpanExporter prints a multi-line `console.dir` dump per
 * span; under PM2 each of those lines gets its own log prefix and interleaves
 * with other workers' output. One line per span stays readable in
 * `pm2 logs` and can be parsed by log shippers and by our tests.
 */
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { ExportResultCode, hrTimeToMicroseconds, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';

/** The prefix that marks span lines in the log, so they are easy to grep. */
export const SPAN_LINE_PREFIX = 'otel.span ';

function toLine(span: ReadableSpan): string {
  const context = span.spanContext();
  return (
    SPAN_LINE_PREFIX +
    JSON.stringify({
      name: span.name,
      kind: SpanKind[span.kind],
      traceId: context.traceId,
      spanId: context.spanId,
      parentSpanId: span.parentSpanContext?.spanId,
      startUs: hrTimeToMicroseconds(span.startTime),
      durationUs: hrTimeToMicroseconds(span.duration),
      status: SpanStatusCode[span.status.code],
      statusMessage: span.status.message,
      attributes: span.attributes,
      events: span.events.length > 0 ? span.events.map((event) => ({ name: event.name, attributes: event.attributes })) : undefined,
      scope: span.instrumentationScope.name,
      'service.name': span.resource.attributes['service.name'],
      'service.instance.id': span.resource.attributes['service.instance.id'],
      'process.pid': process.pid,
    })
  );
}

export class JsonLineSpanExporter implements SpanExporter {
  private stopped = false;

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    if (this.stopped) {
      resultCallback({ code: ExportResultCode.FAILED, error: new Error('exporter is shut down') });
      return;
    }
    // One write per batch keeps the lines of a batch together.
    process.stdout.write(`${spans.map(toLine).join('\n')}\n`, () => resultCallback({ code: ExportResultCode.SUCCESS }));
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
  }

  async forceFlush(): Promise<void> {}
}
