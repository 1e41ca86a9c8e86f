/**
 * The log record exporters for `OTEL_LOGS_EXPORTER`: the OTLP ones, and a
 * JSON-line one for `console`.
 *
 * For `grpc` and `http/protobuf`, the exporter is assembled exactly as
 * `@opentelemetry/exporter-logs-otlp-grpc` and `-proto` assemble theirs (the
 * same export delegate, transport, retries, configuration from the standard
 * `OTEL_EXPORTER_OTLP_*` variables, which `settings.ts` has checked, and
 * self-metrics), with the kit's byte-identical and faster protobuf
 * serializer (see `logSerializer.ts`), as `otlpTraceExporter.ts` does for
 * spans. `http/json` keeps the library's exporter. Each package is required
 * only for the protocol in use.
 */
import { SeverityNumber } from '@opentelemetry/api';
import { ExportResultCode, hrTimeToMicroseconds, type ExportResult } from '@opentelemetry/core';
import type { LogRecordExporter, ReadableLogRecord } from '@opentelemetry/sdk-logs';

import { EncodeAheadExporter } from './otlpTraceExporter';
import type { OtlpProtocol } from './settings';

export function createOtlpLogExporter(protocol: OtlpProtocol, url: string): LogRecordExporter {
  switch (protocol) {
    case 'grpc': {
      const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
      const { createOtlpGrpcExportDelegate, convertLegacyOtlpGrpcOptions } = require('@opentelemetry/otlp-grpc-exporter-base') as typeof import('@opentelemetry/otlp-grpc-exporter-base');
      const { LogsExporterMetricsHelper } = require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
      const { FastProtobufLogsSerializer } = require('./logSerializer') as typeof import('./logSerializer');
      return new EncodeAheadExporter(
        new OTLPExporterBase(
          createOtlpGrpcExportDelegate(
            convertLegacyOtlpGrpcOptions({ url }, 'LOGS'),
            FastProtobufLogsSerializer,
            'otlp_grpc_log_exporter',
            LogsExporterMetricsHelper,
            undefined,
            'LogsExportService',
            '/opentelemetry.proto.collector.logs.v1.LogsService/Export',
          ),
        ),
        FastProtobufLogsSerializer,
      );
    }
    case 'http/protobuf': {
      const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
      const { createOtlpHttpExportDelegate, convertLegacyHttpOptions } = require('@opentelemetry/otlp-exporter-base/node-http') as typeof import('@opentelemetry/otlp-exporter-base/node-http');
      const { LogsExporterMetricsHelper } = require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
      const { FastProtobufLogsSerializer } = require('./logSerializer') as typeof import('./logSerializer');
      return new EncodeAheadExporter(
        new OTLPExporterBase(
          createOtlpHttpExportDelegate(
            convertLegacyHttpOptions({ url }, 'LOGS', 'v1/logs', { 'Content-Type': 'application/x-protobuf' }),
            FastProtobufLogsSerializer,
            'otlp_http_log_exporter',
            LogsExporterMetricsHelper,
            undefined,
          ),
        ),
        FastProtobufLogsSerializer,
      );
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
