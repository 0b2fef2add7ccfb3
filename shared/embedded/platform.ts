import {
  PlatformError,
  ShutdownReason,
  shutdownReasonName,
  VIRQ_DOM_EXC,
  type DomainInfo,
  type DomainInterface,
  type DomainSpec,
  type DomainState,
  type Platform,
  type PlatformLink,
  type ShutdownReasonName,
} from '../platform.js';
import { threadId } from 'node:worker_threads';
import { allocateUnboundFor, closeAllPorts, EmbeddedEventChannels, raiseVirq, reclaimHandles } from './evtchn.js';
import { EmbeddedGrantTable, reclaimMappings } from './grants.js';
import {
  DEFAULT_MAX_MAPTRACK_FRAMES,
  DOMID_LIMIT,
  DomainSlot,
  GrantEntry,
  GrantState,
  Header,
  MAPTRACK_PER_FRAME,
  SlotState,
  allocateDescriptor,
  type EmbeddedDescriptor,
} from './layout.js';
import { Machine } from './machine.js';
import { EmbeddedGuestMemory } from './memory.js';

/** Machine memory unless told otherwise: 64 MiB. */
export const DEFAULT_MACHINE_FRAMES = 16 * 1024;

const STATE_NAMES: Record<number, DomainState> = {
  [SlotState.RUNNING]: 'running',
  [SlotState.PAUSED]: 'paused',
  [SlotState.SHUTDOWN]: 'shutdown',
  [SlotState.DYING]: 'dying',
};

/** The privileged domain, told of domain state changes through VIRQ_DOM_EXC. */
const CONTROL_DOMID = 0;

/**
 * The embedded hypervisor: domains, their memory, grant tables and event
 * channels, all in SharedArrayBuffers. The supervisor creates it; every
 * worker attaches to the same buffers and sees the same machine.
 */
export class EmbeddedPlatform implements Platform {
  readonly kind = 'embedded';
  readonly machine: Machine;

  get link(): PlatformLink {
    return { kind: 'embedded', module: new URL('./attach.js', import.meta.url).href, descriptor: this.descriptor };
  }

  private constructor(
    readonly descriptor: EmbeddedDescriptor,
    /** Marks what this worker opens, so that it can be reclaimed if the worker dies. */
    private readonly tag: number,
  ) {
    this.machine = new Machine(descriptor);
  }

  /** A new machine with `frames` pages of memory. */
  static create(frames = DEFAULT_MACHINE_FRAMES): EmbeddedPlatform {
    return new EmbeddedPlatform(allocateDescriptor(frames), threadId);
  }

  /** Attaches to a machine another worker created, from the descriptor it was handed. */
  static attach(descriptor: EmbeddedDescriptor, holder = threadId): EmbeddedPlatform {
    return new EmbeddedPlatform(descriptor, holder);
  }

  /** Releases what a worker that died had open: its event channel handles and its grant mappings. */
  reclaimWorker(workerThreadId: number): number {
    return reclaimHandles(this.machine, workerThreadId) + reclaimMappings(this.machine, workerThreadId, (slot) => this.release(slot));
  }

  createDomain(spec: DomainSpec): DomainInfo {
    const domid = spec.domid ?? this.nextFreeDomid();
    if (!Number.isInteger(domid) || domid < 0 || domid >= DOMID_LIMIT) throw new PlatformError('EINVAL', `bad domid ${domid}`);
    if (!Number.isInteger(spec.pages) || spec.pages < 1) throw new PlatformError('EINVAL', `bad memory size ${spec.pages}`);
    if (this.machine.slotOf(domid) >= 0) throw new PlatformError('EEXIST', `domain ${domid} exists`);
    const maptrackFrames = spec.maxMaptrackFrames ?? DEFAULT_MAX_MAPTRACK_FRAMES;
    if (!Number.isInteger(maptrackFrames) || maptrackFrames < 0) throw new PlatformError('EINVAL', `bad max_maptrack_frames ${maptrackFrames}`);
    const slot = this.machine.freeSlot();
    let base: number;
    try {
      // Its first grant frame, which holds the reserved entries the toolstack fills in.
      if (!this.machine.growGrantTable(slot, 0)) throw new PlatformError('ENOSPC', 'the machine has no grant frame left');
      base = this.machine.allocFrames(spec.pages);
    } catch (err) {
      this.machine.releaseGrantTable(slot);
      this.machine.setSlotState(slot, SlotState.FREE);
      throw err;
    }
    this.machine.setSlotWord(slot, DomainSlot.DOMID, domid);
    this.machine.setSlotWord(slot, DomainSlot.PAGES, spec.pages);
    this.machine.setSlotWord(slot, DomainSlot.BASE_FRAME, base);
    this.machine.setSlotWord(slot, DomainSlot.SHUTDOWN_REASON, -1);
    this.machine.setSlotWord(slot, DomainSlot.PINS, 0);
    this.machine.setSlotWord(slot, DomainSlot.MAPTRACK_LIMIT, maptrackFrames * MAPTRACK_PER_FRAME);
    this.machine.setSlotWord(slot, DomainSlot.MAPTRACK_USED, 0);
    this.machine.setSlotWord(slot, DomainSlot.UNIQUE_ID, Atomics.add(this.machine.words, this.machine.layout.header + Header.LAST_UNIQUE_ID, 1) + 1);
    this.machine.setSlotName(slot, spec.name);
    this.machine.mapDomid(domid, slot);
    // Created paused, as xl creates domains; the toolstack unpauses once it has set them up.
    this.machine.setSlotState(slot, SlotState.PAUSED);
    return this.domainInfo(domid)!;
  }

  pauseDomain(domid: number): void {
    const slot = this.machine.requireSlot(domid);
    if (this.machine.slotWord(slot, DomainSlot.STATE) === SlotState.RUNNING) this.machine.setSlotState(slot, SlotState.PAUSED);
  }

  unpauseDomain(domid: number): void {
    const slot = this.machine.requireSlot(domid);
    if (this.machine.slotWord(slot, DomainSlot.STATE) === SlotState.PAUSED) this.machine.setSlotState(slot, SlotState.RUNNING);
  }

  shutdownDomain(domid: number, reason: ShutdownReasonName): void {
    const slot = this.machine.requireSlot(domid);
    const state = this.machine.slotWord(slot, DomainSlot.STATE);
    if (state === SlotState.SHUTDOWN || state === SlotState.DYING) return;
    this.machine.setSlotWord(slot, DomainSlot.SHUTDOWN_REASON, ShutdownReason[reason]);
    this.machine.setSlotState(slot, SlotState.SHUTDOWN);
    this.tellControlDomain();
  }

  resumeDomain(domid: number): void {
    const slot = this.machine.requireSlot(domid);
    if (this.machine.slotWord(slot, DomainSlot.STATE) !== SlotState.SHUTDOWN) return;
    this.machine.setSlotWord(slot, DomainSlot.SHUTDOWN_REASON, -1);
    this.machine.setSlotState(slot, SlotState.RUNNING);
  }

  allocateUnboundPort(domid: number, remoteDomid: number): number {
    return allocateUnboundFor(this.machine, domid, remoteDomid);
  }

  destroyDomain(domid: number): void {
    const slot = this.machine.requireSlot(domid);
    if (this.machine.slotWord(slot, DomainSlot.STATE) === SlotState.DYING) return;
    this.machine.setSlotState(slot, SlotState.DYING);
    closeAllPorts(this.machine, slot, domid);
    this.revokeGrants(slot);
    if (Atomics.load(this.machine.words, this.machine.slotBase(slot) + DomainSlot.PINS) === 0) this.release(slot);
    this.tellControlDomain();
  }

  domainInfo(domid: number): DomainInfo | undefined {
    const slot = this.machine.slotOf(domid);
    if (slot < 0) return undefined;
    const reason = this.machine.slotWord(slot, DomainSlot.SHUTDOWN_REASON);
    return {
      domid,
      uniqueId: this.machine.slotWord(slot, DomainSlot.UNIQUE_ID),
      name: this.machine.slotName(slot),
      pages: this.machine.slotWord(slot, DomainSlot.PAGES),
      state: STATE_NAMES[this.machine.slotWord(slot, DomainSlot.STATE)] ?? 'dead',
      shutdownReason: reason >= 0 ? shutdownReasonName(reason) : undefined,
    };
  }

  listDomains(): DomainInfo[] {
    const domains: DomainInfo[] = [];
    const slots = this.machine.high(Header.SLOT_HIGH);
    for (let slot = 0; slot < slots; slot++) {
      if (this.machine.slotWord(slot, DomainSlot.STATE) === SlotState.FREE) continue;
      const info = this.domainInfo(this.machine.slotWord(slot, DomainSlot.DOMID));
      if (info) domains.push(info);
    }
    return domains.sort((a, b) => a.domid - b.domid);
  }

  domain(domid: number): DomainInterface {
    this.machine.requireSlot(domid);
    const machine = this.machine;
    return {
      domid,
      memory: new EmbeddedGuestMemory(machine, domid),
      grants: new EmbeddedGrantTable(machine, domid, (slot) => this.release(slot), this.tag, new EmbeddedGuestMemory(machine, domid)),
      openEventChannels: () => new EmbeddedEventChannels(machine, domid, () => this.whenRunning(domid), this.tag),
    };
  }

  async whenRunning(domid: number): Promise<void> {
    await this.untilState(domid, (state) => (state === SlotState.PAUSED ? undefined : true));
  }

  whenResumed(domid: number): Promise<boolean> {
    return this.untilState(domid, (state) => {
      if (state === SlotState.RUNNING) return true;
      if (state === SlotState.DYING || state === SlotState.FREE) return false;
      return undefined;
    });
  }

  /**
   * Waits (without blocking the event loop) for a domain's state to be one
   * `decide` answers for; a domain that is gone is answered false.
   */
  private async untilState(domid: number, decide: (state: number) => boolean | undefined): Promise<boolean> {
    for (;;) {
      const slot = this.machine.slotOf(domid);
      if (slot < 0) return false;
      const seqIndex = this.machine.slotBase(slot) + DomainSlot.STATE_SEQ;
      const seq = Atomics.load(this.machine.words, seqIndex);
      const answer = decide(this.machine.slotWord(slot, DomainSlot.STATE));
      if (answer !== undefined) return answer;
      const wait = Atomics.waitAsync(this.machine.words, seqIndex, seq);
      if (wait.async) await wait.value;
    }
  }

  private nextFreeDomid(): number {
    for (let domid = 1; domid < DOMID_LIMIT; domid++) if (this.machine.slotOf(domid) < 0) return domid;
    throw new PlatformError('ENOSPC', 'no free domid');
  }

  /** A dying domain's grants stop working for new mappings; existing ones stay until unmapped. */
  private revokeGrants(slot: number): void {
    const words = this.machine.words;
    for (const frame of this.machine.grantFrames(slot)) {
      for (let base = frame; base < frame + this.machine.grantFramePool.chunkWords; base += GrantEntry.WORDS) {
        const state = Atomics.load(words, base + GrantEntry.STATE);
        if (state !== GrantState.FREE) Atomics.store(words, base + GrantEntry.STATE, GrantState.REVOKED);
      }
    }
  }

  /** Frees a dead domain's memory and slot once nobody has its pages mapped. */
  private release(slot: number): void {
    if (this.machine.slotWord(slot, DomainSlot.STATE) !== SlotState.DYING) return;
    const domid = this.machine.slotWord(slot, DomainSlot.DOMID);
    this.machine.releaseGrantTable(slot);
    this.machine.releasePortGroups(slot);
    this.machine.freeFrames(this.machine.slotWord(slot, DomainSlot.BASE_FRAME), this.machine.slotWord(slot, DomainSlot.PAGES));
    this.machine.unmapDomid(domid);
    this.machine.setSlotState(slot, SlotState.FREE);
  }

  /** Raises VIRQ_DOM_EXC in the control domain, as Xen does when a domain shuts down or dies. */
  private tellControlDomain(): void {
    const control = this.machine.slotOf(CONTROL_DOMID);
    if (control >= 0) raiseVirq(this.machine, control, VIRQ_DOM_EXC);
  }
}
