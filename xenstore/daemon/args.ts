import { XsError } from '../../shared/errors.js';
import { splitNulStrings } from '../../shared/xs-wire.js';
import { parseDomid } from '../../shared/domid.js';

/**
 * Reading request payloads the way xenstored does. Most payloads are
 * NUL-terminated strings; a payload that does not have the shape a request
 * needs is EINVAL.
 */

/** xenstored's onearg(): the payload's one string, ending in its only NUL; undefined for any other shape. */
function singleString(payload: Buffer): string | undefined {
  const nul = payload.indexOf(0);
  if (payload.length === 0 || nul !== payload.length - 1) return undefined;
  return payload.toString('latin1', 0, nul);
}

/** The single argument of a request: the payload must be one string ending in its only NUL. */
export function oneArg(payload: Buffer): string {
  const arg = singleString(payload);
  if (arg === undefined) throw new XsError('EINVAL', 'expected exactly one argument');
  return arg;
}

/**
 * The one path of a request that only looks a node up (READ, DIRECTORY,
 * GET_PERMS). Xen 4.17's xenstored passes onearg()'s answer straight to its
 * node lookup, which finds nothing for a malformed payload: the client gets
 * ENOENT, and the tools of 4.17 are written against that, so we answer it too.
 */
export function lookupArg(payload: Buffer): string {
  const arg = singleString(payload);
  if (arg === undefined) throw new XsError('ENOENT', 'expected exactly one path');
  return arg;
}

/** All NUL-terminated strings of a payload (bytes after the last NUL are ignored). */
export function strings(payload: Buffer): string[] {
  return splitNulStrings(payload).strings;
}

/** Exactly `count` strings, or EINVAL. */
export function exactStrings(payload: Buffer, count: number): string[] {
  const all = strings(payload);
  if (all.length !== count) throw new XsError('EINVAL', `expected ${count} arguments, got ${all.length}`);
  return all;
}

/** At least `count` strings, or EINVAL. */
export function atLeastStrings(payload: Buffer, count: number): string[] {
  const all = strings(payload);
  if (all.length < count) throw new XsError('EINVAL', `expected at least ${count} arguments, got ${all.length}`);
  return all;
}

/** A `<domid>` argument: decimal, 0..65535, or EINVAL. */
export function domidArg(text: string): number {
  const domid = parseDomid(text);
  if (domid === undefined) throw new XsError('EINVAL', `bad domain id '${text}'`);
  return domid;
}

/**
 * C's atoi(): optional blanks and sign, then the leading digits; 0 when there
 * are none. Several xenstored arguments (offsets, ports, quota values) are read
 * this way.
 */
export function cAtoi(text: string): number {
  const match = /^[ \t\n\v\f\r]*([+-]?)([0-9]*)/.exec(text)!;
  const digits = match[2]!;
  if (digits === '') return 0;
  const value = Number(digits);
  return match[1] === '-' ? -value : value;
}

/** A `<gfn>` argument: signed decimal, read like strtoll() (leading digits, else 0). */
export function gfnArg(text: string): bigint {
  const match = /^[ \t\n\v\f\r]*([+-]?[0-9]+)/.exec(text);
  return match ? BigInt(match[1]!) : 0n;
}
