import { DOMID_FIRST_RESERVED } from '../../shared/domid.js';
import { XsError } from '../../shared/errors.js';
import { XENSTORE_ABS_PATH_MAX } from '../../shared/xs-wire.js';

/** The special watch paths xenstored invents events for (docs/misc/xenstore.txt). */
export const INTRODUCE_DOMAIN = '@introduceDomain';
export const RELEASE_DOMAIN = '@releaseDomain';
export const SPECIAL_ROOTS = [INTRODUCE_DOMAIN, RELEASE_DOMAIN] as const;

/** A validated, absolute path split into the root it hangs off and its components. */
export interface StorePath {
  /** The canonical absolute path, e.g. `/local/domain/3/name` or `@releaseDomain`. */
  readonly full: string;
  /** `/` for ordinary paths, the special name for `@` paths. */
  readonly root: string;
  /** Components below the root; empty for the root itself. */
  readonly parts: readonly string[];
}

/** "ASCII alphanumerics plus the four punctuation characters -/_@" (docs/misc/xenstore.txt). */
const VALID_PATH = /^[A-Za-z0-9\-/_@]*$/;

/** Where xenstored's path-length quota starts counting: after `/local/domain/<domid>/`. */
const DOMAIN_HOME_PREFIX = /^\/local\/domain\/[0-9]{1,5}\//;

export function domainHome(domid: number): string {
  return `/local/domain/${domid}`;
}

/**
 * The longest path xenstore itself gives every domain to use: its home
 * `/local/domain/<domid>` (GET_DOMAIN_PATH) for the largest domid, counted
 * whole by path-max since nothing follows the home prefix, or a special watch
 * path. A path-max below this leaves a domain unable to name its own home.
 */
export const SHORTEST_USABLE_PATH_MAX = Math.max(domainHome(DOMID_FIRST_RESERVED - 1).length, ...SPECIAL_ROOTS.map((root) => root.length));

export interface CanonicalizeOptions {
  /** The base of relative paths: the connection's `/local/domain/<domid>`. */
  home: string;
  /** Whether `@...` paths are acceptable (watches and permissions only). */
  allowSpecial: boolean;
  /** The path-length limit (quota `path-max`), counted after the domain home prefix; 0 for none, as with every quota. */
  pathMax: number;
}

/**
 * Validates a path from a client and makes it absolute, with the rules of
 * docs/misc/xenstore.txt and xenstored's canonicalize(): allowed characters,
 * no trailing or doubled slash, `@` only where special paths are allowed, and
 * the length limits. Anything else is EINVAL.
 */
export function canonicalize(input: string, options: CanonicalizeOptions): StorePath {
  if (!VALID_PATH.test(input)) throw new XsError('EINVAL', `invalid character in path`);
  const special = input.startsWith('@');
  if (special && !options.allowSpecial) throw new XsError('EINVAL', `special path not allowed here`);
  const full = input.startsWith('/') || special ? input : `${options.home}/${input}`;
  if (full.length > 1 && full.endsWith('/')) throw new XsError('EINVAL', `path ends in '/'`);
  if (full.includes('//')) throw new XsError('EINVAL', `path contains '//'`);
  if (full.length > XENSTORE_ABS_PATH_MAX) throw new XsError('EINVAL', `path longer than ${XENSTORE_ABS_PATH_MAX}`);
  const homePrefix = DOMAIN_HOME_PREFIX.exec(full);
  const counted = full.length - (homePrefix ? homePrefix[0].length : 0);
  if (options.pathMax > 0 && counted > options.pathMax) throw new XsError('EINVAL', `path longer than path-max ${options.pathMax}`);
  return parseAbsolute(full);
}

/** Whether a path names one of the special nodes, the only `@` paths that hold permissions. */
export function isSpecialNode(path: StorePath): boolean {
  return path.parts.length === 0 && (SPECIAL_ROOTS as readonly string[]).includes(path.root);
}

/** Splits an already validated absolute path. */
export function parseAbsolute(full: string): StorePath {
  if (full.startsWith('@')) {
    const slash = full.indexOf('/');
    if (slash < 0) return { full, root: full, parts: [] };
    return { full, root: full.slice(0, slash), parts: full.slice(slash + 1).split('/') };
  }
  if (full === '/') return { full, root: '/', parts: [] };
  return { full, root: '/', parts: full.slice(1).split('/') };
}

/** The parent as xenstored's get_parent() gives it: `/` for top-level and special paths. */
export function parentOf(path: StorePath): StorePath | undefined {
  if (path.parts.length === 0) return path.root === '/' ? undefined : ROOT_PATH;
  const parts = path.parts.slice(0, -1);
  if (path.root !== '/') {
    return { full: parts.length ? `${path.root}/${parts.join('/')}` : path.root, root: path.root, parts };
  }
  return { full: parts.length ? `/${parts.join('/')}` : '/', root: '/', parts };
}

export function childOf(path: StorePath, name: string): StorePath {
  const full = path.full === '/' ? `/${name}` : `${path.full}/${name}`;
  return { full, root: path.root, parts: [...path.parts, name] };
}

export const ROOT_PATH: StorePath = { full: '/', root: '/', parts: [] };

/**
 * Whether `child` is `parent` or below it, no deeper than `depth` levels when
 * a depth is given (the WATCH depth parameter: 0 matches only the path itself).
 */
export function isPathWithin(child: string, parent: string, depth?: number): boolean {
  if (!child.startsWith(parent)) return false;
  const rest = child.slice(parent.length);
  if (parent !== '/' && rest !== '' && !rest.startsWith('/')) return false;
  if (depth === undefined || rest === '') return true;
  const levels = parent === '/' ? rest.split('/').length : rest.split('/').length - 1;
  return levels <= depth;
}
