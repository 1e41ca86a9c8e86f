/**
 * `package.json` against the code: every package the app (`src/`) and the
 * preload (`otel/`) load is a production dependency of its own, pinned at the
 * version installed. A package that only arrives through another one's
 * dependencies can move or vanish with that package's next release.
 */
import fs from 'node:fs';
import path from 'node:path';
import { builtinModules } from 'node:module';
import { ROOT } from '../helpers/pm2';

const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };

/** Package names of the bare specifiers imported or required by the .ts files under `dir`. */
function importedPackages(dir: string): Set<string> {
  const names = new Set<string>();
  for (const file of fs.readdirSync(path.join(ROOT, dir), { recursive: true, encoding: 'utf8' })) {
    if (!file.endsWith('.ts')) continue;
    const source = fs.readFileSync(path.join(ROOT, dir, file), 'utf8');
    for (const match of source.matchAll(/(?:\bfrom|\brequire\(|\bimport\()\s*'([^'.][^']*)'/g)) {
      const specifier = match[1]!;
      if (specifier.startsWith('node:') || builtinModules.includes(specifier)) continue;
      const parts = specifier.split('/');
      names.add(specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!);
    }
  }
  return names;
}

const imported = [...new Set([...importedPackages('src'), ...importedPackages('otel')])].sort();

test('the scan finds the packages the code loads', () => {
  expect(imported).toEqual(expect.arrayContaining(['koa', '@opentelemetry/sdk-node', 'forwarded-parse']));
});

test.each(imported)('%s is a production dependency, pinned at the installed version', (name) => {
  const installed = (JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  expect(manifest.dependencies[name]).toBe(installed);
});
