/**
 * Which instrumentations and resource detectors to load, loaded only when
 * asked for.
 *
 * `@opentelemetry/auto-instrumentations-node` requires all of its ~45
 * instrumentation packages as soon as it is loaded, whichever are enabled
 * (~1,400 modules). The kit's own service needs three: http (server spans
 * and outgoing `http` calls), koa (the route name) and undici (`fetch`). Those
 * are constructed directly; the bundle is loaded only when
 * `OTEL_NODE_ENABLED_INSTRUMENTATIONS` asks for anything else, so adding a
 * database client later is still one setting away.
 */
import type { Instrumentation } from '@opentelemetry/instrumentation';
import type { ResourceDetector } from '@opentelemetry/resources';
import { LEAN_INSTRUMENTATIONS, type TelemetrySettings } from './settings';

type Config = Record<string, unknown>;

/** Per-instrumentation configuration shared by the lean path and the bundle. */
function configs(): Record<string, Config> {
  return {
    // Incoming requests are traced by the kit's own server instrumentation
    // (httpServerInstrumentation.ts); the library traces outgoing ones.
    http: { disableIncomingRequestInstrumentation: true },
    // Router layers name the route (`http.route`, and the server span's name);
    // a span per plain middleware would only repeat the request.
    koa: { ignoreLayersType: ['middleware'] },
    undici: {},
    // The app's logger already adds the trace context to each line (a pino
    // mixin) and sends each record to the Logs SDK itself (src/log.ts): the
    // bundle's pino instrumentation, if listed, would send every record twice.
    pino: { disableLogSending: true, disableLogCorrelation: true },
  };
}

/**
 * Builds the enabled instrumentations; call before the modules they patch
 * are required. With `http` enabled, the kit's server instrumentation comes
 * first (see httpServerInstrumentation.ts).
 */
export function loadInstrumentations(settings: TelemetrySettings): Instrumentation[] {
  const instrumentations = loadLibraryInstrumentations(settings);
  if (instrumentations.some((instrumentation) => instrumentation.instrumentationName === '@opentelemetry/instrumentation-http')) {
    const { HttpServerInstrumentation } = require('./httpServerInstrumentation') as typeof import('./httpServerInstrumentation');
    // Health checks are polled every few seconds by PM2 users and load balancers: no spans.
    instrumentations.unshift(new HttpServerInstrumentation({ excludedPaths: settings.excludedPaths, metrics: settings.metrics.exporters.length > 0 }));
  }
  // Event-loop delay and utilisation, heap and GC, when metrics are exported
  // (and unless the bundle already brought it).
  if (settings.metrics.exporters.length > 0 && !instrumentations.some((instrumentation) => instrumentation.instrumentationName === '@opentelemetry/instrumentation-runtime-node')) {
    const { RuntimeNodeInstrumentation } = require('@opentelemetry/instrumentation-runtime-node') as typeof import('@opentelemetry/instrumentation-runtime-node');
    instrumentations.push(new RuntimeNodeInstrumentation());
  }
  return instrumentations;
}

function loadLibraryInstrumentations(settings: TelemetrySettings): Instrumentation[] {
  const names = settings.instrumentations;
  const config = configs();
  const lean = names.every((name) => (LEAN_INSTRUMENTATIONS as readonly string[]).includes(name));
  if (lean) {
    return names.map((name) => {
      switch (name) {
        case 'http': {
          const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http') as typeof import('@opentelemetry/instrumentation-http');
          return new HttpInstrumentation(config.http);
        }
        case 'koa': {
          const { KoaInstrumentation } = require('@opentelemetry/instrumentation-koa') as typeof import('@opentelemetry/instrumentation-koa');
          return new KoaInstrumentation(config.koa);
        }
        default: {
          const { UndiciInstrumentation } = require('@opentelemetry/instrumentation-undici') as typeof import('@opentelemetry/instrumentation-undici');
          return new UndiciInstrumentation(config.undici);
        }
      }
    });
  }

  // The bundle reads OTEL_NODE_ENABLED_INSTRUMENTATIONS / _DISABLED_ itself,
  // with the same short names; `all` is ours and means "its default set".
  const { getNodeAutoInstrumentations } = require('@opentelemetry/auto-instrumentations-node') as typeof import('@opentelemetry/auto-instrumentations-node');
  const bundleConfig = Object.fromEntries(
    Object.entries(config).map(([name, value]) => [`@opentelemetry/instrumentation-${name}`, value]),
  );
  if (!names.includes('all')) return getNodeAutoInstrumentations(bundleConfig);
  const enabled = process.env.OTEL_NODE_ENABLED_INSTRUMENTATIONS;
  delete process.env.OTEL_NODE_ENABLED_INSTRUMENTATIONS;
  try {
    return getNodeAutoInstrumentations(bundleConfig);
  } finally {
    process.env.OTEL_NODE_ENABLED_INSTRUMENTATIONS = enabled;
  }
}

/**
 * How long the AWS detectors may take. The EC2 one asks the link-local
 * metadata address, which answers within milliseconds on EC2; elsewhere that
 * address is often a black hole, where the detector waits 5 s, and every
 * export (the flush at stop too) waits for detection.
 */
const AWS_DETECTION_DEADLINE_MS = 1000;

/** The resource detectors named by OTEL_NODE_RESOURCE_DETECTORS, each module loaded only if named. */
export function loadResourceDetectors(names: readonly string[]): ResourceDetector[] {
  const resources = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
  // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are settings, not
  // detection: they apply whatever detectors are named, even `none`.
  if (names.includes('none')) return [resources.envDetector];
  const all = names.includes('all');
  const wanted = (name: string): boolean => all || names.includes(name);
  const detectors: ResourceDetector[] = [];
  // Order matters: later detectors win, and `env` (OTEL_RESOURCE_ATTRIBUTES,
  // OTEL_SERVICE_NAME) comes last, always, so that what the user sets wins.
  if (wanted('host')) detectors.push(resources.hostDetector);
  if (wanted('os')) detectors.push(resources.osDetector);
  if (wanted('process')) detectors.push(resources.processDetector);
  if (wanted('serviceinstance')) detectors.push(resources.serviceInstanceIdDetector);
  if (wanted('container')) {
    const { containerDetector } = require('@opentelemetry/resource-detector-container') as typeof import('@opentelemetry/resource-detector-container');
    detectors.push(containerDetector);
  }
  if (wanted('aws')) {
    const aws = require('@opentelemetry/resource-detector-aws') as typeof import('@opentelemetry/resource-detector-aws');
    for (const detector of [aws.awsEc2Detector, aws.awsEcsDetector, aws.awsEksDetector, aws.awsBeanstalkDetector, aws.awsLambdaDetector]) {
      detectors.push(withDeadline(detector, AWS_DETECTION_DEADLINE_MS));
    }
  }
  detectors.push(resources.envDetector);
  return detectors;
}

/** The detector, whose attributes not known after `ms` are left out. */
function withDeadline(detector: ResourceDetector, ms: number): ResourceDetector {
  return {
    detect(config) {
      const detected = detector.detect(config);
      if (detected.attributes === undefined) return detected;
      let deadline: Promise<undefined> | undefined;
      const timeUp = (): Promise<undefined> => (deadline ??= new Promise((resolve) => setTimeout(resolve, ms, undefined).unref()));
      const attributes = Object.fromEntries(
        Object.entries(detected.attributes).map(([key, value]) => [key, value instanceof Promise ? Promise.race([value, timeUp()]) : value]),
      );
      return { ...detected, attributes };
    },
  };
}
