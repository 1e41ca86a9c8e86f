/**
 * Podman for the container tests: build the real Dockerfile, run the image,
 * and clean up. Also builds a local stand-in for `node:24-bookworm-slim` when
 * no image registry is reachable: Debian minbase (debootstrap, from the mirror
 * the machine's own apt sources name), this Node 24 binary, npm from the npm
 * registry, and a `node` user with uid 1000, like the official image.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cleanEnv } from './pm2';

/**
 * Every podman call: runc, because the default crun fails on this machine's
 * hybrid cgroups, and cgroupfs, because there is no systemd to manage them.
 */
const GLOBAL_FLAGS = ['--runtime', 'runc', '--cgroup-manager=cgroupfs'];

export const NODE_BASE = 'localhost/kit-node-base:24';

/** Why podman cannot run containers here, or undefined when it can. */
export function podmanUnavailable(): string | undefined {
  const result = spawnSync('podman', [...GLOBAL_FLAGS, 'info', '--format', '{{.Host.OCIRuntime.Name}}'], { encoding: 'utf8', timeout: 60_000 });
  if (result.error) return `podman cannot run (${result.error.message})`;
  if (result.status !== 0) return `podman info failed: ${result.stderr.trim().split('\n').pop() ?? ''}`;
  return undefined;
}

/** Runs `podman <args>`; resolves with stdout, rejects with the output. */
export function podman(args: string[], options: { timeoutMs?: number; allowFailure?: boolean } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile('podman', [...GLOBAL_FLAGS, ...args], { env: cleanEnv(), timeout: options.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      if (error && !options.allowFailure) reject(new Error(`podman ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

function run(command: string, args: string[], options: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd: options.cwd, env: cleanEnv(), timeout: options.timeoutMs ?? 300_000, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${error.message}\n${stdout.slice(-2000)}\n${stderr.slice(-2000)}`));
      else resolve(stdout);
    });
  });
}

/**
 * `--ulimit` flags within this process's own limits: podman's defaults ask
 * for more than this machine grants, and runc refuses to start the container.
 */
export function ulimitFlags(): string[] {
  const limits = fs.readFileSync('/proc/self/limits', 'utf8');
  const soft = (name: string, cap: number): number => {
    const match = new RegExp(`^${name}\\s+(\\d+|unlimited)`, 'm').exec(limits);
    const value = match?.[1] === undefined || match[1] === 'unlimited' ? cap : Number(match[1]);
    return Math.min(value, cap);
  };
  const nofile = soft('Max open files', 65_536);
  const nproc = soft('Max processes', 4096);
  return ['--ulimit', `nofile=${nofile}:${nofile}`, '--ulimit', `nproc=${nproc}:${nproc}`];
}

/**
 * The Debian mirror the machine's apt sources name (deb822 `.sources` or
 * one-line `.list`), read at run time so that no mirror host is written
 * into the repository.
 */
export function debianMirror(): string {
  const files = ['/etc/apt/sources.list'];
  const dir = '/etc/apt/sources.list.d';
  if (fs.existsSync(dir)) for (const name of fs.readdirSync(dir).sort()) if (/\.(sources|list)$/.test(name)) files.push(path.join(dir, name));
  for (const file of files) {
    if (!fs.existsSync(file)) continue;
    const text = fs.readFileSync(file, 'utf8');
    // A main archive (a suite without a -security/-updates suffix) serving binary packages.
    if (file.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (name: string): string[] => new RegExp(`^${name}:\\s*(.*)$`, 'mi').exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
        if (!field('Types').includes('deb') || !field('Suites').some((suite) => /^[a-z]+$/.test(suite))) continue;
        const uri = field('URIs')[0];
        if (uri !== undefined) return uri;
      }
    } else {
      for (const line of text.split('\n')) {
        const match = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+([a-z]+)\s/.exec(line.trim() + ' ');
        if (match?.[1] !== undefined) return match[1];
      }
    }
  }
  throw new Error(`no Debian archive found in ${files.join(', ')} (a "deb" entry for a release such as bookworm)`);
}

async function imageExists(tag: string): Promise<boolean> {
  return (await podman(['image', 'exists', tag], { allowFailure: true })).code === 0;
}

/**
 * Builds {@link NODE_BASE} unless it exists: the parts of `node:24-bookworm-slim`
 * the Dockerfile relies on (Node 24 and npm on the PATH, a `node` user with
 * uid 1000 and a home). About a minute; later runs reuse it.
 */
export async function ensureNodeBase(): Promise<string> {
  if (await imageExists(NODE_BASE)) return NODE_BASE;
  const nodeBinary = fs.realpathSync(process.execPath);
  if (!process.versions.node.startsWith('24.')) throw new Error(`the stand-in base needs Node 24 to copy, the tests run on ${process.versions.node}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kit-node-base-'));
  try {
    const rootfs = path.join(work, 'rootfs');
    await run('debootstrap', ['--variant=minbase', 'bookworm', rootfs, debianMirror()], { timeoutMs: 600_000 });
    // The package cache and lists are not part of a slim image.
    for (const dir of ['var/cache/apt/archives', 'var/lib/apt/lists']) {
      for (const entry of fs.readdirSync(path.join(rootfs, dir))) {
        if (entry !== 'partial' && entry !== 'lock') fs.rmSync(path.join(rootfs, dir, entry), { recursive: true, force: true });
      }
    }
    fs.copyFileSync(nodeBinary, path.join(rootfs, 'usr/local/bin/node'));
    fs.chmodSync(path.join(rootfs, 'usr/local/bin/node'), 0o755);

    const npmVersion = (await run('npm', ['--version'])).trim();
    const tarball = (await run('npm', ['pack', `npm@${npmVersion}`, '--silent', '--pack-destination', work], { cwd: work })).trim().split('\n').pop() ?? '';
    const npmDir = path.join(rootfs, 'usr/local/lib/node_modules/npm');
    fs.mkdirSync(npmDir, { recursive: true });
    await run('tar', ['-xzf', path.join(work, tarball), '-C', npmDir, '--strip-components=1']);
    fs.symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(rootfs, 'usr/local/bin/npm'));
    fs.symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', path.join(rootfs, 'usr/local/bin/npx'));

    fs.appendFileSync(path.join(rootfs, 'etc/passwd'), 'node:x:1000:1000::/home/node:/bin/sh\n');
    fs.appendFileSync(path.join(rootfs, 'etc/group'), 'node:x:1000:\n');
    fs.appendFileSync(path.join(rootfs, 'etc/shadow'), 'node:*:20000:0:99999:7:::\n');
    fs.mkdirSync(path.join(rootfs, 'home/node'));
    fs.chownSync(path.join(rootfs, 'home/node'), 1000, 1000);

    const archive = path.join(work, 'rootfs.tar');
    await run('tar', ['--numeric-owner', '-C', rootfs, '-cf', archive, '.']);
    fs.rmSync(rootfs, { recursive: true, force: true });
    await podman(['import', '--change', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', '--change', 'CMD ["node"]', archive, NODE_BASE], { timeoutMs: 300_000 });
    return NODE_BASE;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export interface BuildSecrets {
  /** `--secret` flags for `podman build`. */
  readonly flags: string[];
  /** A line written only into the npmrc secret: finding it in the image means the secret leaked. */
  readonly marker: string;
  /** The CA file passed as a secret, if npm trusts one of its own. */
  readonly caFile: string | undefined;
}

/**
 * npm's configuration as build secrets, the way a private registry or a
 * TLS-intercepting proxy needs it: the user npmrc (its `cafile` pointed at the
 * second secret), the registry in use, and the CA file npm trusts
 * (`npm config get cafile`, else Node's NODE_EXTRA_CA_CERTS).
 */
export async function npmBuildSecrets(dir: string): Promise<BuildSecrets> {
  const marker = `kit-build-secret-${process.pid}-${Date.now()}`;
  const registry = (await run('npm', ['config', 'get', 'registry'])).trim();
  const userconfig = (await run('npm', ['config', 'get', 'userconfig'])).trim();
  const globalconfig = (await run('npm', ['config', 'get', 'globalconfig'])).trim();
  const configured = (await run('npm', ['config', 'get', 'cafile'])).trim();
  let caFile = configured !== '' && configured !== 'null' && configured !== 'undefined' ? configured : process.env.NODE_EXTRA_CA_CERTS;
  if (caFile !== undefined && !fs.existsSync(caFile)) caFile = undefined;

  const lines = [`# ${marker}`, `registry=${registry}`];
  // Settings from the global and user npmrc (auth tokens included), except
  // paths of this machine: the CA file gets its own secret.
  for (const file of [globalconfig, userconfig]) {
    if (!fs.existsSync(file)) continue;
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) if (/^\s*[^#;\s]/.test(line) && !/^\s*(cafile|nodedir|prefix|cache)\s*=/.test(line)) lines.push(line.trim());
  }
  const flags = [];
  if (caFile !== undefined) {
    lines.push('cafile=/run/secrets/npm_ca');
    flags.push('--secret', `id=npm_ca,src=${caFile}`);
  }
  const npmrc = path.join(dir, 'npmrc');
  fs.writeFileSync(npmrc, `${lines.join('\n')}\n`, { mode: 0o600 });
  flags.push('--secret', `id=npmrc,src=${npmrc}`);
  return { flags, marker, caFile };
}

/** Builds the repository's Dockerfile as `tag` (Docker format: OCI images carry no HEALTHCHECK). */
export async function buildImage(context: string, tag: string, buildArgs: Record<string, string>, secrets: BuildSecrets): Promise<void> {
  const args = ['build', '--isolation=chroot', '--network=host', '--format', 'docker', '--pull=never', ...secrets.flags];
  for (const [name, value] of Object.entries(buildArgs)) args.push('--build-arg', `${name}=${value}`);
  await podman([...args, '-t', tag, context], { timeoutMs: 900_000 });
}

/** Every regular file of a directory tree, relative paths (symlinks are not followed). */
export function* walk(root: string, dir = ''): Generator<string> {
  for (const entry of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const relative = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(root, relative);
    else if (entry.isFile()) yield relative;
  }
}

/** Spawns `podman <args>` without waiting; for `podman stop` running while the test probes. */
export function podmanAsync(args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn('podman', [...GLOBAL_FLAGS, ...args], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code) => resolve({ code, output }));
  });
}
