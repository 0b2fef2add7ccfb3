import { DEFAULT_HARD_QUOTAS, DEFAULT_SOFT_QUOTAS, SOFT_PREFIX, resolveQuotaName } from '../../xenstore/store/quota.js';
import type { XenStoreClient } from '../../xenstore/client/client.js';

/**
 * Quotas the toolstack sets for one domain, as `xenstore-control quota-set`
 * would, by the names SET_QUOTA takes (`nodes`, `soft-memory`).
 */
export type XenstoreQuotas = Readonly<Record<string, number>>;

/**
 * What one vbd costs a domain at either end of it in xenstore, measured
 * with `xenstore-control quota <domid>` on a driver domain and a guest as
 * disks were plugged and connected: the backend owns 30 nodes of 3.0 KB
 * per vbd, the frontend 36 of 3.5 KB, and each end watches 2 paths. The
 * figures below round those up, so that a device with a few more keys
 * (a cdrom, discard settings, several queues) still fits. Each device also
 * switches state in a transaction of its own, so a domain can have one
 * open per device at once.
 */
export const XENSTORE_COST_PER_VBD: Readonly<Record<'nodes' | 'watches' | 'memory' | 'transactions', number>> = {
  nodes: 40,
  watches: 4,
  memory: 4096,
  transactions: 1,
};

/**
 * The vbds a driver domain is given room for when nothing says otherwise:
 * C xenstored's default of 1000 nodes stops one after about 30, a fraction
 * of what one driver domain serves on a host of hundreds of guests.
 */
export const DEFAULT_DRIVER_DOMAIN_VBDS = 256;

/**
 * The quotas a domain at one end of `vbds` vbds needs: C xenstored's
 * defaults, which its own home and drivers fit in, plus what each vbd costs.
 */
export function quotasForVbds(vbds: number): XenstoreQuotas {
  if (!Number.isInteger(vbds) || vbds < 0) throw new Error(`bad number of vbds ${vbds}`);
  const quotas: Record<string, number> = {};
  for (const [item, perVbd] of Object.entries(XENSTORE_COST_PER_VBD) as [keyof typeof XENSTORE_COST_PER_VBD, number][]) {
    quotas[item] = DEFAULT_HARD_QUOTAS[item] + perVbd * vbds;
  }
  // The warning level moves with the limit, or every such domain would be warned of.
  quotas[`${SOFT_PREFIX}memory`] = DEFAULT_SOFT_QUOTAS.memory + XENSTORE_COST_PER_VBD.memory * vbds;
  return quotas;
}

/** Why `quotas` cannot be set (an unknown name, a value that is no count), or undefined. */
export function quotasProblem(quotas: XenstoreQuotas): string | undefined {
  for (const [name, value] of Object.entries(quotas)) {
    if (!resolveQuotaName(name)) return `unknown xenstore quota '${name}'`;
    if (!Number.isInteger(value) || value < 0) return `bad value ${value} for xenstore quota '${name}'`;
  }
  return undefined;
}

/** Sets a domain's own quotas (SET_QUOTA with a domid), leaving the others at the global values. */
export async function setDomainQuotas(xs: XenStoreClient, domid: number, quotas: XenstoreQuotas): Promise<void> {
  for (const [name, value] of Object.entries(quotas)) await xs.setQuota(name, value, domid);
}
