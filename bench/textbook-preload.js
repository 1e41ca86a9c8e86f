// @ts-check
'use strict';

/**
 * The "textbook" configuration: the preload that the OpenTelemetry getting
 * started guides (and most blog posts) show, verbatim in spirit: one NodeSDK,
 * an OTLP/gRPC exporter, and every auto-instrumentation. Loaded with
 * `node -r` instead of the kit's `dist/otel/register.js`, never with it.
 *
 * Deliberately nothing more: no shutdown/flush on SIGINT, no diag logger, no
 * instrumentation config. The bench passes OTEL_METRICS_EXPORTER=none and
 * OTEL_LOGS_EXPORTER=none so that no metric or log exporter retries against
 * a collector that only takes traces.
 *
 * Under PM2 a preload sees the daemon's environment, not the app's `env`
 * block (PM2 copies that in after `-r` preloads ran), so these variables
 * reach it the way the guides set them: in the shell that starts PM2.
 */
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
const { getNodeAutoInstrumentations } = require('@opentelemetry/auto-instrumentations-node');

const url = process.env.OTEL_EXPORTER_OTLP_ENDPOINT ?? 'http://localhost:4317';

new NodeSDK({
  traceExporter: new OTLPTraceExporter({ url }),
  instrumentations: [getNodeAutoInstrumentations()],
}).start();
