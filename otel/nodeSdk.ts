/**
 * `@opentelemetry/sdk-node`, loaded without the modules it requires at its
 * top but reads only when it builds a component itself.
 *
 * NodeSDK's files require every exporter it can build from the environment
 * or a configuration file (OTLP traces, metrics and logs over gRPC, HTTP and
 * protobuf, Prometheus, Zipkin; gRPC's transport even when the kit sends over
 * HTTP), the B3 propagator and the configuration-file reader (with its YAML
 * parser): 125–200 modules (what deferring them saves in
 * RSS and time to the first response: README, Performance). The kit hands NodeSDK
 * its own processors and readers, so NodeSDK builds none of them, except the
 * propagators `OTEL_PROPAGATORS` names.
 *
 * While NodeSDK loads, each of those modules it asks for is given a stand-in
 * that requires the real module the first time a property of it is read, and
 * reads through it from then on: what NodeSDK builds is the library's own
 * object, loaded on demand (`OTEL_PROPAGATORS=b3` loads the B3 propagator
 * when NodeSDK starts). Only requests from NodeSDK's own files, and only
 * while it loads: the same module required by anyone else is the real one.
 * Node has no public hook for this in CommonJS (`module.registerHooks` can
 * replace a module, not defer it), so the loader's `Module._load` is wrapped
 * for the duration, as require-in-the-middle wraps `Module.prototype.require`.
 */
import Module from 'node:module';
import path from 'node:path';

/** The modules NodeSDK requires at load and reads only to build what the kit builds itself (or the propagators named). */
const DEFERRED_MODULES: ReadonlySet<string> = new Set([
  '@opentelemetry/configuration',
  '@opentelemetry/exporter-logs-otlp-grpc',
  '@opentelemetry/exporter-logs-otlp-http',
  '@opentelemetry/exporter-logs-otlp-proto',
  '@opentelemetry/exporter-metrics-otlp-grpc',
  '@opentelemetry/exporter-metrics-otlp-http',
  '@opentelemetry/exporter-metrics-otlp-proto',
  '@opentelemetry/exporter-prometheus',
  '@opentelemetry/exporter-trace-otlp-grpc',
  '@opentelemetry/exporter-trace-otlp-http',
  '@opentelemetry/exporter-trace-otlp-proto',
  '@opentelemetry/exporter-zipkin',
  '@opentelemetry/otlp-exporter-base',
  '@opentelemetry/otlp-grpc-exporter-base',
  '@opentelemetry/propagator-b3',
]);

type Load = (request: string, parent: NodeJS.Module | null | undefined, ...rest: unknown[]) => unknown;
type ModuleLoader = { _load: Load };

/** A stand-in for a module's exports that loads the module at the first read. */
function deferred(load: () => object): object {
  let real: object | undefined;
  const exports = (): object => (real ??= load());
  return new Proxy(
    {},
    {
      get: (_, key) => Reflect.get(exports(), key),
      has: (_, key) => Reflect.has(exports(), key),
      ownKeys: () => Reflect.ownKeys(exports()),
      getOwnPropertyDescriptor: (_, key) => {
        const descriptor = Reflect.getOwnPropertyDescriptor(exports(), key);
        // A proxy may not report a property its (empty) target lacks as non-configurable.
        return descriptor === undefined ? undefined : { ...descriptor, configurable: true };
      },
    },
  );
}

/** `require('@opentelemetry/sdk-node')`, with `DEFERRED_MODULES` loaded only when NodeSDK reads them. */
export function requireNodeSdk(): typeof import('@opentelemetry/sdk-node') {
  const loader = Module as unknown as ModuleLoader;
  const load = loader._load;
  // Its files (`dist/*.cjs`) sit beside its entry point.
  const sdkDir = path.dirname(require.resolve('@opentelemetry/sdk-node')) + path.sep;
  const loadDeferring: Load = function (this: unknown, request, parent, ...rest) {
    if (DEFERRED_MODULES.has(request) && parent?.filename?.startsWith(sdkDir) === true) {
      return deferred(() => load.call(Module, request, parent, ...rest) as object);
    }
    return load.call(this, request, parent, ...rest);
  };
  loader._load = loadDeferring;
  try {
    return require('@opentelemetry/sdk-node') as typeof import('@opentelemetry/sdk-node');
  } finally {
    // Unless someone wrapped it in turn meanwhile (theirs then calls ours, which passes through).
    if (loader._load === loadDeferring) loader._load = load;
  }
}
