/**
 * The log record exporters for `OTEL_LOGS_EXPORTER`: the library's OTLP
 * exporters (each package required only for the protocol in use; they read
 * headers, compression and timeout from the standard variables, which
 * `settings.ts` has checked), and a JSON-line one for `console`.
 */
import { SeverityNumber } from '@opentelemetry/api';
import { ExportResultCode, hrTimeToMicroseconds, type ExportResult } from '@opentelemetry/core';
import type { LogRecordExporter, ReadableLogRecord } from '@opentelemetry/sdk-logs';

import type { OtlpProtocol } from './settings';

export function createOtlpLogExporter(protocol: OtlpProtocol, url: string): LogRecordExporter {
  switch (protocol) {
    case 'grpc': {
      const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-grpc') as typeof import('@opentelemetry/exporter-logs-otlp-grpc');
      return new OTLPLogExporter({ url });
    }
    case 'http/protobuf': {
      const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-proto') as typeof import('@opentelemetry/exporter-logs-otlp-proto');
      return new OTLPLogExporter({ url });
    }
    case 'http/json': {
      const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-http') as typeof import('@opentelemetry/exporter-logs-otlp-http');
      return new OTLPLogExporter({ url });
    }
  }
}

/** The prefix that marks log record lines, so they are told apart from the app's own lines. */
export const LOG_RECORD_LINE_PREFIX = 'otel.log ';

/**
 * Writes each record as one JSON line on stdout (the SDK's console exporter
 * prints a multi-line dump). The app's own line for the same event is
 * already there: this shows what a collector would receive.
 */
export class JsonLineLogRecordExporter implements LogRecordExporter {
  private stopped = false;

  export(records: ReadableLogRecord[], resultCallback: (result: ExportResult) => void): void {
    if (this.stopped) {
      resultCallback({ code: ExportResultCode.FAILED, error: new Error('exporter is shut down') });
      return;
    }
    const lines = records.map(
      (record) =>
        LOG_RECORD_LINE_PREFIX +
        JSON.stringify({
          timeUs: hrTimeToMicroseconds(record.hrTime),
          severityNumber: record.severityNumber,
          severityText: record.severityText ?? (record.severityNumber === undefined ? undefined : SeverityNumber[record.severityNumber]),
          body: record.body,
          attributes: record.attributes,
          traceId: record.spanContext?.traceId,
          spanId: record.spanContext?.spanId,
          scope: record.instrumentationScope.name,
          'service.name': record.resource.attributes['service.name'],
        }),
    );
    process.stdout.write(`${lines.join('\n')}\n`, () => resultCallback({ code: ExportResultCode.SUCCESS }));
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
  }

  async forceFlush(): Promise<void> {}
}
