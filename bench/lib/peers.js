// @ts-check
'use strict';

/**
 * The peers' agents (dd-trace, elastic-apm-node) are not dependencies of the
 * kit: the bench installs the exact versions it measures into a scratch
 * folder of its own (bench/.peers/, git-ignored), only when a peer config is
 * selected, and preloads them from there.
 */
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const PEERS_DIR = path.join(__dirname, '..', '.peers');

/**
 * @typedef {object} Peer
 * @property {string} name     npm package
 * @property {string} version  exact
 * @property {string} preload  file inside the package, for `node -r`
 */

/** @param {Peer} peer */
function preloadPath(peer) {
  return path.join(PEERS_DIR, 'node_modules', peer.name, peer.preload);
}

/** @param {Peer} peer @returns {string | undefined} */
function installedVersion(peer) {
  try {
    return JSON.parse(fs.readFileSync(path.join(PEERS_DIR, 'node_modules', peer.name, 'package.json'), 'utf8')).version;
  } catch {
    return undefined;
  }
}

/**
 * Installs the peers, in one npm call, unless each is there at its exact
 * version already (all at once: npm prunes what an install does not name).
 * @param {Peer[]} peers
 * @param {(message: string) => void} progress
 */
function installPeers(peers, progress) {
  if (peers.every((p) => installedVersion(p) === p.version)) return;
  const specs = peers.map((p) => `${p.name}@${p.version}`);
  progress(`installing ${specs.join(', ')} into ${path.relative(process.cwd(), PEERS_DIR)}/`);
  fs.mkdirSync(PEERS_DIR, { recursive: true });
  execFileSync('npm', ['install', '--prefix', PEERS_DIR, '--no-save', '--no-package-lock', '--no-audit', '--no-fund', ...specs], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (const p of peers) if (installedVersion(p) !== p.version) throw new Error(`${p.name}@${p.version} did not install into ${PEERS_DIR}`);
}

module.exports = { installPeers, preloadPath };
