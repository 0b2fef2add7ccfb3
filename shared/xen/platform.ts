import {
  PAGE_SIZE,
  PlatformError,
  type DomainInfo,
  type DomainInterface,
  type DomainSpec,
  type EventChannels,
  type GrantCopy,
  type GrantMapping,
  type GrantTable,
  type GuestMemory,
  type Platform,
  type PlatformErrno,
  type PlatformLink,
  type SharedPages,
  type ShutdownReasonName,
  shutdownReasonName,
} from '../platform.js';
import { xenctrlAddon, type NativeDomainControl, type NativeDomainInfo } from './xenctrl.js';
import { xenAddon, type NativeCopyEnd, type NativeError, type NativeEventChannels, type NativeGrantShare, type NativeGrantTable } from './addon.js';

/**
 * The most grant references one worker's handle may have mapped at once
 * (xengnttab_set_max_grants). A block backend's worker maps at most its
 * rings (4 queues of 16 pages), a request's indirect pages (8) and one
 * merged I/O of up to IOV_MAX (1024) segments, with room to spare.
 */
export const MAX_MAPPED_GRANTS = 4096;

/** What the link carries on Xen: which domain this process runs in. */
interface XenDescriptor {
  readonly domid: number;
}

const KNOWN_ERRNOS = new Set<PlatformErrno>(['EINVAL', 'EPERM', 'EACCES', 'ENOENT', 'EBUSY', 'ENOSPC', 'ENOMEM', 'ESRCH', 'EEXIST', 'EFAULT', 'EAGAIN', 'EIO']);

/** A PlatformError from the addon's error, keeping its message (the call, its arguments, errno). */
function platformError(err: unknown, grantStatus?: number): PlatformError {
  const code = (err as Partial<NativeError>).code as PlatformErrno | undefined;
  return new PlatformError(code && KNOWN_ERRNOS.has(code) ? code : 'EIO', (err as Error).message, grantStatus);
}

function notHere(what: string): PlatformError {
  return new PlatformError('ENOSYS', `${what}: on Xen that is the toolstack's (xl) or the kernel's, not this process's`);
}

/**
 * Xen itself, as a process in a real domain (dom0 or a driver domain) sees
 * it through Xen's userspace libraries: it maps and copies through other
 * domains' grants, shares pages of its own, and binds event channels. Each
 * worker opens its own handles (a mapping or a port belongs to the handle
 * that made it); what travels between workers is the domid in the link.
 * Creating and controlling domains is the toolstack's (xl): those calls are
 * refused with ENOSYS.
 */
export class XenPlatform implements Platform {
  readonly kind = 'xen';

  private constructor(private readonly domid: number) {
    // Loads the libraries now, so that a missing one is reported at start.
    xenAddon();
  }

  /** The platform of a process running in domain `domid`. */
  static open(domid: number): XenPlatform {
    if (!Number.isInteger(domid) || domid < 0 || domid >= 0x7ff0) throw new PlatformError('EINVAL', `bad domid ${domid}`);
    return new XenPlatform(domid);
  }

  static attach(descriptor: XenDescriptor): XenPlatform {
    return XenPlatform.open(descriptor.domid);
  }

  get link(): PlatformLink {
    return { kind: 'xen', module: new URL('./attach.js', import.meta.url).href, descriptor: { domid: this.domid } satisfies XenDescriptor };
  }

  domain(domid: number): DomainInterface {
    if (domid !== this.domid) throw new PlatformError('EINVAL', `this process runs in domain ${this.domid}, not ${domid}`);
    return {
      domid,
      memory: new ProcessMemory(domid),
      grants: new XenGrantTable(domid),
      openEventChannels: () => new XenEventChannels(domid),
    };
  }

  /** A process runs only while its domain does. */
  async whenRunning(): Promise<void> {}

  whenResumed(): Promise<boolean> {
    return Promise.reject(notHere('waiting for a resume'));
  }

  createDomain(spec: DomainSpec): DomainInfo {
    throw notHere(`creating domain ${spec.name}`);
  }

  pauseDomain(domid: number): void {
    throw notHere(`pausing domain ${domid}`);
  }

  unpauseDomain(domid: number): void {
    throw notHere(`unpausing domain ${domid}`);
  }

  shutdownDomain(domid: number, reason: ShutdownReasonName): void {
    throw notHere(`shutting down domain ${domid} (${reason})`);
  }

  resumeDomain(domid: number): void {
    throw notHere(`resuming domain ${domid}`);
  }

  allocateUnboundPort(domid: number): number {
    throw notHere(`allocating a port in domain ${domid}`);
  }

  destroyDomain(domid: number): void {
    throw notHere(`destroying domain ${domid}`);
  }

  /**
   * What the hypervisor says of a domain (xc_domain_getinfo): what
   * xenstored asks to learn which domains shut down or died. It needs
   * libxenctrl and /dev/xen/privcmd, which only a privileged domain has.
   */
  domainInfo(domid: number): DomainInfo | undefined {
    const info = this.control().call((c) => c.info(domid), `reading domain ${domid}'s state`);
    return info && domainInfoOf(info);
  }

  listDomains(): DomainInfo[] {
    return this.control()
      .call((c) => c.list(), 'listing domains')
      .map(domainInfoOf);
  }

  private domainControl: DomainControlHandle | undefined;

  private control(): DomainControlHandle {
    this.domainControl ??= new DomainControlHandle();
    return this.domainControl;
  }
}

function domainInfoOf(info: NativeDomainInfo): DomainInfo {
  const state = info.dying ? 'dying' : info.shutdown ? 'shutdown' : info.paused ? 'paused' : 'running';
  return {
    domid: info.domid,
    // Xen 4.17 has no unique domain id: the handle (UUID) with the domid tells a domain from a later one with its domid.
    uniqueId: info.handle,
    // Names are the toolstack's, in xenstore: the hypervisor knows none.
    name: '',
    pages: info.pages,
    state,
    shutdownReason: info.shutdown ? (shutdownReasonName(info.shutdownReason) ?? 'crash') : undefined,
  };
}

/** libxenctrl's interface, opened on first use, with its errors as PlatformErrors. */
class DomainControlHandle {
  private native: NativeDomainControl | undefined;

  call<T>(f: (control: NativeDomainControl) => T, what: string): T {
    try {
      this.native ??= new (xenctrlAddon().DomainControl)();
      return f(this.native);
    } catch (err) {
      if ((err as Partial<NativeError>).code !== undefined) throw platformError(err);
      throw new PlatformError('ENOSYS', `${what}: ${(err as Error).message}`);
    }
  }
}

/**
 * A process has no pseudo-physical pages of its own to hand out: what it
 * shares with another domain comes from GrantTable.share.
 */
class ProcessMemory implements GuestMemory {
  readonly pages = 0;

  constructor(private readonly domid: number) {}

  allocPages(): number[] {
    throw new PlatformError('ENOSYS', `a process in domain ${this.domid} shares pages with GrantTable.share, not by page number`);
  }

  freePages(): void {
    throw new PlatformError('ENOSYS', `a process in domain ${this.domid} has no page numbers to free`);
  }

  page(pfn: number): Uint8Array {
    throw new PlatformError('ENOSYS', `a process in domain ${this.domid} cannot reach its page ${pfn} by number`);
  }

  allocContiguousPages(): number {
    throw new PlatformError('ENOSYS', `a process in domain ${this.domid} shares pages with GrantTable.share, not by page number`);
  }

  range(pfn: number): Uint8Array {
    throw new PlatformError('ENOSYS', `a process in domain ${this.domid} cannot reach its page ${pfn} by number`);
  }

  /** A process's buffers have no page numbers: never the domain's memory as a kernel sees it. */
  addressOf(): number {
    return -1;
  }
}

/** Pages shared through gntalloc, with the buffer that unshares them. */
class XenSharedPages implements SharedPages {
  constructor(
    readonly grefs: readonly number[],
    readonly pages: readonly Uint8Array[],
    readonly buffer: ArrayBuffer,
  ) {}
}

function pageViews(buffer: ArrayBuffer, count: number): Uint8Array[] {
  return Array.from({ length: count }, (_, i) => new Uint8Array(buffer, i * PAGE_SIZE, PAGE_SIZE));
}

/**
 * The grant table as a process has it: mapping and copying through
 * /dev/xen/gntdev, sharing through /dev/xen/gntalloc, each opened on first
 * use. Granting a page by number is a kernel's business and is refused.
 */
export class XenGrantTable implements GrantTable {
  private gnttab: NativeGrantTable | undefined;
  private gntshr: NativeGrantShare | undefined;

  constructor(readonly domid: number) {}

  private mapper(): NativeGrantTable {
    if (!this.gnttab) {
      try {
        this.gnttab = new (xenAddon().GrantTable)();
      } catch (err) {
        throw platformError(err);
      }
      try {
        this.gnttab.setMaxGrants(MAX_MAPPED_GRANTS);
      } catch (err) {
        // Kernels without a per-handle limit have no such request.
        if ((err as NativeError).code !== 'ENOTTY' && (err as NativeError).code !== 'EINVAL') throw platformError(err);
      }
    }
    return this.gnttab;
  }

  private sharer(): NativeGrantShare {
    if (!this.gntshr) {
      try {
        this.gntshr = new (xenAddon().GrantShare)();
      } catch (err) {
        throw platformError(err);
      }
    }
    return this.gntshr;
  }

  map(granterDomid: number, grefs: readonly number[], writable: boolean): GrantMapping {
    if (grefs.length === 0) throw new PlatformError('EINVAL', 'no grant references to map');
    let buffer: ArrayBuffer;
    try {
      buffer = this.mapper().map(granterDomid, grefs, writable);
    } catch (err) {
      throw platformError(err);
    }
    const gnttab = this.gnttab!;
    let mapped = true;
    return {
      pages: pageViews(buffer, grefs.length),
      writable,
      unmap: () => {
        if (!mapped) return;
        mapped = false;
        gnttab.unmap(buffer);
      },
    };
  }

  copy(ops: readonly GrantCopy[]): void {
    const native = ops.map((op) => ({ source: copyEnd(op.source), dest: copyEnd(op.dest), length: op.length }));
    let statuses: number[];
    try {
      statuses = this.mapper().copy(native);
    } catch (err) {
      throw platformError(err);
    }
    const failed = statuses.findIndex((status) => status !== 0);
    if (failed >= 0) {
      const op = ops[failed]!;
      throw new PlatformError('EINVAL', `xengnttab_grant_copy: operation ${failed} (${describeEnd(op.source)} to ${describeEnd(op.dest)}, ${op.length} bytes) failed with GNTST ${statuses[failed]}`, statuses[failed]);
    }
  }

  share(remoteDomid: number, count: number, readonly: boolean): SharedPages {
    let shared: { refs: number[]; buffer: ArrayBuffer };
    try {
      shared = this.sharer().share(remoteDomid, count, !readonly);
    } catch (err) {
      throw platformError(err);
    }
    return new XenSharedPages(shared.refs, pageViews(shared.buffer, count), shared.buffer);
  }

  /** The kernel ends each grant once the other domain no longer maps the page: nothing is left to us. */
  unshare(shared: SharedPages): undefined {
    if (!(shared instanceof XenSharedPages)) throw new PlatformError('EINVAL', 'these pages were not shared by this platform');
    try {
      this.sharer().unshare(shared.buffer);
    } catch (err) {
      throw platformError(err);
    }
    return undefined;
  }

  grantAccess(remoteDomid: number): number {
    throw new PlatformError('ENOSYS', `granting a page by number to domain ${remoteDomid} is the kernel's: a process shares pages with share()`);
  }

  grantReserved(gref: number): void {
    throw new PlatformError('ENOSYS', `reserved grant ${gref} is the toolstack's`);
  }

  endAccess(gref: number): boolean {
    throw new PlatformError('ENOSYS', `grant ${gref} was not granted by number: pages shared with share() end with unshare()`);
  }
}

function copyEnd(end: GrantCopy['source']): NativeCopyEnd {
  if ('pfn' in end) throw new PlatformError('ENOSYS', `a process copies from its own buffers, not page ${end.pfn}`);
  return end;
}

function describeEnd(end: GrantCopy['source']): string {
  if ('gref' in end) return `domain ${end.domid} ref ${end.gref}+${end.offset}`;
  if ('pfn' in end) return `page ${end.pfn}+${end.offset}`;
  return `local buffer+${end.offset}`;
}

/**
 * An open /dev/xen/evtchn. The device has no mask of its own for a
 * process (the kernel masks a port while it reports it): mask and unmask
 * here hold back and then deliver events of a port, as they do on the
 * embedded platform.
 */
export class XenEventChannels implements EventChannels {
  private readonly native: NativeEventChannels;
  private listener: ((port: number) => void) | undefined;
  private readonly masked = new Set<number>();
  /** Ports with an event not yet delivered: masked, or raised before a listener was installed. */
  private readonly held = new Set<number>();

  constructor(readonly domid: number) {
    try {
      this.native = new (xenAddon().EventChannels)((ports) => this.arrived(ports));
    } catch (err) {
      throw platformError(err);
    }
  }

  allocUnbound(remoteDomid: number): number {
    return this.call(() => this.native.bindUnbound(remoteDomid));
  }

  bindInterdomain(remoteDomid: number, remotePort: number): number {
    return this.call(() => this.native.bindInterdomain(remoteDomid, remotePort));
  }

  bindVirq(virq: number): number {
    return this.call(() => this.native.bindVirq(virq));
  }

  listen(port: number): void {
    throw new PlatformError('ENOSYS', `port ${port}: a process binds ports with bindInterdomain, it is not handed any`);
  }

  notify(port: number): void {
    this.call(() => this.native.notify(port));
  }

  mask(port: number): void {
    this.masked.add(port);
  }

  unmask(port: number): void {
    this.masked.delete(port);
    if (this.held.delete(port)) this.deliver(port);
  }

  unbind(port: number): void {
    this.masked.delete(port);
    this.held.delete(port);
    this.call(() => this.native.unbind(port));
  }

  onEvent(listener: (port: number) => void): void {
    this.listener = listener;
    for (const port of [...this.held]) {
      if (this.masked.has(port)) continue;
      this.held.delete(port);
      this.deliver(port);
    }
  }

  close(): void {
    this.native.close();
    this.held.clear();
  }

  private arrived(ports: number[]): void {
    for (const port of ports) {
      if (this.masked.has(port) || !this.listener) this.held.add(port);
      else this.deliver(port);
    }
  }

  private deliver(port: number): void {
    try {
      this.listener?.(port);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  private call<T>(op: () => T): T {
    try {
      return op();
    } catch (err) {
      throw platformError(err);
    }
  }
}
