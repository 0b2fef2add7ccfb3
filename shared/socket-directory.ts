/**
 * Whether a directory is safe to hold a socket that acts for dom0.
 *
 * Whoever may write to the socket's directory, or to any directory above
 * it, can remove or rename the socket, or the directory itself, and put
 * their own in its place, so that clients then hand dom0's requests to
 * them. We hold every directory on the way to the rules of OpenSSH's
 * StrictModes and systemd's RuntimeDirectory (root- or service-owned, mode
 * 0755): owned by root or by us, and not writable by group or others,
 * except that a sticky directory owned by root or us (as /tmp is) is fine,
 * since there nobody may remove or rename entries that are not theirs.
 */
import { realpathSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** Group and other write permission. */
const GROUP_OTHER_WRITE = 0o022;
/** The sticky bit (S_ISVTX): only an entry's owner may remove or rename it. */
const STICKY = 0o1000;
const ROOT_UID = 0;

export class UnsafeSocketDirectoryError extends Error {}

/** The directory and each directory above it, up to the root. */
function withAncestors(dir: string): string[] {
  const chain = [dir];
  for (let d = dir; dirname(d) !== d; d = dirname(d)) chain.push(dirname(d));
  return chain;
}

/** Why `dir` may not hold the socket, or undefined if it may. */
function problemWith(dir: string, uid: number): string | undefined {
  const st = statSync(dir);
  if (!st.isDirectory()) return `${dir} is not a directory`;
  const trusted = st.uid === ROOT_UID || st.uid === uid;
  if (!trusted) return `${dir} belongs to uid ${st.uid}, who could replace the socket`;
  if ((st.mode & GROUP_OTHER_WRITE) !== 0 && (st.mode & STICKY) === 0) {
    return `${dir} is writable by group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}) and not sticky, so they could replace the socket`;
  }
  return undefined;
}

/**
 * Throws UnsafeSocketDirectoryError, with one line saying why, unless the
 * existing directory `dir` and every directory above it are safe for a
 * socket. Both the path as given and the one its symbolic links lead to are
 * checked, since either can be changed by whoever may write along it.
 */
export function checkSocketDirectory(dir: string): void {
  const uid = process.getuid?.() ?? ROOT_UID;
  const given = resolve(dir);
  const chains = new Set([...withAncestors(given), ...withAncestors(realpathSync(given))]);
  for (const d of chains) {
    const problem = problemWith(d, uid);
    if (problem) throw new UnsafeSocketDirectoryError(`refusing to serve a socket in ${given}: ${problem}`);
  }
}
