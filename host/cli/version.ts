/**
 * The version of xenmesh that runs, from its package.json, for
 * `xenmesh --version` and for the toolstack socket, where a host and a
 * client of different versions do not act on each other's words.
 */
import { readFileSync } from 'node:fs';

/** The package.json of this checkout or installed package: up from this module, in source (host/cli) and built (dist/host/cli) trees alike. */
function findPackageVersion(): string {
  for (let dir = new URL('.', import.meta.url); ; dir = new URL('..', dir)) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'xenmesh' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // Not here (or not readable): look further up.
    }
    if (dir.pathname === '/') return 'unknown';
  }
}

export const XENMESH_VERSION = findPackageVersion();
