/**
 * Domain ids as xen/include/public/xen.h defines them, and the decimal form
 * xenstored accepts on the wire.
 */

/** The first id reserved for special purposes; real domains are below it. */
export const DOMID_FIRST_RESERVED = 0x7ff0;
export const DOMID_SELF = 0x7ff0;
export const DOMID_IO = 0x7ff1;
export const DOMID_XEN = 0x7ff2;
export const DOMID_COW = 0x7ff3;
export const DOMID_INVALID = 0x7ff4;
/** Matches any domain in a node permission (needs XENSTORE_SERVER_FEATURE_DOMID_ANY). */
export const DOMID_ANY = 0x7ff5;
export const DOMID_IDLE = 0x7fff;

/** The largest value a `<domid>` argument may have (docs/misc/xenstore.txt: 0..65535). */
export const DOMID_WIRE_MAX = 65535;

/**
 * Parses a `<domid>` argument the way xenstored's parse_domid() does: decimal
 * digits only, at most 65535. Returns undefined for anything else.
 */
export function parseDomid(text: string): number | undefined {
  if (!/^[0-9]+$/.test(text)) return undefined;
  const value = Number(text);
  return value <= DOMID_WIRE_MAX ? value : undefined;
}

export function isRealDomid(domid: number): boolean {
  return Number.isInteger(domid) && domid >= 0 && domid < DOMID_FIRST_RESERVED;
}
