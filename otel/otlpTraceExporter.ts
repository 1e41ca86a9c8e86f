/**
 * The OTLP trace exporters for `grpc` and `http/protobuf`, assembled exactly
 * as `@opentelemetry/exporter-trace-otlp-grpc` and `-proto` assemble theirs
 * (the same export delegate, transport, retries, configuration from the
 * standard `OTEL_EXPORTER_OTLP_*` variables and self-metrics), with one part
 * swapped: the protobuf serializer, for the kit's byte-identical and faster
 * one (see `traceSerializer.ts`). `http/json` keeps the library's exporter.
 *
 * Each package is required only for the protocol in use.
 */
import type { SpanExporter } from '@opentelemetry/sdk-trace';

import type { OtlpProtocol } from './settings';

export function createOtlpTraceExporter(protocol: OtlpProtocol, url: string): SpanExporter {
  switch (protocol) {
    case 'grpc': {
      const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
      const { createOtlpGrpcExportDelegate, convertLegacyOtlpGrpcOptions } = require('@opentelemetry/otlp-grpc-exporter-base') as typeof import('@opentelemetry/otlp-grpc-exporter-base');
      const { TraceExporterMetricsHelper } = require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
      const { FastProtobufTraceSerializer } = require('./traceSerializer') as typeof import('./traceSerializer');
      return new OTLPExporterBase(
        createOtlpGrpcExportDelegate(
          convertLegacyOtlpGrpcOptions({ url }, 'TRACES'),
          FastProtobufTraceSerializer,
          'otlp_grpc_span_exporter',
          TraceExporterMetricsHelper,
          undefined,
          'TraceExportService',
          '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
        ),
      );
    }
    case 'http/protobuf': {
      const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
      const { createOtlpHttpExportDelegate, convertLegacyHttpOptions } = require('@opentelemetry/otlp-exporter-base/node-http') as typeof import('@opentelemetry/otlp-exporter-base/node-http');
      const { TraceExporterMetricsHelper } = require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
      const { FastProtobufTraceSerializer } = require('./traceSerializer') as typeof import('./traceSerializer');
      return new OTLPExporterBase(
        createOtlpHttpExportDelegate(
          convertLegacyHttpOptions({ url }, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' }),
          FastProtobufTraceSerializer,
          'otlp_http_span_exporter',
          TraceExporterMetricsHelper,
          undefined,
        ),
      );
    }
    case 'http/json': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http');
      return new OTLPTraceExporter({ url });
    }
  }
}
