import { PlatformError, VIRQ_DOM_EXC, type EventChannels } from '../platform.js';
import {
  DOMID_LIMIT,
  DomainSlot,
  EVTCHN_PORTS,
  GROUP_BITMAP_WORDS,
  Handle,
  Header,
  MAX_EVTCHN_HANDLES,
  PORT_GROUPS_PER_DOMAIN,
  PORTS_PER_GROUP,
  Port,
  PortGroup,
  PortState,
  SlotState,
} from './layout.js';
import type { Machine } from './machine.js';

/** Period of the timer that keeps an open handle's thread alive (it never does anything). */
const KEEP_ALIVE_INTERVAL_MS = 1 << 30;

/** State word of a port: the state in the low byte, the remote domid above it. */
function portWord(state: number, remoteDomid = 0): number {
  return state | (remoteDomid << 8);
}
const stateOf = (word: number) => word & 0xff;
const remoteOf = (word: number) => word >>> 8;

const groupOf = (port: number) => Math.floor(port / PORTS_PER_GROUP);
/** The word of a port's pending (or mask) bits within its group's bitmap, and its bit there. */
const bitWordOf = (port: number) => (port % PORTS_PER_GROUP) >>> 5;
const bitOf = (port: number) => 1 << (port & 31);
/** A handle's selector bit for a port group. */
const selectorBit = (group: number) => 1 << (group & 31);

/** Word offset of the word holding a port's pending bit, or -1 if its domain has no group for it. */
function pendingWord(machine: Machine, slot: number, port: number): number {
  const group = machine.portGroup(slot, groupOf(port));
  return group < 0 ? -1 : group + PortGroup.PENDING + bitWordOf(port);
}

function maskWord(machine: Machine, slot: number, port: number): number {
  const group = machine.portGroup(slot, groupOf(port));
  return group < 0 ? -1 : group + PortGroup.MASKS + bitWordOf(port);
}

/**
 * Marks a port pending and, unless it is masked, wakes the handle it is
 * bound through. A port already pending is not woken again: several
 * notifies coalesce into one wake-up, as on Xen.
 */
export function raisePort(machine: Machine, slot: number, port: number): void {
  const words = machine.words;
  const pending = pendingWord(machine, slot, port);
  if (pending < 0) return;
  const bit = bitOf(port);
  const before = Atomics.or(words, pending, bit);
  if (before & bit) return;
  if (Atomics.load(words, pending - PortGroup.PENDING + PortGroup.MASKS) & bit) return;
  wakeHandleOf(machine, slot, port);
}

function wakeHandleOf(machine: Machine, slot: number, port: number): void {
  const portBase = machine.portBase(slot, port);
  if (portBase < 0) return;
  const handle = Atomics.load(machine.words, portBase + Port.HANDLE) - 1;
  if (handle < 0) return;
  const base = machine.handleBase(handle);
  Atomics.or(machine.words, base + Handle.SELECTOR, selectorBit(groupOf(port)));
  Atomics.add(machine.words, base + Handle.WAKE, 1);
  Atomics.notify(machine.words, base + Handle.WAKE);
}

/** Raises a virtual interrupt on every port of a domain bound to it. */
export function raiseVirq(machine: Machine, slot: number, virq: number): void {
  for (const port of portsOf(machine, slot)) {
    const base = machine.portBase(slot, port);
    if (stateOf(Atomics.load(machine.words, base + Port.STATE)) === PortState.VIRQ && Atomics.load(machine.words, base + Port.VIRQ) === virq) {
      raisePort(machine, slot, port);
    }
  }
}

/** Every port number in the groups a domain holds: as many as it has used, not 2^17. */
function* portsOf(machine: Machine, slot: number): Generator<number> {
  for (const [group] of machine.portGroups(slot)) {
    const first = group * PORTS_PER_GROUP;
    for (let port = Math.max(first, 1); port < first + PORTS_PER_GROUP; port++) yield port;
  }
}

/**
 * Closes every port of a dying domain: the far end of each interdomain
 * channel becomes unbound, as on Xen, and every handle of the domain is
 * woken so that its listener notices.
 */
export function closeAllPorts(machine: Machine, slot: number, domid: number): void {
  for (const port of portsOf(machine, slot)) closePort(machine, slot, domid, port);
  const handles = machine.high(Header.HANDLE_HIGH);
  for (let handle = 0; handle < handles; handle++) {
    const base = machine.handleBase(handle);
    if (Atomics.load(machine.words, base + Handle.OWNER) === domid + 1) {
      Atomics.store(machine.words, base + Handle.OWNER, 0);
      Atomics.add(machine.words, base + Handle.WAKE, 1);
      Atomics.notify(machine.words, base + Handle.WAKE);
    }
  }
}

function closePort(machine: Machine, slot: number, domid: number, port: number): void {
  const words = machine.words;
  const base = machine.portBase(slot, port);
  if (base < 0) return;
  const word = Atomics.load(words, base + Port.STATE);
  if (stateOf(word) === PortState.FREE) return;
  if (stateOf(word) === PortState.INTERDOMAIN) {
    const remoteSlot = machine.slotOf(remoteOf(word));
    const remoteBase = remoteSlot < 0 ? -1 : machine.portBase(remoteSlot, Atomics.load(words, base + Port.REMOTE_PORT));
    if (remoteBase >= 0) {
      Atomics.compareExchange(words, remoteBase + Port.STATE, portWord(PortState.INTERDOMAIN, domid), portWord(PortState.UNBOUND, domid));
    }
  }
  const bit = bitOf(port);
  Atomics.and(words, pendingWord(machine, slot, port), ~bit);
  Atomics.and(words, maskWord(machine, slot, port), ~bit);
  Atomics.store(words, base + Port.HANDLE, 0);
  Atomics.store(words, base + Port.REMOTE_PORT, 0);
  Atomics.store(words, base + Port.VIRQ, 0);
  Atomics.store(words, base + Port.STATE, portWord(PortState.FREE));
}

/**
 * An open event channel device of one domain (what xenevtchn_open gives a
 * process on Xen): ports are bound through it, and it alone is woken for
 * them. Delivery is a pending bit in shared memory plus Atomics.notify on
 * the handle's wake word; the listener sleeps in Atomics.waitAsync.
 */
export class EmbeddedEventChannels implements EventChannels {
  private readonly handle: number;
  /** The ports bound through this handle, as bitmaps by port group. */
  private readonly owned = new Map<number, Int32Array>();
  private readonly ports = new Set<number>();
  private listener: ((port: number) => void) | undefined;
  private closed = false;
  /**
   * Atomics.waitAsync does not keep a thread's event loop alive; an open
   * handle must, as an open /dev/xen/evtchn keeps a process waiting on it.
   */
  private readonly keepAlive: NodeJS.Timeout;

  constructor(
    private readonly machine: Machine,
    readonly domid: number,
    private readonly whenRunning: () => Promise<void>,
    private readonly tag: number,
  ) {
    machine.requireSlot(domid);
    this.handle = this.claimHandle();
    this.keepAlive = setInterval(() => {}, KEEP_ALIVE_INTERVAL_MS);
    void this.run();
  }

  private get slot(): number {
    return this.machine.requireSlot(this.domid);
  }

  /** Takes the lowest free handle: a scan as long as the handles open, not the table. */
  private claimHandle(): number {
    for (let handle = 0; handle < MAX_EVTCHN_HANDLES; handle++) {
      const base = this.machine.handleBase(handle);
      if (Atomics.compareExchange(this.machine.words, base + Handle.OWNER, 0, this.domid + 1) === 0) {
        Atomics.store(this.machine.words, base + Handle.SELECTOR, 0);
        Atomics.store(this.machine.words, base + Handle.TAG, this.tag);
        this.machine.raiseHigh(Header.HANDLE_HIGH, handle + 1);
        return handle;
      }
    }
    throw new PlatformError('ENOSPC', `all ${MAX_EVTCHN_HANDLES} event channel handles are open`);
  }

  allocUnbound(remoteDomid: number): number {
    if (!Number.isInteger(remoteDomid) || remoteDomid < 0 || remoteDomid >= DOMID_LIMIT || this.machine.slotOf(remoteDomid) < 0) {
      throw new PlatformError('ESRCH', `no domain ${remoteDomid}`);
    }
    const port = this.reservePort();
    this.publish(port, portWord(PortState.UNBOUND, remoteDomid));
    return port;
  }

  bindInterdomain(remoteDomid: number, remotePort: number): number {
    const remoteSlot = this.machine.slotOf(remoteDomid);
    if (remoteSlot < 0) throw new PlatformError('ESRCH', `no domain ${remoteDomid}`);
    if (!Number.isInteger(remotePort) || remotePort <= 0 || remotePort >= EVTCHN_PORTS) {
      throw new PlatformError('EINVAL', `port ${remotePort} is out of range`);
    }
    const words = this.machine.words;
    const remoteBase = this.machine.portBase(remoteSlot, remotePort);
    if (remoteBase < 0) throw new PlatformError('EINVAL', `port ${remotePort} of domain ${remoteDomid} is not unbound for domain ${this.domid}`);
    const unbound = portWord(PortState.UNBOUND, this.domid);
    if (Atomics.compareExchange(words, remoteBase + Port.STATE, unbound, portWord(PortState.BINDING, this.domid)) !== unbound) {
      throw new PlatformError('EINVAL', `port ${remotePort} of domain ${remoteDomid} is not unbound for domain ${this.domid}`);
    }
    let port: number;
    try {
      port = this.reservePort();
    } catch (err) {
      Atomics.store(words, remoteBase + Port.STATE, unbound);
      throw err;
    }
    Atomics.store(words, this.machine.portBase(this.slot, port) + Port.REMOTE_PORT, remotePort);
    this.publish(port, portWord(PortState.INTERDOMAIN, remoteDomid));
    Atomics.store(words, remoteBase + Port.REMOTE_PORT, port);
    Atomics.store(words, remoteBase + Port.STATE, portWord(PortState.INTERDOMAIN, this.domid));
    // Events sent while the far end was unbound were dropped; like Xen, make
    // sure the new port starts with one pending.
    raisePort(this.machine, this.slot, port);
    return port;
  }

  bindVirq(virq: number): number {
    if (virq !== VIRQ_DOM_EXC) throw new PlatformError('EINVAL', `virtual interrupt ${virq} is not provided`);
    const port = this.reservePort();
    Atomics.store(this.machine.words, this.machine.portBase(this.slot, port) + Port.VIRQ, virq);
    this.publish(port, portWord(PortState.VIRQ));
    return port;
  }

  listen(port: number): void {
    const slot = this.slot;
    if (!Number.isInteger(port) || port <= 0 || port >= EVTCHN_PORTS) throw new PlatformError('EINVAL', `port ${port} is out of range`);
    const base = this.machine.portBase(slot, port);
    if (base < 0) throw new PlatformError('EINVAL', `port ${port} of domain ${this.domid} is not allocated`);
    const state = stateOf(Atomics.load(this.machine.words, base + Port.STATE));
    if (state === PortState.FREE || state === PortState.RESERVED) throw new PlatformError('EINVAL', `port ${port} of domain ${this.domid} is not allocated`);
    if (Atomics.compareExchange(this.machine.words, base + Port.HANDLE, 0, this.handle + 1) !== 0) {
      throw new PlatformError('EBUSY', `port ${port} of domain ${this.domid} is already bound`);
    }
    this.own(port);
    if (Atomics.load(this.machine.words, pendingWord(this.machine, slot, port)) & bitOf(port)) wakeHandleOf(this.machine, slot, port);
  }

  notify(port: number): void {
    const word = this.ownPortState(port);
    switch (stateOf(word)) {
      case PortState.INTERDOMAIN: {
        const remoteSlot = this.machine.slotOf(remoteOf(word));
        if (remoteSlot < 0) return;
        const remotePort = Atomics.load(this.machine.words, this.machine.portBase(this.slot, port) + Port.REMOTE_PORT);
        raisePort(this.machine, remoteSlot, remotePort);
        return;
      }
      case PortState.UNBOUND:
      case PortState.BINDING:
        // Nobody at the other end yet: Xen drops the notification silently.
        return;
      default:
        throw new PlatformError('EINVAL', `port ${port} cannot be notified`);
    }
  }

  mask(port: number): void {
    this.ownPortState(port);
    Atomics.or(this.machine.words, maskWord(this.machine, this.slot, port), bitOf(port));
  }

  unmask(port: number): void {
    this.ownPortState(port);
    const slot = this.slot;
    Atomics.and(this.machine.words, maskWord(this.machine, slot, port), ~bitOf(port));
    if (Atomics.load(this.machine.words, pendingWord(this.machine, slot, port)) & bitOf(port)) wakeHandleOf(this.machine, slot, port);
  }

  unbind(port: number): void {
    this.ownPortState(port);
    closePort(this.machine, this.slot, this.domid, port);
    this.disown(port);
  }

  onEvent(listener: (port: number) => void): void {
    this.listener = listener;
    // Events that arrived before anyone listened are still pending: look again.
    const base = this.machine.handleBase(this.handle);
    Atomics.or(this.machine.words, base + Handle.SELECTOR, -1);
    Atomics.add(this.machine.words, base + Handle.WAKE, 1);
    Atomics.notify(this.machine.words, base + Handle.WAKE);
  }

  /**
   * Lets go of the handle the way a worker that dies does (reclaimHandles):
   * its ports stay bound, as the domain still has them, but belong to no
   * handle until someone listens to them again.
   */
  abandon(): void {
    if (this.closed) return;
    const slot = this.machine.slotOf(this.domid);
    if (slot >= 0) {
      for (const port of this.ports) {
        const base = this.machine.portBase(slot, port);
        if (base >= 0) Atomics.compareExchange(this.machine.words, base + Port.HANDLE, this.handle + 1, 0);
      }
    }
    this.ports.clear();
    this.close();
  }

  close(): void {
    if (this.closed) return;
    const slot = this.machine.slotOf(this.domid);
    if (slot >= 0) for (const port of [...this.ports]) this.unbind(port);
    this.closed = true;
    clearInterval(this.keepAlive);
    const base = this.machine.handleBase(this.handle);
    Atomics.compareExchange(this.machine.words, base + Handle.OWNER, this.domid + 1, 0);
    Atomics.add(this.machine.words, base + Handle.WAKE, 1);
    Atomics.notify(this.machine.words, base + Handle.WAKE);
  }

  // ---- internals ----------------------------------------------------------

  private reservePort(): number {
    const slot = this.slot;
    const port = reserveLowestPort(this.machine, slot, this.domid);
    Atomics.store(this.machine.words, this.machine.portBase(slot, port) + Port.HANDLE, this.handle + 1);
    this.own(port);
    return port;
  }

  private own(port: number): void {
    this.ports.add(port);
    const group = groupOf(port);
    let bits = this.owned.get(group);
    if (!bits) this.owned.set(group, (bits = new Int32Array(GROUP_BITMAP_WORDS)));
    bits[bitWordOf(port)]! |= bitOf(port);
  }

  private disown(port: number): void {
    this.ports.delete(port);
    const bits = this.owned.get(groupOf(port));
    if (bits) bits[bitWordOf(port)]! &= ~bitOf(port);
  }

  private publish(port: number, word: number): void {
    Atomics.store(this.machine.words, this.machine.portBase(this.slot, port) + Port.STATE, word);
  }

  /** The state of a port bound through this handle; EINVAL for any other port. */
  private ownPortState(port: number): number {
    const base = this.closed || !this.ports.has(port) ? -1 : this.machine.portBase(this.slot, port);
    if (base < 0) throw new PlatformError('EINVAL', `port ${port} is not bound through this handle`);
    return Atomics.load(this.machine.words, base + Port.STATE);
  }

  private async run(): Promise<void> {
    const words = this.machine.words;
    const wake = this.machine.handleBase(this.handle) + Handle.WAKE;
    while (!this.closed) {
      const seen = Atomics.load(words, wake);
      if (Atomics.load(words, this.machine.handleBase(this.handle) + Handle.OWNER) !== this.domid + 1) break;
      const slot = this.machine.slotOf(this.domid);
      if (slot >= 0 && this.machine.slotWord(slot, DomainSlot.STATE) === SlotState.PAUSED) await this.whenRunning();
      if (slot >= 0) this.dispatch(slot);
      const wait = Atomics.waitAsync(words, wake, seen);
      if (wait.async) await wait.value;
    }
    this.closed = true;
    clearInterval(this.keepAlive);
    this.ports.clear();
  }

  private dispatch(slot: number): void {
    // Without a listener, events stay pending until one is installed.
    if (!this.listener) return;
    const words = this.machine.words;
    const selector = Atomics.exchange(words, this.machine.handleBase(this.handle) + Handle.SELECTOR, 0);
    for (const [group, owned] of this.owned) {
      if (!(selector & selectorBit(group))) continue;
      const base = this.machine.portGroup(slot, group);
      if (base < 0) continue;
      for (let word = 0; word < GROUP_BITMAP_WORDS; word++) {
        if (!owned[word]) continue;
        const pending = Atomics.load(words, base + PortGroup.PENDING + word);
        const mine = pending & owned[word]! & ~Atomics.load(words, base + PortGroup.MASKS + word);
        if (!mine) continue;
        Atomics.and(words, base + PortGroup.PENDING + word, ~mine);
        for (let bit = 0; bit < 32; bit++) {
          if (mine & (1 << bit)) this.deliver(group * PORTS_PER_GROUP + word * 32 + bit);
        }
      }
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
}

/**
 * Allocates an unbound port in a domain's table on its behalf, bound to no
 * handle yet: the domain takes it with EventChannels.listen().
 */
export function allocateUnboundFor(machine: Machine, domid: number, remoteDomid: number): number {
  const slot = machine.requireSlot(domid);
  if (!Number.isInteger(remoteDomid) || remoteDomid < 0 || remoteDomid >= DOMID_LIMIT || machine.slotOf(remoteDomid) < 0) {
    throw new PlatformError('ESRCH', `no domain ${remoteDomid}`);
  }
  const port = reserveLowestPort(machine, slot, domid);
  const base = machine.portBase(slot, port);
  Atomics.store(machine.words, base + Port.HANDLE, 0);
  Atomics.store(machine.words, base + Port.STATE, portWord(PortState.UNBOUND, remoteDomid));
  return port;
}

/**
 * Reserves the lowest free port of a domain, as Xen's get_free_port does,
 * giving the domain its next port group when those it holds are full.
 */
function reserveLowestPort(machine: Machine, slot: number, domid: number): number {
  const words = machine.words;
  for (let group = 0; group < PORT_GROUPS_PER_DOMAIN; group++) {
    let base = machine.portGroup(slot, group);
    if (base < 0) base = machine.addPortGroup(slot, group);
    if (base < 0) throw new PlatformError('ENOSPC', `the machine has no event channel group left for domain ${domid}`);
    // Port 0 is never used, as on Xen.
    for (let index = group === 0 ? 1 : 0; index < PORTS_PER_GROUP; index++) {
      const at = base + PortGroup.PORTS + index * Port.WORDS + Port.STATE;
      if (Atomics.compareExchange(words, at, portWord(PortState.FREE), portWord(PortState.RESERVED)) === PortState.FREE) {
        return group * PORTS_PER_GROUP + index;
      }
    }
  }
  throw new PlatformError('ENOSPC', `domain ${domid} has no free event channel port`);
}

/**
 * Frees the handles a dead worker left open: their ports stay bound (the
 * domain still has them) but belong to no handle until someone listens to
 * them again, as after a guest kernel restarts.
 */
export function reclaimHandles(machine: Machine, tag: number): number {
  let reclaimed = 0;
  const handles = machine.high(Header.HANDLE_HIGH);
  for (let handle = 0; handle < handles; handle++) {
    const base = machine.handleBase(handle);
    const owner = Atomics.load(machine.words, base + Handle.OWNER);
    if (owner === 0 || Atomics.load(machine.words, base + Handle.TAG) !== tag) continue;
    const slot = machine.slotOf(owner - 1);
    if (slot >= 0) {
      for (const port of portsOf(machine, slot)) {
        Atomics.compareExchange(machine.words, machine.portBase(slot, port) + Port.HANDLE, handle + 1, 0);
      }
    }
    Atomics.store(machine.words, base + Handle.OWNER, 0);
    reclaimed++;
  }
  return reclaimed;
}
