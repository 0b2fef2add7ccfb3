import { quoteText } from '../shared/quote.js';

/**
 * The control nodes of a domain's home, as Xen's tools and Linux's
 * drivers/xen/manage.c use them (docs/misc/xenstore-paths): the toolstack
 * writes a request into `control/shutdown` or a key into `control/sysrq`;
 * the domain clears the node to acknowledge it and acts.
 */
export const SHUTDOWN_NODE = 'control/shutdown';
export const SYSRQ_NODE = 'control/sysrq';

/** What `control/shutdown` can ask for, and the SCHEDOP_shutdown reason each ends in. */
export const SHUTDOWN_REQUESTS = {
  poweroff: 'poweroff',
  halt: 'poweroff',
  reboot: 'reboot',
  suspend: 'suspend',
  crash: 'crash',
} as const;
export type ShutdownRequest = keyof typeof SHUTDOWN_REQUESTS;

export function isShutdownRequest(value: string): value is ShutdownRequest {
  return Object.hasOwn(SHUTDOWN_REQUESTS, value);
}

/**
 * The features a domain publishes under `control/` (Linux writes one for
 * each request it advertises; halt and crash go unadvertised). A toolstack
 * that finds none knows the domain has no PV control.
 */
export const CONTROL_FEATURES = ['feature-poweroff', 'feature-reboot', 'feature-suspend'] as const;

/** The feature a toolstack checks before it writes a request. */
export function featureFor(request: ShutdownRequest): (typeof CONTROL_FEATURES)[number] {
  switch (request) {
    case 'reboot':
      return 'feature-reboot';
    case 'suspend':
      return 'feature-suspend';
    default:
      return 'feature-poweroff';
  }
}

/**
 * The magic SysRq keys (Documentation/admin-guide/sysrq.rst) that mean
 * something to a domain here; any other key is logged and left alone.
 */
export const SYSRQ_KEYS = {
  b: 'reboot at once, without syncing or closing devices',
  c: 'crash the domain',
  o: 'power off at once, without syncing or closing devices',
  s: 'sync: make what every disk was written durable',
  t: "show each device's state",
  h: 'show this help',
} as const;
export type SysrqKey = keyof typeof SYSRQ_KEYS;

export function isSysrqKey(key: string): key is SysrqKey {
  return Object.hasOwn(SYSRQ_KEYS, key);
}

/**
 * The keys a toolstack sends: printable ASCII other than space, '!'
 * (0x21) to '~' (0x7e). xl sends exactly one character ("Invalid sysrq"
 * otherwise, tools/xl/xl_misc.c); Linux's manage.c acts on the first byte
 * it reads and takes NUL for no key at all; the keys of sysrq.rst are
 * letters, digits and punctuation. A control character, a blank or a
 * character outside ASCII is no key, whatever the domain would make of it.
 */
export const SYSRQ_KEY_FIRST = 0x21;
export const SYSRQ_KEY_LAST = 0x7e;

/** What a SysRq key is, as a message tells the user. */
export const SYSRQ_KEY_RULE = 'one printable character, such as s or b';

/** Why `key` cannot be sent as a SysRq key, or undefined if it can; the key is shown with anything unprintable escaped. */
export function sysrqKeyError(key: string): string | undefined {
  const code = key.length === 1 ? key.charCodeAt(0) : -1;
  if (code >= SYSRQ_KEY_FIRST && code <= SYSRQ_KEY_LAST) return undefined;
  return `a SysRq key is ${SYSRQ_KEY_RULE}; ${quoteText(key)} is not`;
}
