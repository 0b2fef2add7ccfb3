/**
 * The platform interface: what a domain's kernel gets from Xen (its memory,
 * its grant table, event channels) and what the toolstack in dom0 gets
 * (creating and destroying domains). One interface, two implementations:
 * the embedded hypervisor (shared/embedded/) that the tests and `npm start`
 * run on, and Xen itself through its userspace libraries (shared/xen/).
 *
 * Handles travel between workers (domids, grant references, ports), never
 * views of memory: each worker maps and binds what it uses itself, as a
 * process on Xen does through /dev/xen/gntdev and /dev/xen/evtchn.
 */

/** Bytes in a page (XEN_PAGE_SIZE). */
export const PAGE_SIZE = 4096;

/** Grant references reserved for the toolstack (xen/include/public/grant_table.h). */
export const GNTTAB_RESERVED_CONSOLE = 0;
export const GNTTAB_RESERVED_XENSTORE = 1;
/** Linux keeps the first 8 references for the toolstack (GNTTAB_NR_RESERVED_ENTRIES). */
export const GNTTAB_NR_RESERVED_ENTRIES = 8;

/** Grant operation status codes (grant_table.h GNTST_*). */
export const GrantStatus = {
  okay: 0,
  general_error: -1,
  bad_domain: -2,
  bad_gntref: -3,
  bad_handle: -4,
  permission_denied: -8,
  bad_page: -9,
  bad_copy_arg: -10,
  eagain: -12,
  no_space: -13,
} as const;

/** Virtual interrupts a domain can bind (xen.h VIRQ_*). */
export const VIRQ_DOM_EXC = 3;

/** Why a domain shut down (sched.h SHUTDOWN_*). */
export const ShutdownReason = {
  poweroff: 0,
  reboot: 1,
  suspend: 2,
  crash: 3,
  watchdog: 4,
  soft_reset: 5,
} as const;
export type ShutdownReasonName = keyof typeof ShutdownReason;

const SHUTDOWN_REASON_NAMES = new Map<number, ShutdownReasonName>(Object.entries(ShutdownReason).map(([name, code]) => [code, name as ShutdownReasonName]));

/** The name of a sched.h SHUTDOWN_* code; undefined for a code Xen does not define. */
export function shutdownReasonName(code: number): ShutdownReasonName | undefined {
  return SHUTDOWN_REASON_NAMES.get(code);
}

export type DomainState = 'running' | 'paused' | 'shutdown' | 'dying' | 'dead';

export interface DomainInfo {
  readonly domid: number;
  /** Never the same for two domains, even when a domid is reused (xenstored tells them apart by it). */
  readonly uniqueId: number;
  readonly name: string;
  /** Memory size in pages. */
  readonly pages: number;
  readonly state: DomainState;
  /** Set once the domain has shut down. */
  readonly shutdownReason: ShutdownReasonName | undefined;
}

export interface DomainSpec {
  /** The domid to use; the next free one if absent. */
  domid?: number;
  name: string;
  /** Memory size in 4 KiB pages. */
  pages: number;
  /**
   * The most grant mappings of other domains' pages it may hold, in
   * maptrack frames of 256 (xl.cfg max_maptrack_frames); the platform's
   * default if absent.
   */
  maxMaptrackFrames?: number;
}

/**
 * A refusal from the platform, with the errno Xen's hypercall would return
 * and, for grant operations, the GNTST status.
 */
export type PlatformErrno =
  | 'EINVAL'
  | 'EPERM'
  | 'EACCES'
  | 'ENOENT'
  | 'EBUSY'
  | 'ENOSPC'
  | 'ENOMEM'
  | 'ESRCH'
  | 'EEXIST'
  | 'EFAULT'
  | 'EAGAIN'
  | 'EIO'
  /** What this platform does not do (a toolstack operation where xl is the toolstack). */
  | 'ENOSYS';

export class PlatformError extends Error {
  constructor(
    readonly errno: PlatformErrno,
    message: string,
    readonly grantStatus?: number,
  ) {
    super(`${errno}: ${message}`);
    this.name = 'PlatformError';
  }
}

/** A domain's own memory, by pseudo-physical page number. */
export interface GuestMemory {
  readonly pages: number;
  /** Takes `count` free pages of the domain's memory; throws ENOSPC when there are not enough. */
  allocPages(count: number): number[];
  freePages(pfns: readonly number[]): void;
  /** A view of one of the domain's own pages. */
  page(pfn: number): Uint8Array;
  /**
   * Takes `count` free pages in a row (a kernel's higher-order allocation),
   * for a buffer that spans them; returns the first. Throws ENOSPC when no
   * such run is free.
   */
  allocContiguousPages(count: number): number;
  /** A view of `count` of the domain's pages in a row, from `pfn`. */
  range(pfn: number, count: number): Uint8Array;
  /**
   * Where a view lies in the domain's memory: its byte offset from the start
   * of page 0 (its guest-physical address), or -1 when it is not wholly in
   * this domain's memory. What lets a driver grant a caller's buffer by its
   * pages instead of copying it.
   */
  addressOf(bytes: Uint8Array): number;
}

/** Pages of another domain mapped through its grants; unmap when done. */
export interface GrantMapping {
  readonly pages: readonly Uint8Array[];
  readonly writable: boolean;
  unmap(): void;
}

/**
 * One side of a grant copy: a granted page of another domain, a page of
 * one's own memory (a kernel's), or bytes of one's own buffer (a process's).
 */
export type GrantCopyEnd =
  | { domid: number; gref: number; offset: number }
  | { pfn: number; offset: number }
  | { bytes: Uint8Array; offset: number };

export interface GrantCopy {
  source: GrantCopyEnd;
  dest: GrantCopyEnd;
  length: number;
}

/**
 * Pages of ours granted to another domain, one reference each, shared
 * together and ended together: a ring, or the data pages of a request.
 */
export interface SharedPages {
  readonly grefs: readonly number[];
  readonly pages: readonly Uint8Array[];
}

/**
 * A domain's grant table (grant_table.h, v1), both as granter (what Linux's
 * gnttab_grant_foreign_access does, and /dev/xen/gntalloc for a process) and
 * as grantee (what /dev/xen/gntdev does).
 */
export interface GrantTable {
  /**
   * New pages of ours, zeroed, granted to `remoteDomid` (xenbus_grant_ring,
   * xengntshr_share_pages): what a frontend shares its rings and data in.
   */
  share(remoteDomid: number, count: number, readonly: boolean): SharedPages;
  /**
   * Ends the grants of shared pages and frees them. Pages the other domain
   * still has mapped cannot be taken back yet: what remains granted is
   * returned, to be released again later (Linux defers the same way);
   * undefined when everything was released.
   */
  unshare(shared: SharedPages): SharedPages | undefined;
  /** Grants `remoteDomid` access to one of our pages; returns the grant reference. */
  grantAccess(remoteDomid: number, pfn: number, readonly: boolean): number;
  /** Grants a specific reserved reference (the toolstack seeds GNTTAB_RESERVED_*). */
  grantReserved(gref: number, remoteDomid: number, pfn: number, readonly: boolean): void;
  /** Ends access; refused (false) while the grantee still has the page mapped. */
  endAccess(gref: number): boolean;
  /** Maps pages another domain granted us, all or none; throws PlatformError with a GNTST status. */
  map(granterDomid: number, grefs: readonly number[], writable: boolean): GrantMapping;
  /** Copies bytes through grants (GNTTABOP_copy), each operation checked like a mapping. */
  copy(ops: readonly GrantCopy[]): void;
}

/** An open event channel device (what xenevtchn_open gives a process). */
export interface EventChannels {
  readonly domid: number;
  /** A new port that `remoteDomid` may bind to. */
  allocUnbound(remoteDomid: number): number;
  /** Binds to another domain's unbound port; returns the local end. */
  bindInterdomain(remoteDomid: number, remotePort: number): number;
  bindVirq(virq: number): number;
  /**
   * Starts receiving events for a port the toolstack allocated for this
   * domain (the xenstore and console channels of start_info), as a guest
   * kernel binds them to an interrupt handler.
   */
  listen(port: number): void;
  notify(port: number): void;
  mask(port: number): void;
  /** Unmasks; an event that arrived while masked is delivered now. */
  unmask(port: number): void;
  /** Closes a port; the other end of an interdomain channel becomes unbound. */
  unbind(port: number): void;
  /**
   * Called for each port with a pending event. Several notifies may arrive
   * as one call, as on Xen.
   */
  onEvent(listener: (port: number) => void): void;
  /** Closes every port of this handle and stops listening. */
  close(): void;
}

/** Everything a domain's kernel (or a process in it) uses from the hypervisor. */
export interface DomainInterface {
  readonly domid: number;
  readonly memory: GuestMemory;
  readonly grants: GrantTable;
  openEventChannels(): EventChannels;
}

/**
 * What a worker needs to reach the platform by itself. It is
 * structured-clonable, so it travels in a worker's start data: each worker
 * maps and binds what it uses itself. It names the module that implements
 * the platform (which exports `attach(link)`), so that a worker loads the
 * implementation its link names and no other. On the embedded platform it
 * carries the machine's shared buffers; on Xen, which domain we are.
 */
export interface PlatformLink {
  readonly kind: 'embedded' | 'xen';
  /** URL of the implementing module. */
  readonly module: string;
  readonly descriptor: unknown;
  /**
   * The thread whose death releases what the attaching worker maps and
   * binds (default: the worker itself). A worker that serves its parent,
   * and dies with it, names the parent, so that whoever cleans up after the
   * parent cleans up after it too.
   */
  readonly holder?: number;
}

/** The toolstack's view of the platform, and the way into each domain. */
export interface Platform {
  readonly kind: 'embedded' | 'xen';
  /** How another worker attaches to this same platform (see attachPlatform). */
  readonly link: PlatformLink;
  createDomain(spec: DomainSpec): DomainInfo;
  pauseDomain(domid: number): void;
  unpauseDomain(domid: number): void;
  /** What SCHEDOP_shutdown does: the domain stops, the toolstack is told (VIRQ_DOM_EXC). */
  shutdownDomain(domid: number, reason: ShutdownReasonName): void;
  /** Lets a domain that shut down (to suspend) run again, as xc_domain_resume does. */
  resumeDomain(domid: number): void;
  /**
   * Allocates an unbound port in `domid`'s table for `remoteDomid`, on the
   * domain's behalf (xc_evtchn_alloc_unbound), as a toolstack does for the
   * xenstore channel before the domain runs.
   */
  allocateUnboundPort(domid: number, remoteDomid: number): number;
  /** Destroys a domain: its event channels close, its grants are revoked, dom0 is told. */
  destroyDomain(domid: number): void;
  domainInfo(domid: number): DomainInfo | undefined;
  listDomains(): DomainInfo[];
  /** The interface a domain's kernel has, as seen from this worker. */
  domain(domid: number): DomainInterface;
  /** Waits (without blocking the event loop) until a paused domain runs again. */
  whenRunning(domid: number): Promise<void>;
  /**
   * What a domain that shut down to suspend waits in (SCHEDOP_shutdown
   * returning): true once the toolstack resumes it, false if it is
   * destroyed instead.
   */
  whenResumed(domid: number): Promise<boolean>;
}
