'use strict';
/**
 * CPU per log call of the two ways to put the trace context on each line:
 * the kit's pino mixin (src/log.ts, whose logger also redacts: `redact` is
 * the same logger without the mixin) and @opentelemetry/instrumentation-pino
 * (correlation only, and with its default log sending to a no-op Logs SDK).
 * Every mode writes the time as the kit's logger does (`isoTime`, the date
 * formatted once a second), except `plain-pino-time`: pino's own isoTime.
 * Each mode runs in its own child process: 1,000,000 info calls inside an
 * active span, to a destination that discards the output.
 *
 *   npm run build && node bench/log-correlation.js
 */
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { Writable } = require('node:stream');

const CALLS = Number(process.env.LOG_BENCH_CALLS || 1_000_000);
const MODES = ['plain', 'plain-pino-time', 'redact', 'mixin', 'instrumentation', 'instrumentation+sending'];

function run(mode) {
  const api = require('@opentelemetry/api');
  const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  if (mode.startsWith('instrumentation')) {
    const { PinoInstrumentation } = require('@opentelemetry/instrumentation-pino');
    const { registerInstrumentations } = require('@opentelemetry/instrumentation');
    registerInstrumentations({ instrumentations: [new PinoInstrumentation({ disableLogSending: mode === 'instrumentation' })] });
  }
  const sink = () => new Writable({ write: (_chunk, _encoding, callback) => callback() });
  const { createLogger, StdioDestination, REDACT_PATHS, isoTime } = require(path.join(__dirname, '../dist/src/log.js'));
  const pino = require('pino');
  const options = { base: { pid: process.pid }, timestamp: mode === 'plain-pino-time' ? pino.stdTimeFunctions.isoTime : () => isoTime(), formatters: { level: (label) => ({ level: label }) } };
  // The kit's logger without its mixin: what the mixin alone adds is mixin - redact.
  if (mode === 'redact') options.redact = { paths: REDACT_PATHS, censor: '[Redacted]' };
  const log =
    mode === 'mixin'
      ? createLogger({ stdout: sink(), stderr: sink() })
      : pino(options, new StdioDestination(undefined, sink(), sink()));
  const spanContext = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: 1 };
  const active = api.trace.setSpan(api.context.active(), api.trace.wrapSpanContext(spanContext));
  api.context.with(active, () => {
    for (let i = 0; i < 20_000; i += 1) log.info({ i }, 'warm up');
    const before = process.cpuUsage();
    for (let i = 0; i < CALLS; i += 1) log.info({ i }, 'a line');
    const used = process.cpuUsage(before);
    process.stdout.write(JSON.stringify({ mode, usPerCall: (used.user + used.system) / CALLS }));
  });
}

if (process.argv[2]) {
  run(process.argv[2]);
} else {
  const results = MODES.map((mode) => {
    const child = spawnSync(process.execPath, [__filename, mode], { encoding: 'utf8' });
    if (child.status !== 0) throw new Error(`${mode}: ${child.stderr}`);
    return JSON.parse(child.stdout);
  });
  const plain = results[0].usPerCall;
  console.log('| mode | CPU µs per call | over plain |');
  console.log('|---|---|---|');
  for (const { mode, usPerCall } of results) console.log(`| ${mode} | ${usPerCall.toFixed(3)} | +${(usPerCall - plain).toFixed(3)} µs |`);
}
