/**
 * The deploy files, checked without a cluster: every Kubernetes object
 * against the API's schemas, and the numbers that must agree with the app
 * (probe paths, ports, grace periods, env names) read from the app's own
 * settings rather than copied. The collector config: every pipeline uses
 * only components defined in it, memory_limiter first.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import supertest from 'supertest';
import YAML from 'yaml';
import { createApp } from '../../src/app';
import { loadConfig } from '../../src/config';
import { cleanEnv, ROOT } from '../helpers/pm2';

/* eslint-disable @typescript-eslint/no-explicit-any -- manifests are untyped YAML, checked field by field */
type Manifest = Record<string, any>;
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: Record<string, any>;
}

const KUBERNETES = path.join(ROOT, 'deploy/kubernetes');
const COLLECTOR = path.join(ROOT, 'deploy/collector');

function parseYaml(file: string): Manifest[] {
  return YAML.parseAllDocuments(fs.readFileSync(file, 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]?.message}`);
    return doc.toJS() as Manifest;
  });
}

/** The objects a kustomization lists, in order; `config` is the generated ConfigMap's files. */
function kustomization(dir: string): { objects: Manifest[]; files: string[]; kustomization: Manifest } {
  const [k] = parseYaml(path.join(dir, 'kustomization.yaml'));
  const files = (k?.resources ?? []) as string[];
  return { objects: files.flatMap((file) => parseYaml(path.join(dir, file))), files, kustomization: k ?? {} };
}

const app = kustomization(KUBERNETES);
const agent = kustomization(COLLECTOR);
const find = (objects: Manifest[], kind: string): Manifest => {
  const found = objects.find((o) => o.kind === kind);
  if (found === undefined) throw new Error(`no ${kind} among the manifests`);
  return found;
};
const deployment = find(app.objects, 'Deployment');
const pod = deployment.spec.template.spec;
const container = pod.containers[0];
const env = container.env as EnvVar[];
/** The container's literal env values (the app reads these; valueFrom ones are set by the kubelet). */
const literalEnv = Object.fromEntries(env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value as string]));
const envValue = (name: string): string => {
  const value = literalEnv[name];
  if (value === undefined) throw new Error(`${name} is not set in the Deployment`);
  return value;
};
const daemonSet = find(agent.objects, 'DaemonSet');
const collector = parseYaml(path.join(COLLECTOR, 'config.yaml'))[0] as Manifest;

/** The ecosystem file as PM2 reads it, in a fresh Node, with the Deployment's env. */
function ecosystem(extra: Record<string, string>): { kill_timeout: number; env: Record<string, string> } {
  const result = spawnSync(process.execPath, ['-e', "process.stdout.write(JSON.stringify(require('./ecosystem.config.js').apps[0]))"], {
    cwd: ROOT,
    env: cleanEnv({ ENV_FILE: '', ...extra }),
    encoding: 'utf8',
  });
  if (result.status !== 0) throw new Error(result.stderr);
  return JSON.parse(result.stdout) as { kill_timeout: number; env: Record<string, string> };
}

function validate(objects: Manifest[]): { id: string; error?: string }[] {
  const result = spawnSync(process.execPath, [path.join(ROOT, 'test/fixtures/validate-manifests.mjs')], {
    cwd: ROOT,
    input: JSON.stringify(objects),
    encoding: 'utf8',
  });
  if (result.status !== 0) throw new Error(result.stderr);
  return JSON.parse(result.stdout) as { id: string; error?: string }[];
}

/** A port reference (a name or a number) resolved against the container's ports. */
function portNumber(ref: string | number, ports: { name?: string; containerPort: number }[]): number | undefined {
  return typeof ref === 'number' ? ref : ports.find((p) => p.name === ref)?.containerPort;
}

/** The port of a URL or `host:port` endpoint, which may hold `$(VAR)` or `${env:VAR}` references. */
function portOf(endpoint: string): number {
  return Number(/:(\d+)(?:\/.*)?$/.exec(endpoint)?.[1]);
}

describe('the Kubernetes manifests', () => {
  test('every kustomization lists files that exist, and every manifest file is listed', () => {
    for (const [dir, listed] of [
      [KUBERNETES, app.files],
      [COLLECTOR, agent.files],
    ] as const) {
      const onDisk = fs.readdirSync(dir).filter((file) => file.endsWith('.yaml') && file !== 'kustomization.yaml' && file !== 'config.yaml');
      expect([...listed].sort()).toEqual(onDisk.sort());
    }
  });

  test('every object is valid against the Kubernetes API schemas', () => {
    const results = validate([...app.objects, ...agent.objects]);
    expect(results.filter((r) => r.error !== undefined)).toEqual([]);
    expect(results.map((r) => r.id).sort()).toEqual(
      [
        'ClusterRole/otel-agent',
        'ClusterRoleBinding/otel-agent',
        'DaemonSet/otel-agent',
        'Deployment/koa-otel-app',
        'HorizontalPodAutoscaler/koa-otel-app',
        'PodDisruptionBudget/koa-otel-app',
        'Service/koa-otel-app',
        'ServiceAccount/otel-agent',
      ].sort(),
    );
  });

  test('the schema check catches a wrong field type', () => {
    const broken = structuredClone(deployment);
    broken.spec.template.spec.containers[0].ports[0].containerPort = '8000';
    expect(validate([broken])[0]?.error).toMatch(/containerPort must be integer/);
  });

  test('the probe paths exist in the app: startup and liveness /healthz, readiness /readyz', async () => {
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(container.startupProbe.httpGet.path).toBe('/healthz');
    const http = supertest(createApp().callback());
    for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
      expect([probe.httpGet.path, (await http.get(probe.httpGet.path)).status]).toEqual([probe.httpGet.path, 200]);
    }
    // Readiness turns 503 once a worker stops; liveness stays 200 (the kubelet must not restart a draining pod).
    const stopping = supertest(createApp({ isShuttingDown: () => true }).callback());
    expect((await stopping.get(container.readinessProbe.httpGet.path)).status).toBe(503);
    expect((await stopping.get(container.livenessProbe.httpGet.path)).status).toBe(200);
  });

  test('ports agree: PORT, the container port, the probes and the Service', () => {
    const port = loadConfig(literalEnv).port;
    const http = container.ports.find((p: Manifest) => p.name === 'http');
    expect(http.containerPort).toBe(port);
    for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
      expect(portNumber(probe.httpGet.port, container.ports)).toBe(port);
    }
    const service = find(app.objects, 'Service');
    expect(service.spec.ports.map((p: Manifest) => portNumber(p.targetPort, container.ports))).toEqual([port]);
    expect(service.spec.selector).toEqual(deployment.spec.template.metadata.labels);
  });

  test('the grace period covers preStop and PM2 kill_timeout, which covers drain and flush', () => {
    const config = loadConfig(literalEnv);
    const { kill_timeout: killTimeoutMs } = ecosystem(literalEnv);
    const preStop = container.lifecycle.preStop.exec.command as string[];
    expect(preStop[0]).toBe('sleep');
    const preStopMs = Number(preStop[1]) * 1000;
    expect(preStopMs).toBeGreaterThan(0);
    expect(killTimeoutMs).toBeGreaterThan(config.drainTimeoutMs + config.flushTimeoutMs);
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(preStopMs + killTimeoutMs);
  });

  test('rolls out without losing capacity, and is spread and scaled by pod', () => {
    expect(deployment.spec.strategy).toMatchObject({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0 } });
    const labels = deployment.spec.template.metadata.labels;
    expect(find(app.objects, 'PodDisruptionBudget').spec.selector.matchLabels).toEqual(labels);
    expect(deployment.spec.selector.matchLabels).toEqual(labels);
    const hpa = find(app.objects, 'HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
  });

  test('one worker per CPU of the limit, and their memory restarts below the memory limit', () => {
    const workers = env.find((e) => e.name === 'WEB_CONCURRENCY');
    expect(workers?.valueFrom?.resourceFieldRef).toMatchObject({ resource: 'limits.cpu', divisor: '1' });
    const { limits } = container.resources;
    const cpus = Math.ceil(/m$/.test(limits.cpu) ? parseInt(limits.cpu, 10) / 1000 : Number(limits.cpu));
    const units: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 };
    const bytes = (quantity: string): number => {
      const [, number, unit] = /^(\d+)([KMG]i?)$/.exec(quantity) ?? [];
      return Number(number) * (units[unit ?? ''] ?? NaN);
    };
    // PM2 reads `400M` as MiB.
    const restartAt = bytes(envValue('MAX_MEMORY_RESTART'));
    expect(cpus * restartAt).toBeLessThan(bytes(limits.memory));
    expect(container.resources.requests).toBeDefined();
  });

  test('runs as non-root on a read-only root, without privileges; PM2_HOME on an emptyDir', () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
    expect(container.securityContext).toMatchObject({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    const pm2Home = /^ENV .*\bPM2_HOME=(\S+)/m.exec(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
    expect(pm2Home).toBeDefined();
    const mount = container.volumeMounts.find((m: Manifest) => pm2Home?.startsWith(`${m.mountPath}/`));
    expect(pod.volumes.find((v: Manifest) => v.name === mount?.name)?.emptyDir).toBeDefined();
  });

  test('the pod identity reaches the resource attributes through the downward API', () => {
    const attributes = Object.fromEntries(envValue('OTEL_RESOURCE_ATTRIBUTES').split(',').map((pair) => pair.split('=') as [string, string]));
    const fieldOf = (name: string | undefined): string | undefined => env.find((e) => `$(${e.name})` === name)?.valueFrom?.fieldRef?.fieldPath;
    expect({
      'k8s.pod.name': fieldOf(attributes['k8s.pod.name']),
      'k8s.pod.uid': fieldOf(attributes['k8s.pod.uid']),
      'k8s.namespace.name': fieldOf(attributes['k8s.namespace.name']),
      'k8s.node.name': fieldOf(attributes['k8s.node.name']),
    }).toEqual({ 'k8s.pod.name': 'metadata.name', 'k8s.pod.uid': 'metadata.uid', 'k8s.namespace.name': 'metadata.namespace', 'k8s.node.name': 'spec.nodeName' });
    // Setting the variable replaces the ecosystem file's default, which carries the package version.
    const { version } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(attributes['service.version']).toBe(version);
    // Kubernetes expands $(VAR) only for variables defined earlier in the list.
    env.forEach((e, index) => {
      for (const [, name] of (e.value ?? '').matchAll(/\$\((\w+)\)/g)) {
        expect([e.name, name, env.findIndex((d) => d.name === name) < index && env.some((d) => d.name === name)]).toEqual([e.name, name, true]);
      }
    });
  });

  test('every env name is a documented setting, a standard OTEL variable, or only feeds a $(VAR) reference', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const settings = readme.slice(readme.indexOf('\n## Settings\n'), readme.indexOf('\n## ', readme.indexOf('\n## Settings\n') + 1));
    // Names in the first column of the README's settings tables.
    const documented = new Set([...settings.matchAll(/^\| ([^|]+)\|/gm)].flatMap(([, cell]) => [...(cell ?? '').matchAll(/`([A-Z][A-Z0-9_]+)`/g)].map(([, name]) => name)));
    // Standard variables of the OpenTelemetry SDK configuration spec not in those tables.
    const standard = new Set(['OTEL_METRICS_EXPORTER', 'OTEL_LOGS_EXPORTER', 'OTEL_EXPORTER_PROMETHEUS_HOST', 'OTEL_EXPORTER_PROMETHEUS_PORT', 'OTEL_METRIC_EXPORT_INTERVAL']);
    const referenced = new Set(env.flatMap((e) => [...(e.value ?? '').matchAll(/\$\((\w+)\)/g)].map(([, name]) => name)));
    const unknown = env.map((e) => e.name).filter((name) => !documented.has(name) && !standard.has(name) && !referenced.has(name));
    expect(unknown).toEqual([]);
  });

  test('Prometheus scrapes the port the metrics exporter listens on', () => {
    const annotations = deployment.spec.template.metadata.annotations;
    expect(annotations['prometheus.io/scrape']).toBe('true');
    const port = Number(envValue('OTEL_EXPORTER_PROMETHEUS_PORT'));
    expect(Number(annotations['prometheus.io/port'])).toBe(port);
    expect(portNumber('metrics', container.ports)).toBe(port);
    expect(envValue('OTEL_EXPORTER_PROMETHEUS_HOST')).toBe('0.0.0.0');
  });

  test('the app sends to the node-local agent: status.hostIP and the agent hostPort', () => {
    const endpoint = envValue('OTEL_EXPORTER_OTLP_ENDPOINT');
    expect(endpoint).toMatch(/^http:\/\/\$\(HOST_IP\):\d+$/);
    expect(env.find((e) => e.name === 'HOST_IP')?.valueFrom?.fieldRef?.fieldPath).toBe('status.hostIP');
    const agentPorts = daemonSet.spec.template.spec.containers[0].ports as Manifest[];
    const grpc = agentPorts.find((p) => p.hostPort === portOf(endpoint));
    expect(grpc?.containerPort).toBe(portOf(collector.receivers.otlp.protocols.grpc.endpoint));
  });
});

describe('the collector agent', () => {
  const service = collector.service;
  const defined = (section: string): Set<string> => new Set(Object.keys(collector[section] ?? {}));

  test('every pipeline refers only to defined receivers, processors and exporters, and every extension is defined', () => {
    const missing: string[] = [];
    for (const [name, pipeline] of Object.entries(service.pipelines as Record<string, Manifest>)) {
      for (const section of ['receivers', 'processors', 'exporters']) {
        for (const component of pipeline[section] ?? []) if (!defined(section).has(component)) missing.push(`${name}: ${section} ${component}`);
      }
    }
    for (const extension of service.extensions) if (!defined('extensions').has(extension)) missing.push(`extension ${extension}`);
    expect(missing).toEqual([]);
    expect(Object.keys(service.pipelines).sort()).toEqual(['logs', 'metrics', 'traces']);
  });

  test('memory_limiter comes first in every pipeline, then k8sattributes and batch', () => {
    for (const pipeline of Object.values(service.pipelines as Record<string, Manifest>)) {
      expect(pipeline.processors).toEqual(['memory_limiter', 'k8sattributes', 'batch']);
    }
  });

  test('the exporter retries, with a persistent queue on a mounted volume, and its auth header from a Secret', () => {
    const exporters = Object.values(collector.exporters as Record<string, Manifest>);
    const agentContainer = daemonSet.spec.template.spec.containers[0];
    const agentEnv = agentContainer.env as EnvVar[];
    for (const exporter of exporters) {
      expect(exporter.retry_on_failure.enabled).toBe(true);
      const storage = exporter.sending_queue.storage as string;
      expect(service.extensions).toContain(storage);
      expect(storage.split('/')[0]).toBe('file_storage');
      const directory = collector.extensions[storage].directory as string;
      const mount = agentContainer.volumeMounts.find((m: Manifest) => directory === m.mountPath || directory.startsWith(`${m.mountPath}/`));
      expect(daemonSet.spec.template.spec.volumes.find((v: Manifest) => v.name === mount?.name)?.hostPath).toBeDefined();
      for (const value of Object.values(exporter.headers as Record<string, string>)) {
        const variable = /^\$\{env:(\w+)\}$/.exec(value)?.[1];
        expect(agentEnv.find((e) => e.name === variable)?.valueFrom?.secretKeyRef).toBeDefined();
      }
    }
    // Every ${env:VAR} the config uses is set in the agent's container.
    const used = [...fs.readFileSync(path.join(COLLECTOR, 'config.yaml'), 'utf8').matchAll(/\$\{env:(\w+)\}/g)].map(([, name]) => name);
    expect(used.filter((name) => !agentEnv.some((e) => e.name === name))).toEqual([]);
  });

  test('the DaemonSet mounts the generated config where its --config points', () => {
    const spec = daemonSet.spec.template.spec;
    const [generator] = agent.kustomization.configMapGenerator as Manifest[];
    expect(generator?.files).toEqual(['config.yaml']);
    const volume = spec.volumes.find((v: Manifest) => v.configMap?.name === generator?.name);
    const mount = spec.containers[0].volumeMounts.find((m: Manifest) => m.name === volume?.name);
    expect(spec.containers[0].args).toContain(`--config=${mount?.mountPath}/config.yaml`);
    const binding = find(agent.objects, 'ClusterRoleBinding');
    expect(binding.subjects[0]).toMatchObject({ name: spec.serviceAccountName, namespace: agent.kustomization.namespace });
  });
});
