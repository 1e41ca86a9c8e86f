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
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { SpanExporter } from '@opentelemetry/sdk-trace';

import type { ItemExporter } from './retryingExporter';
import type { OtlpProtocol } from './settings';
import type { EncodedAhead } from './traceSerializer';

/**
 * An OTLP exporter whose batches are encoded ahead, a slice at a time
 * between turns of the event loop (`encodeInSlices` in traceSerializer.ts),
 * then handed to the library's exporter, whose serializer returns the bytes
 * encoded ahead: the request on the wire is the same, and no batch's
 * encoding holds the event loop for more than a slice. If encoding ahead
 * fails, the exporter encodes at export as before, with the same error.
 */
export class EncodeAheadExporter<T> implements ItemExporter<T> {
  constructor(
    private readonly inner: ItemExporter<T>,
    private readonly serializer: EncodedAhead<T>,
  ) {}

  export(items: T[], resultCallback: (result: ExportResult) => void): void {
    const send = (): void => {
      try {
        this.inner.export(items, resultCallback);
      } catch (error) {
        resultCallback({ code: ExportResultCode.FAILED, error: error instanceof Error ? error : new Error(String(error)) });
      }
    };
    this.serializer.encodeAhead(items).then(send, send);
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

export function createOtlpTraceExporter(protocol: OtlpProtocol, url: string): SpanExporter {
  switch (protocol) {
    case 'grpc': {
      const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
      const { createOtlpGrpcExportDelegate, convertLegacyOtlpGrpcOptions } = require('@opentelemetry/otlp-grpc-exporter-base') as typeof import('@opentelemetry/otlp-grpc-exporter-base');
      const { TraceExporterMetricsHelper } = require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
      const { FastProtobufTraceSerializer } = require('./traceSerializer') as typeof import('./traceSerializer');
      return new EncodeAheadExporter(
        new OTLPExporterBase(
          createOtlpGrpcExportDelegate(
            convertLegacyOtlpGrpcOptions({ url }, 'TRACES'),
            FastProtobufTraceSerializer,
            'otlp_grpc_span_exporter',
            TraceExporterMetricsHelper,
            undefined,
            'TraceExportService',
            '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
          ),
        ),
        FastProtobufTraceSerializer,
      );
    }
    case 'http/protobuf': {
      const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base') as typeof import('@opentelemetry/otlp-exporter-base');
      const { createOtlpHttpExportDelegate, convertLegacyHttpOptions } = require('@opentelemetry/otlp-exporter-base/node-http') as typeof import('@opentelemetry/otlp-exporter-base/node-http');
      const { TraceExporterMetricsHelper } = require('@opentelemetry/otlp-transformer') as typeof import('@opentelemetry/otlp-transformer');
      const { FastProtobufTraceSerializer } = require('./traceSerializer') as typeof import('./traceSerializer');
      return new EncodeAheadExporter(
        new OTLPExporterBase(
          createOtlpHttpExportDelegate(
            convertLegacyHttpOptions({ url }, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' }),
            FastProtobufTraceSerializer,
            'otlp_http_span_exporter',
            TraceExporterMetricsHelper,
            undefined,
          ),
        ),
        FastProtobufTraceSerializer,
      );
    }
    case 'http/json': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http');
      return new OTLPTraceExporter({ url });
    }
  }
}
