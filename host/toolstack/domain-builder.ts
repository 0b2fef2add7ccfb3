import { GNTTAB_RESERVED_XENSTORE, type DomainSpec, type Platform } from '../../shared/platform.js';

/**
 * What a domain's kernel is told at boot about its xenstore connection (the
 * store fields of Xen's start_info): the page of its own memory holding the
 * ring, and its end of the event channel to xenstored.
 */
export interface StartInfo {
  readonly domid: number;
  readonly name: string;
  readonly storePfn: number;
  readonly storePort: number;
  /** The domain xenstored runs in. */
  readonly storeDomid: number;
}

/**
 * Builds a domain the way a toolstack's domain builder does before
 * INTRODUCE: creates it (paused), takes a page of its memory for the
 * xenstore ring and grants it to xenstored's domain through the reserved
 * grant entry, and allocates the xenstore event channel on its behalf.
 */
export function buildDomain(platform: Platform, spec: DomainSpec, storeDomid = 0): StartInfo {
  const info = spec.domid !== undefined && platform.domainInfo(spec.domid) ? platform.domainInfo(spec.domid)! : platform.createDomain(spec);
  const domain = platform.domain(info.domid);
  const [storePfn] = domain.memory.allocPages(1) as [number];
  if (info.domid !== storeDomid) domain.grants.grantReserved(GNTTAB_RESERVED_XENSTORE, storeDomid, storePfn, false);
  const storePort = platform.allocateUnboundPort(info.domid, storeDomid);
  return { domid: info.domid, name: info.name, storePfn, storePort, storeDomid };
}
