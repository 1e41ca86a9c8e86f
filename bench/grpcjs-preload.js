// @ts-check
'use strict';

/**
 * The kit with the library's gRPC transport (grpc-js, through
 * `createOtlpGrpcExportDelegate`) in place of its own on `node:http2`
 * (`otel/grpcTransport.ts`), for the `kit-grpcjs` and `all-grpcjs` configs:
 * the measured reason for that replacement, kept in every run.
 *
 * Loaded with `node -r` instead of the kit's preload: it swaps the one
 * function the kit's OTLP exporters take their gRPC delegate from, then loads
 * the kit's preload, which is otherwise unchanged.
 */
const path = require('node:path');
const { createOtlpGrpcExportDelegate, convertLegacyOtlpGrpcOptions } = require('@opentelemetry/otlp-grpc-exporter-base');

const dist = path.join(__dirname, '..', 'dist', 'otel');
const SERVICES = { TRACES: 'TraceExportService', METRICS: 'MetricsExportService', LOGS: 'LogsExportService' };

/** @type {import('../otel/grpcTransport')} */
const transport = require(path.join(dist, 'grpcTransport.js'));
/** @type {any} */ (transport).createHttp2GrpcExportDelegate = (
  /** @type {string} */ url,
  /** @type {'TRACES' | 'METRICS' | 'LOGS'} */ signal,
  /** @type {any} */ serializer,
  /** @type {string} */ componentType,
  /** @type {any} */ metricsHelper,
  /** @type {string} */ method,
) => createOtlpGrpcExportDelegate(convertLegacyOtlpGrpcOptions({ url }, signal), serializer, componentType, metricsHelper, undefined, SERVICES[signal], method);

require(path.join(dist, 'register.js'));
