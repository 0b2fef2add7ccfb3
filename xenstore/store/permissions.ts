import { XsError } from '../../shared/errors.js';
import { DOMID_ANY } from '../../shared/domid.js';

/** Access bits of a permission entry (xenstore_lib.h XS_PERM_*). */
export const Access = {
  NONE: 0,
  READ: 1,
  WRITE: 2,
  BOTH: 3,
  /** Not a stored bit: what the owner of a node (and a privileged caller) also holds. */
  OWNER: 8,
} as const;

/**
 * One permission entry. `ignored` marks an entry for a domain that did not
 * exist when the entry was set, or that has died since (XSA-322): the entry is
 * still reported by GET_PERMS but grants nothing.
 */
export interface Perm {
  readonly domid: number;
  readonly access: number;
  readonly ignored: boolean;
}

/** A node's permissions: the first entry names the owner and what everyone else gets. */
export type PermList = readonly Perm[];

const LETTER_ACCESS: Record<string, number> = { n: Access.NONE, r: Access.READ, w: Access.WRITE, b: Access.BOTH };
const ACCESS_LETTER = ['n', 'r', 'w', 'b'] as const;

/**
 * Parses the `<perm-as-string>` entries of SET_PERMS: a letter (n, r, w, b)
 * followed by a domain id. The id is read like libxenstore's
 * xenstore_strings_to_perms() reads it (strtol with base 0, so `0x10` and `010`
 * are accepted) but must name a domid in 0..65535. Anything else is EINVAL.
 */
export function parsePermStrings(entries: readonly string[]): Perm[] {
  return entries.map((entry) => {
    const access = LETTER_ACCESS[entry[0] ?? ''];
    if (access === undefined) throw new XsError('EINVAL', `bad permission letter in '${entry}'`);
    const domid = parseCInteger(entry.slice(1));
    if (domid === undefined || domid < 0 || domid > 0xffff) {
      throw new XsError('EINVAL', `bad domain id in permission '${entry}'`);
    }
    return { domid, access, ignored: false };
  });
}

/** strtol(text, &end, 0) that must consume the whole, non-empty string. */
function parseCInteger(text: string): number | undefined {
  const match = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!match) return undefined;
  const digits = match[2]!;
  let value: number;
  if (/^0[xX]/.test(digits)) value = parseInt(digits.slice(2), 16);
  else if (digits.length > 1 && digits.startsWith('0')) value = parseInt(digits.slice(1), 8);
  else value = parseInt(digits, 10);
  return match[1] === '-' ? -value : value;
}

export function formatPerm(perm: Perm): string {
  return `${ACCESS_LETTER[perm.access & Access.BOTH]}${perm.domid}`;
}

/** Who is asking: the domain of a connection and what it is allowed to act as. */
export interface Principal {
  readonly domid: number;
  /** The domain this one was made the target of by SET_TARGET (a device model's guest). */
  readonly target?: number | undefined;
  /** dom0 (the toolstack domain): may do everything. */
  readonly privileged: boolean;
}

function entryMatches(principal: Principal, perm: Perm): boolean {
  return perm.domid === principal.domid || perm.domid === principal.target || perm.domid === DOMID_ANY;
}

/**
 * The access a principal has to a node, as xenstored's perm_for_conn() computes
 * it: everything for the privileged and the owner (or the owner's controller
 * after SET_TARGET); otherwise the first entry naming the domain; otherwise
 * the owner entry's bits, which are what everyone else gets.
 */
export function accessFor(principal: Principal, perms: PermList): number {
  const owner = perms[0]!;
  if (principal.privileged || entryMatches(principal, owner)) return Access.BOTH | Access.OWNER;
  for (let i = 1; i < perms.length; i++) {
    const perm = perms[i]!;
    if (!perm.ignored && entryMatches(principal, perm)) return perm.access;
  }
  return owner.access;
}

export function permListsEqual(a: PermList, b: PermList): boolean {
  return a.length === b.length && a.every((p, i) => p.domid === b[i]!.domid && p.access === b[i]!.access && p.ignored === b[i]!.ignored);
}
