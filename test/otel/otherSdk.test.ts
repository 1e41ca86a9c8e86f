/**
 * An SDK already registered when the kit's preload runs, as with the
 * OpenTelemetry Operator's injection (`NODE_OPTIONS=--require …`, which Node
 * runs before `-r`): the preload steps aside with one line instead of
 * instrumenting the process a second time.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { FIXTURES, PRELOAD } from '../helpers/child';
import { cleanEnv, ROOT } from '../helpers/pm2';

jest.setTimeout(60_000);

const OTHER_SDK = path.join(FIXTURES, 'other-sdk.js');
const SCRIPT = path.join(FIXTURES, 'one-request.js');
const STEP_ASIDE = /another OpenTelemetry SDK is already registered in this process.*steps aside/;

interface Outcome {
  code: number | null;
  stderr: string;
  stdout: string;
  report: { otherSdkServerSpans: number; kitHook: boolean; serverWraps: number };
}

function run(args: string[], env: Record<string, string> = {}): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...args, SCRIPT], {
      cwd: ROOT,
      // No endpoint: the kit would print its spans to stdout (console exporter).
      env: cleanEnv({ OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', ...env }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('exit', (code) => {
      const line = stdout.split('\n').find((l) => l.startsWith('{"otherSdkServerSpans"'));
      if (line === undefined) reject(new Error(`no report (exit ${code})\n${stdout}\n${stderr}`));
      else resolve({ code, stderr, stdout, report: JSON.parse(line) as Outcome['report'] });
    });
  });
}

test.each([
  ['-r other, -r kit', ['-r', OTHER_SDK, '-r', PRELOAD], {}],
  ['NODE_OPTIONS=--require other, -r kit (the Operator)', ['-r', PRELOAD], { NODE_OPTIONS: `--require ${OTHER_SDK}` }],
])('with another SDK registered first (%s), the preload steps aside with one line', async (_how, args, env) => {
  const { code, stderr, stdout, report } = await run(args, env);
  expect(code).toBe(0);
  expect(stderr.split('\n').filter((line) => STEP_ASIDE.test(line))).toHaveLength(1);
  // One SDK: one wrap of http.Server, one server span, and the kit's exporter never ran.
  expect(report).toEqual({ otherSdkServerSpans: 1, kitHook: false, serverWraps: 1 });
  expect(stdout).not.toContain('otel.span');
});

test('alone, the preload instruments as usual and says nothing about another SDK', async () => {
  const { code, stderr, stdout, report } = await run(['-r', PRELOAD]);
  expect(code).toBe(0);
  expect(stderr).not.toMatch(STEP_ASIDE);
  expect(report).toMatchObject({ otherSdkServerSpans: 0, kitHook: true, serverWraps: 1 });
  // Flushed at exit by the preload: the kit's console exporter printed the server span.
  expect(stdout).toContain('otel.span');
});
