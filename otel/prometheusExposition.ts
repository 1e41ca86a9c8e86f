/**
 * The text side of the Prometheus endpoint (`prometheus.ts`), pure so that
 * it is unit-tested in-process:
 *
 * - `serializeWorker` turns one worker's collected metrics into the
 *   Prometheus text format with the SDK's own `PrometheusSerializer`, after
 *   giving metric names their unit suffix (`_seconds`), which the serializer
 *   of `@opentelemetry/exporter-prometheus` 0.300 does not add, and every
 *   series the worker's `service_instance_id` label;
 * - `mergeExpositions` joins several workers' texts into one exposition in
 *   which each metric family appears once, with one HELP/TYPE and all its
 *   lines contiguous (the text format requires it: Prometheus rejects a
 *   scrape in which a family's lines are split), then adds `kit_worker_up`.
 */
import type { Resource } from '@opentelemetry/resources';
import type { MetricData, ResourceMetrics } from '@opentelemetry/sdk-metrics';

/** The resource attribute that tells workers apart; a label on every series. */
export const WORKER_ATTRIBUTE = 'service.instance.id';
export const WORKER_LABEL = 'service_instance_id';
export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

// OTel unit (UCUM) to Prometheus unit word, from the OpenTelemetry
// "Prometheus and OpenMetrics compatibility" spec (metric metadata).
const UNITS: Readonly<Record<string, string>> = {
  d: 'days',
  h: 'hours',
  min: 'minutes',
  s: 'seconds',
  ms: 'milliseconds',
  us: 'microseconds',
  ns: 'nanoseconds',
  By: 'bytes',
  KiBy: 'kibibytes',
  MiBy: 'mebibytes',
  GiBy: 'gibibytes',
  TiBy: 'tebibytes',
  KBy: 'kilobytes',
  MBy: 'megabytes',
  GBy: 'gigabytes',
  TBy: 'terabytes',
  m: 'meters',
  V: 'volts',
  A: 'amperes',
  J: 'joules',
  W: 'watts',
  g: 'grams',
  Cel: 'celsius',
  Hz: 'hertz',
  '%': 'percent',
};
const PER_UNITS: Readonly<Record<string, string>> = { s: 'second', m: 'minute', h: 'hour', d: 'day', w: 'week', mo: 'month', y: 'year' };

function sanitize(word: string): string {
  return word.replace(/[^a-zA-Z0-9_]/g, '_').replace(/_{2,}/g, '_').replace(/^_|_$/g, '');
}

/**
 * The Prometheus unit word for an OTel unit: `s` → `seconds`, `By/s` →
 * `bytes_per_second`, `{request}` → none, `1` → `ratio` for a gauge only.
 */
export function prometheusUnit(unit: string, isGauge: boolean): string {
  const bare = unit.replace(/\{[^}]*\}/g, '').trim();
  if (bare === '') return '';
  if (bare === '1') return isGauge ? 'ratio' : '';
  const slash = bare.indexOf('/');
  if (slash >= 0) {
    const top = bare.slice(0, slash);
    const bottom = bare.slice(slash + 1);
    const left = top === '' || top === '1' ? '' : (UNITS[top] ?? sanitize(top));
    const right = PER_UNITS[bottom] ?? sanitize(bottom);
    if (right === '') return left;
    return left === '' ? `per_${right}` : `${left}_per_${right}`;
  }
  return UNITS[bare] ?? sanitize(bare);
}

function isGauge(metric: MetricData): boolean {
  // DataPointType: HISTOGRAM 0, EXPONENTIAL_HISTOGRAM 1, GAUGE 2, SUM 3.
  // A non-monotonic sum is exposed as a gauge.
  return metric.dataPointType === 2 || (metric.dataPointType === 3 && !metric.isMonotonic);
}

/** `metric` named and united the Prometheus way (`http.server.request.duration`, `s` → `…_seconds`, `seconds`). */
function withUnitSuffix(metric: MetricData): MetricData {
  const unit = prometheusUnit(metric.descriptor.unit, isGauge(metric));
  const name = metric.descriptor.name;
  const normalized = sanitize(name);
  const suffixed = unit === '' || normalized.endsWith(`_${unit}`) || normalized.endsWith(`_${unit}_total`) ? name : `${name}_${unit}`;
  return { ...metric, descriptor: { ...metric.descriptor, name: suffixed, unit } } as MetricData;
}

/** Builds worker-side pieces once: the serializer and the resource helper are loaded lazily with the SDK. */
export interface WorkerSerializer {
  /** One worker's exposition, and the worker id its series carry. */
  serialize(resourceMetrics: ResourceMetrics): { text: string; workerId: string };
}

/**
 * A serializer for one worker. `fallbackId` labels the series when the
 * resource has no `service.instance.id` (its detector turned off): without a
 * per-worker label, two workers' series would collide.
 */
export function createWorkerSerializer(fallbackId: string): WorkerSerializer {
  const { PrometheusSerializer } = require('@opentelemetry/exporter-prometheus') as typeof import('@opentelemetry/exporter-prometheus');
  const { resourceFromAttributes } = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
  const serializer = new PrometheusSerializer(undefined, false, new RegExp(`^${WORKER_ATTRIBUTE.replace(/\./g, '\\.')}$`), false, false);
  let withId: { from: Resource; to: Resource } | undefined;
  return {
    serialize(resourceMetrics) {
      let resource = resourceMetrics.resource;
      const id = resource.attributes[WORKER_ATTRIBUTE];
      if (typeof id !== 'string' || id === '') {
        if (withId?.from !== resource) withId = { from: resource, to: resource.merge(resourceFromAttributes({ [WORKER_ATTRIBUTE]: fallbackId })) };
        resource = withId.to;
      }
      const renamed: ResourceMetrics = {
        resource,
        scopeMetrics: resourceMetrics.scopeMetrics.map((scope) => ({ ...scope, metrics: scope.metrics.map(withUnitSuffix) })),
      };
      return { text: serializer.serialize(renamed), workerId: String(resource.attributes[WORKER_ATTRIBUTE]) };
    },
  };
}

interface Family {
  name: string;
  help: string | undefined;
  unit: string | undefined;
  type: string | undefined;
  samples: string[];
}

/** Splits an exposition into its metric families, in order (comments other than HELP/UNIT/TYPE dropped). */
export function parseFamilies(text: string): Family[] {
  const families = new Map<string, Family>();
  let current: Family | undefined;
  const family = (name: string): Family => {
    let found = families.get(name);
    if (found === undefined) {
      found = { name, help: undefined, unit: undefined, type: undefined, samples: [] };
      families.set(name, found);
    }
    return found;
  };
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (line === '') continue;
    if (line.startsWith('#')) {
      const match = /^#\s+(HELP|UNIT|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (match === null) continue;
      const [, keyword, name, rest = ''] = match as unknown as [string, string, string, string | undefined];
      current = family(name);
      if (keyword === 'HELP') current.help = rest;
      else if (keyword === 'UNIT') current.unit = rest;
      else current.type = rest.trim();
      continue;
    }
    // A sample belongs to the family whose metadata came last; one with none
    // (not from our serializer) is its own untyped family.
    if (current === undefined) {
      const name = /^[^{\s]+/.exec(line)?.[0] ?? line;
      current = family(name);
    }
    current.samples.push(line);
  }
  return [...families.values()];
}

/** One worker as the merge sees it. */
export interface WorkerExposition {
  /** Labels of its `kit_worker_up` series (`service_instance_id`, `process_pid`). */
  readonly labels: Readonly<Record<string, string>>;
  /** Its exposition, or undefined if it did not answer in time. */
  readonly text: string | undefined;
  /** Why it did not answer, as a comment in the output. */
  readonly error?: string;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(labels: Readonly<Record<string, string>>): string {
  const parts = Object.entries(labels).map(([key, value]) => `${key}="${escapeLabel(value)}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/**
 * Workers that share a `service_instance_id` (pinned for all of them in
 * `OTEL_RESOURCE_ATTRIBUTES`) would write the same series, which Prometheus
 * drops as duplicates: each of them gets `<id>-<pid>` instead, in its labels
 * and its text. Returns the ids that were shared.
 */
export function distinctWorkerIds(workers: WorkerExposition[]): string[] {
  const byId = new Map<string, number>();
  for (const worker of workers) {
    const id = worker.labels[WORKER_LABEL] ?? '';
    byId.set(id, (byId.get(id) ?? 0) + 1);
  }
  const shared = [...byId].filter(([, count]) => count > 1).map(([id]) => id);
  if (shared.length === 0) return shared;
  workers.forEach((worker, index) => {
    const id = worker.labels[WORKER_LABEL] ?? '';
    if (!shared.includes(id)) return;
    const distinct = `${id}-${worker.labels.process_pid ?? index}`;
    const from = `${WORKER_LABEL}="${escapeLabel(id)}"`;
    const to = `${WORKER_LABEL}="${escapeLabel(distinct)}"`;
    workers[index] = { ...worker, labels: { ...worker.labels, [WORKER_LABEL]: distinct }, text: worker.text?.split(from).join(to) };
  });
  return shared;
}

export interface MergeResult {
  text: string;
  /** Families a worker reported with another TYPE than the first worker did: its samples were left out. */
  conflicts: string[];
}

/**
 * Joins workers' expositions: each family once, with the HELP/UNIT/TYPE of
 * the first worker that reported it and the samples of every worker that
 * agrees on its TYPE, then `kit_worker_up` (1 answered, 0 did not) per worker.
 */
export function mergeExpositions(workers: readonly WorkerExposition[]): MergeResult {
  const merged = new Map<string, Family>();
  const conflicts: string[] = [];
  for (const worker of workers) {
    if (worker.text === undefined) continue;
    for (const family of parseFamilies(worker.text)) {
      const existing = merged.get(family.name);
      if (existing === undefined) {
        merged.set(family.name, { ...family, samples: [...family.samples] });
      } else if (existing.type !== family.type) {
        conflicts.push(`${family.name} (${existing.type ?? 'untyped'} and ${family.type ?? 'untyped'})`);
      } else {
        for (const sample of family.samples) existing.samples.push(sample);
      }
    }
  }
  const lines: string[] = [];
  for (const family of merged.values()) {
    if (family.samples.length === 0) continue;
    if (family.help !== undefined) lines.push(`# HELP ${family.name} ${family.help}`);
    if (family.unit !== undefined) lines.push(`# UNIT ${family.name} ${family.unit}`);
    if (family.type !== undefined) lines.push(`# TYPE ${family.name} ${family.type}`);
    for (const sample of family.samples) lines.push(sample);
  }
  lines.push('# HELP kit_worker_up 1 if the worker answered this scrape in time, 0 if not.');
  lines.push('# TYPE kit_worker_up gauge');
  for (const worker of workers) lines.push(`kit_worker_up${labelText(worker.labels)} ${worker.text === undefined ? 0 : 1}`);
  for (const worker of workers) {
    if (worker.error !== undefined) lines.push(`# worker ${worker.labels[WORKER_LABEL] ?? '?'}: ${worker.error.replace(/\n/g, ' ')}`);
  }
  return { text: `${lines.join('\n')}\n`, conflicts };
}
