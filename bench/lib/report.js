// @ts-check
'use strict';

/**
 * Turns the rounds into figures: medians per config, ratios against the
 * `off` loads run right before and after each load (the machine is shared
 * and its speed drifts: a slow phase slows a config and its neighbours, and
 * the ratio cancels that out), and renders
 * them as a text table, Markdown, and a small SVG chart.
 */

/** @typedef {import('./runner').RunResult} RunResult */
/** @typedef {import('./runner').Config} Config */

/**
 * @typedef {object} Metric
 * @property {'rps' | 'p50Ms' | 'p99Ms' | 'p999Ms' | 'cpuUsPerRequest' | 'rssMb' | 'rssPeakMb' | 'startupMs' | 'loadgenCpuPct'} key
 * @property {string} label
 * @property {number} digits
 * @property {boolean} [noRatio]   a condition of the measurement, not a cost: no ratio to off
 */

/** @type {Metric[]} */
const METRICS = [
  { key: 'rps', label: 'req/s', digits: 0 },
  { key: 'p50Ms', label: 'p50 ms', digits: 2 },
  { key: 'p99Ms', label: 'p99 ms', digits: 2 },
  { key: 'p999Ms', label: 'p99.9 ms', digits: 2 },
  { key: 'cpuUsPerRequest', label: 'CPU µs/req', digits: 0 },
  { key: 'rssMb', label: 'RSS MB/worker', digits: 1 },
  { key: 'rssPeakMb', label: 'peak RSS MB', digits: 1 },
  { key: 'startupMs', label: 'first 200 ms', digits: 0 },
  { key: 'loadgenCpuPct', label: 'loadgen CPU %', digits: 1, noRatio: true },
];
const RATIO_METRICS = METRICS.filter((m) => m.noRatio !== true);

/** Others' CPU (% of the machine) above which a run is marked noisy. */
const NOISY_PCT = 20;

/**
 * @param {number[]} values
 * @returns {number} NaN for no values
 */
function median(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? /** @type {number} */ (sorted[mid]) : (/** @type {number} */ (sorted[mid - 1]) + /** @type {number} */ (sorted[mid])) / 2;
}

/**
 * @typedef {object} ConfigSummary
 * @property {string} config
 * @property {string} title
 * @property {string} short
 * @property {number} rounds                        rounds that succeeded
 * @property {Record<string, number>} median        per metric key
 * @property {Record<string, number>} ratio         per metric key: median over rounds of value / the adjacent off loads' (geometric mean)
 * @property {number} spansPerRequest               median
 * @property {number | undefined} expected          spans one request makes (calibrated)
 * @property {number} missing                       summed over rounds
 * @property {number} spanRequests                  summed over rounds
 * @property {number | undefined} recordsMissing    log records missing, summed over rounds (configs with records)
 * @property {number | undefined} countsMissing     requests the duration histograms did not count, summed over rounds (configs with metrics)
 * @property {number} stopDelivered                 median share of the stop probe's spans that arrived
 * @property {number} stopCounted                   median share of the stop probe's requests the duration histograms counted at the sink
 * @property {number} logLines                      summed over rounds
 * @property {number} loggedDropped                 summed over rounds
 * @property {number} errors                        summed over rounds
 * @property {number} restarts                      summed over rounds
 * @property {number} logRecords                    summed over rounds
 * @property {number} metricExports                 summed over rounds
 * @property {string[]} failures
 */

/**
 * @param {Config[]} configs
 * @param {RunResult[]} runs
 * @returns {ConfigSummary[]}
 */
function summarize(configs, runs) {
  const ok = runs.filter((r) => r.error === undefined);
  /**
   * For each load, the `off` loads run nearest before and after it (runs are
   * in the order they ran; failed loads are skipped): what its ratios are
   * taken to. Found once per load, for every metric.
   * @type {Map<RunResult, RunResult[]>}
   */
  const offAround = new Map();
  const isOff = (/** @type {RunResult | undefined} */ r) => r !== undefined && r.config === 'off' && r.error === undefined;
  runs.forEach((run, at) => {
    const before = runs.slice(0, at).findLast(isOff);
    const after = runs.slice(at + 1).find(isOff);
    offAround.set(run, [before, after].filter((r) => r !== undefined));
  });
  return configs.map((config) => {
    const mine = ok.filter((r) => r.config === config.id);
    /** @type {Record<string, number>} */
    const med = {};
    /** @type {Record<string, number>} */
    const ratio = {};
    for (const { key } of METRICS) {
      med[key] = median(mine.map((r) => r[key]));
      ratio[key] = median(
        mine.map((r) => {
          if (config.id === 'off') return 1;
          // The geometric mean of the two neighbours: the midpoint of a drift, in ratio terms.
          const around = offAround.get(r) ?? [];
          if (around.length === 0) return NaN;
          const off = Math.exp(around.reduce((s, o) => s + Math.log(o[key]), 0) / around.length);
          return r[key] / off;
        }),
      );
    }
    const sum = (/** @type {(r: RunResult) => number} */ pick) => mine.reduce((s, r) => s + pick(r), 0);
    return {
      config: config.id,
      title: config.title,
      short: config.short,
      rounds: mine.length,
      median: med,
      ratio,
      spansPerRequest: median(mine.map((r) => r.spans.perRequest)),
      expected: mine.find((r) => r.spans.expected !== undefined)?.spans.expected,
      missing: sum((r) => r.spans.missing ?? 0),
      spanRequests: sum((r) => r.spans.requests),
      recordsMissing: mine.some((r) => r.spans.recordsMissing !== undefined) ? sum((r) => r.spans.recordsMissing ?? 0) : undefined,
      countsMissing: mine.some((r) => r.spans.countsMissing !== undefined) ? sum((r) => r.spans.countsMissing ?? 0) : undefined,
      stopDelivered: median(mine.map((r) => r.spans.stopProbe?.delivered ?? NaN)),
      stopCounted: median(mine.map((r) => (r.spans.stopProbe === undefined ? NaN : r.spans.stopProbe.counted / r.spans.stopProbe.requests))),
      logLines: sum((r) => r.spans.logLines),
      loggedDropped: sum((r) => r.spans.loggedDropped),
      errors: sum((r) => r.errors),
      restarts: sum((r) => r.restarts),
      logRecords: sum((r) => r.logRecords),
      metricExports: sum((r) => r.metricExports),
      failures: runs.filter((r) => r.config === config.id && r.error !== undefined).map((r) => `round ${r.round}: ${r.error}`),
    };
  });
}

/**
 * @param {number | undefined} value
 * @param {number} digits
 */
function num(value, digits) {
  if (value === undefined || !Number.isFinite(value)) return '—';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** @param {number | undefined} share */
const percent = (share) => (share === undefined || !Number.isFinite(share) ? '—' : `${Math.round(100 * share)}%`);

/** @param {number | undefined} value */
const times = (value) => (value === undefined || !Number.isFinite(value) ? '—' : `${value.toFixed(2)}×`);

/**
 * Missing spans with their share of the spans expected.
 * @param {ConfigSummary} s
 */
function missingText(s) {
  if (s.expected === undefined) return '—';
  const expectedTotal = s.expected * s.spanRequests;
  // A handful of requests are still in flight when the load generator stops
  // counting: their spans arrive uncounted-for, so tiny negatives are noise.
  const missing = Math.max(0, s.missing);
  return `${num(missing, 0)} (${num(expectedTotal > 0 ? (100 * missing) / expectedTotal : 0, 1)}%)`;
}

/**
 * @typedef {object} Table
 * @property {string} title
 * @property {string[]} head
 * @property {string[][]} rows
 * @property {string} [note]
 */

/**
 * @param {ConfigSummary[]} summaries
 * @param {number} rounds
 * @returns {Table}
 */
function summaryTable(summaries, rounds) {
  return {
    title: `Medians over ${rounds} round${rounds === 1 ? '' : 's'} (off: over all its loads, one between each two configs)`,
    head: ['config', ...METRICS.map((m) => m.label), 'spans/req', 'log records/req', 'metric exports', 'spans missing', 'log records missing', 'requests missing from metrics', 'spans kept at stop', '"dropped" log lines', 'HTTP errors'],
    rows: summaries.map((s) => [
      s.config,
      ...METRICS.map((m) => num(s.median[m.key], m.digits)),
      num(s.spansPerRequest, 2),
      num(s.spanRequests > 0 ? s.logRecords / s.spanRequests : NaN, 2),
      String(s.metricExports),
      missingText(s),
      s.recordsMissing === undefined ? '—' : num(Math.max(0, s.recordsMissing), 0),
      s.countsMissing === undefined ? '—' : num(s.countsMissing, 0),
      percent(s.stopDelivered),
      s.config === 'python' ? '—' : String(s.logLines),
      String(s.errors),
    ]),
  };
}

/**
 * @param {ConfigSummary[]} summaries
 * @returns {Table}
 */
function ratioTable(summaries) {
  return {
    title: 'Ratio to off (median over rounds of each load\'s ratio to the off loads right before and after it; req/s: higher is better, all else: lower is better)',
    head: ['config', ...RATIO_METRICS.map((m) => m.label)],
    rows: summaries.map((s) => [s.config, ...RATIO_METRICS.map((m) => times(s.ratio[m.key]))]),
  };
}

/**
 * The configs that write the access log, against the same app settings with
 * telemetry off (`against`): each ratio to off divided by that config's, both
 * paired with their neighbouring off loads. Null when no such pair ran.
 * @param {ConfigSummary[]} summaries
 * @param {Config[]} configs
 * @returns {Table | null}
 */
function againstTable(summaries, configs) {
  const byId = new Map(summaries.map((s) => [s.config, s]));
  const rows = configs.flatMap((config) => {
    const mine = byId.get(config.id);
    const base = config.against === undefined ? undefined : byId.get(config.against);
    if (mine === undefined || base === undefined) return [];
    return [[config.id, /** @type {string} */ (config.against), ...RATIO_METRICS.map((m) => times((mine.ratio[m.key] ?? NaN) / (base.ratio[m.key] ?? NaN)))]];
  });
  if (rows.length === 0) return null;
  return {
    title: 'Ratio to the same app settings with telemetry off (OTEL_SDK_DISABLED=true leaves the access log on: these configs write it, and so does their baseline; each ratio to off divided by the baseline\'s)',
    head: ['config', 'baseline', ...RATIO_METRICS.map((m) => m.label)],
    rows,
  };
}

/**
 * @param {RunResult[]} runs
 * @returns {Table}
 */
function roundsTable(runs) {
  return {
    title: 'Every run',
    head: ['round', 'config', ...METRICS.map((m) => m.label), 'requests', 'errors', 'spans', 'spans/req', 'missing', 'kept at stop', 'sink µs/req', 'manager µs/req', 'others\' CPU %', 'loads'],
    rows: runs.map((r) =>
      r.error !== undefined
        ? [String(r.round), r.config, `FAILED: ${r.error.split('\n')[0]}`]
        : [
            String(r.round),
            r.config,
            ...METRICS.map((m) => num(r[m.key], m.digits)),
            num(r.requests, 0),
            String(r.errors),
            num(r.spans.received, 0),
            num(r.spans.perRequest, 2),
            r.spans.missing === undefined ? '—' : num(r.spans.missing, 0),
            r.spans.stopProbe === undefined ? '—' : `${r.spans.stopProbe.received}/${Math.round(r.spans.stopProbe.requests * (r.spans.expected ?? 0))}`,
            num(r.sinkCpuUsPerRequest, 1),
            num(r.managerCpuUsPerRequest, 1),
            `${num(r.otherCpuPct, 0)}${r.otherCpuPct > NOISY_PCT ? '*' : ''}`,
            String(r.loads),
          ],
    ),
  };
}

/**
 * A plain-text table, numbers right-aligned.
 * @param {Table} table
 */
function textTable(table) {
  const widths = table.head.map((h, i) => Math.max(h.length, ...table.rows.map((row) => (row[i] ?? '').length)));
  const line = (/** @type {string[]} */ cells) =>
    cells.map((cell, i) => (i < 2 && !/^\d/.test(cell) ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  return [table.title, line(table.head), widths.map((w) => '-'.repeat(w)).join('  '), ...table.rows.map(line)].join('\n');
}

/**
 * A GFM table.
 * @param {Table} table
 */
function markdownTable(table) {
  const cells = (/** @type {string[]} */ row) => `| ${row.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
  const align = table.head.map((_, i) => (i === 0 || (i === 1 && table.head[1] === 'config') ? '---' : '---:'));
  return [`### ${table.title}`, '', cells(table.head), `| ${align.join(' | ')} |`, ...table.rows.map(cells)].join('\n');
}

/** @param {string} text */
const xml = (text) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * A horizontal grouped bar chart of the req/s, CPU-per-request, RSS and p99
 * ratios to `off`, with `off` as a dashed line at 1.0: readable at a glance
 * without any chart library.
 * @param {ConfigSummary[]} summaries
 * @param {string} subtitle
 */
function svgChart(summaries, subtitle) {
  const shown = summaries.filter((s) => s.config !== 'off');
  const bars = [
    { key: 'rps', label: 'req/s (higher: better)', color: '#2b7bb9' },
    { key: 'cpuUsPerRequest', label: 'CPU per request', color: '#e07b39' },
    { key: 'rssMb', label: 'RSS per worker', color: '#7a9a3a' },
    { key: 'p99Ms', label: 'p99 latency', color: '#9b59b6' },
  ];
  const values = shown.flatMap((s) => bars.map((b) => s.ratio[b.key] ?? NaN)).filter(Number.isFinite);
  const max = Math.max(1.5, Math.ceil(Math.max(...values, 0)));
  const left = 130;
  const plotWidth = 480;
  const width = left + plotWidth + 70;
  const barHeight = 13;
  const groupHeight = bars.length * (barHeight + 2) + 16;
  const top = 62;
  const height = top + shown.length * groupHeight + 50;
  const x = (/** @type {number} */ v) => left + (v / max) * plotWidth;

  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="12" y="22" font-size="15" font-weight="bold">Cost of telemetry: each config relative to off (= 1.0)</text>`,
    `<text x="12" y="40" fill="#555">${xml(subtitle)}</text>`,
  ];
  for (let tick = 0; tick <= max + 1e-9; tick += max > 4 ? 1 : 0.5) {
    parts.push(`<line x1="${x(tick)}" y1="${top - 6}" x2="${x(tick)}" y2="${height - 42}" stroke="#eee"/>`);
    parts.push(`<text x="${x(tick)}" y="${height - 30}" text-anchor="middle" fill="#777">${tick.toFixed(1)}×</text>`);
  }
  shown.forEach((s, g) => {
    const y0 = top + g * groupHeight;
    parts.push(`<text x="${left - 8}" y="${y0 + groupHeight / 2 - 10}" text-anchor="end" font-weight="bold">${xml(s.config)}</text>`);
    parts.push(`<text x="${left - 8}" y="${y0 + groupHeight / 2 + 5}" text-anchor="end" fill="#666" font-size="10">${xml(s.short)}</text>`);
    bars.forEach((b, i) => {
      const v = s.ratio[b.key] ?? NaN;
      const y = y0 + i * (barHeight + 2);
      if (!Number.isFinite(v)) {
        parts.push(`<text x="${left + 4}" y="${y + 13}" fill="#999">no data</text>`);
        return;
      }
      parts.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(v) - left)}" height="${barHeight}" fill="${b.color}"/>`);
      parts.push(`<text x="${x(v) + 5}" y="${y + 10}" font-size="10">${v.toFixed(2)}×</text>`);
    });
  });
  parts.push(`<line x1="${x(1)}" y1="${top - 10}" x2="${x(1)}" y2="${height - 42}" stroke="#222" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${x(1) + 4}" y="${top - 12}" fill="#222">off</text>`);
  bars.forEach((b, i) => {
    const lx = 12 + i * 160;
    parts.push(`<rect x="${lx}" y="${height - 18}" width="12" height="12" fill="${b.color}"/>`);
    parts.push(`<text x="${lx + 18}" y="${height - 8}">${xml(b.label)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

module.exports = { METRICS, NOISY_PCT, median, summarize, summaryTable, ratioTable, againstTable, roundsTable, textTable, markdownTable, svgChart };
