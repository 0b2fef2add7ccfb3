import { PlatformError, VIRQ_DOM_EXC, type EventChannels } from '../platform.js';
import { DOMID_LIMIT, DomainSlot, EVTCHN_PORTS, Handle, MAX_EVTCHN_HANDLES, PENDING_WORDS, Port, PortState, SlotState } from './layout.js';
import type { Machine } from './machine.js';

/** Period of the timer that keeps an open handle's thread alive (it never does anything). */
const KEEP_ALIVE_INTERVAL_MS = 1 << 30;

/** State word of a port: the state in the low byte, the remote domid above it. */
function portWord(state: number, remoteDomid = 0): number {
  return state | (remoteDomid << 8);
}
const stateOf = (word: number) => word & 0xff;
const remoteOf = (word: number) => word >>> 8;

/**
 * Marks a port pending and, unless it is masked, wakes the handle it is
 * bound through. A port already pending is not woken again: several
 * notifies coalesce into one wake-up, as on Xen.
 */
export function raisePort(machine: Machine, slot: number, port: number): void {
  const words = machine.words;
  const word = port >>> 5;
  const bit = 1 << (port & 31);
  const before = Atomics.or(words, machine.pendingBase(slot) + word, bit);
  if (before & bit) return;
  if (Atomics.load(words, machine.maskBase(slot) + word) & bit) return;
  wakeHandleOf(machine, slot, port);
}

function wakeHandleOf(machine: Machine, slot: number, port: number): void {
  const handle = Atomics.load(machine.words, machine.portBase(slot, port) + Port.HANDLE) - 1;
  if (handle < 0) return;
  const base = machine.handleBase(handle);
  Atomics.or(machine.words, base + Handle.SELECTOR, 1 << (port >>> 5));
  Atomics.add(machine.words, base + Handle.WAKE, 1);
  Atomics.notify(machine.words, base + Handle.WAKE);
}

/** Raises a virtual interrupt on every port of a domain bound to it. */
export function raiseVirq(machine: Machine, slot: number, virq: number): void {
  for (let port = 1; port < EVTCHN_PORTS; port++) {
    const base = machine.portBase(slot, port);
    if (stateOf(Atomics.load(machine.words, base + Port.STATE)) === PortState.VIRQ && Atomics.load(machine.words, base + Port.VIRQ) === virq) {
      raisePort(machine, slot, port);
    }
  }
}

/**
 * Closes every port of a dying domain: the far end of each interdomain
 * channel becomes unbound, as on Xen, and every handle of the domain is
 * woken so that its listener notices.
 */
export function closeAllPorts(machine: Machine, slot: number, domid: number): void {
  for (let port = 1; port < EVTCHN_PORTS; port++) closePort(machine, slot, domid, port);
  for (let handle = 0; handle < MAX_EVTCHN_HANDLES; handle++) {
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
  const word = Atomics.load(words, base + Port.STATE);
  if (stateOf(word) === PortState.FREE) return;
  if (stateOf(word) === PortState.INTERDOMAIN) {
    const remoteSlot = machine.slotOf(remoteOf(word));
    if (remoteSlot >= 0) {
      const remoteBase = machine.portBase(remoteSlot, Atomics.load(words, base + Port.REMOTE_PORT));
      Atomics.compareExchange(words, remoteBase + Port.STATE, portWord(PortState.INTERDOMAIN, domid), portWord(PortState.UNBOUND, domid));
    }
  }
  const bit = 1 << (port & 31);
  Atomics.and(words, machine.pendingBase(slot) + (port >>> 5), ~bit);
  Atomics.and(words, machine.maskBase(slot) + (port >>> 5), ~bit);
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
  private readonly owned = new Int32Array(PENDING_WORDS);
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

  private claimHandle(): number {
    for (let handle = 0; handle < MAX_EVTCHN_HANDLES; handle++) {
      const base = this.machine.handleBase(handle);
      if (Atomics.compareExchange(this.machine.words, base + Handle.OWNER, 0, this.domid + 1) === 0) {
        Atomics.store(this.machine.words, base + Handle.SELECTOR, 0);
        Atomics.store(this.machine.words, base + Handle.TAG, this.tag);
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
    const state = stateOf(Atomics.load(this.machine.words, base + Port.STATE));
    if (state === PortState.FREE || state === PortState.RESERVED) throw new PlatformError('EINVAL', `port ${port} of domain ${this.domid} is not allocated`);
    if (Atomics.compareExchange(this.machine.words, base + Port.HANDLE, 0, this.handle + 1) !== 0) {
      throw new PlatformError('EBUSY', `port ${port} of domain ${this.domid} is already bound`);
    }
    this.ports.add(port);
    this.owned[port >>> 5]! |= 1 << (port & 31);
    if (this.machine.bit(this.machine.pendingBase(slot), port)) wakeHandleOf(this.machine, slot, port);
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
    this.machine.setBit(this.machine.maskBase(this.slot), port);
  }

  unmask(port: number): void {
    this.ownPortState(port);
    const slot = this.slot;
    this.machine.clearBit(this.machine.maskBase(slot), port);
    if (this.machine.bit(this.machine.pendingBase(slot), port)) wakeHandleOf(this.machine, slot, port);
  }

  unbind(port: number): void {
    this.ownPortState(port);
    closePort(this.machine, this.slot, this.domid, port);
    this.ports.delete(port);
    this.owned[port >>> 5]! &= ~(1 << (port & 31));
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
        Atomics.compareExchange(this.machine.words, this.machine.portBase(slot, port) + Port.HANDLE, this.handle + 1, 0);
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
    const words = this.machine.words;
    // Port 0 is never used, as on Xen.
    for (let port = 1; port < EVTCHN_PORTS; port++) {
      const base = this.machine.portBase(slot, port);
      if (Atomics.compareExchange(words, base + Port.STATE, portWord(PortState.FREE), portWord(PortState.RESERVED)) === PortState.FREE) {
        Atomics.store(words, base + Port.HANDLE, this.handle + 1);
        this.ports.add(port);
        this.owned[port >>> 5]! |= 1 << (port & 31);
        return port;
      }
    }
    throw new PlatformError('ENOSPC', `domain ${this.domid} has no free event channel port`);
  }

  private publish(port: number, word: number): void {
    Atomics.store(this.machine.words, this.machine.portBase(this.slot, port) + Port.STATE, word);
  }

  /** The state of a port bound through this handle; EINVAL for any other port. */
  private ownPortState(port: number): number {
    if (this.closed || !this.ports.has(port)) throw new PlatformError('EINVAL', `port ${port} is not bound through this handle`);
    return Atomics.load(this.machine.words, this.machine.portBase(this.slot, port) + Port.STATE);
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
    for (let word = 0; word < PENDING_WORDS; word++) {
      if (!(selector & (1 << word)) || !this.owned[word]) continue;
      const pending = Atomics.load(words, this.machine.pendingBase(slot) + word);
      const mine = pending & this.owned[word]! & ~Atomics.load(words, this.machine.maskBase(slot) + word);
      if (!mine) continue;
      Atomics.and(words, this.machine.pendingBase(slot) + word, ~mine);
      for (let bit = 0; bit < 32; bit++) {
        if (mine & (1 << bit)) this.deliver(word * 32 + bit);
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
  for (let port = 1; port < EVTCHN_PORTS; port++) {
    const base = machine.portBase(slot, port);
    if (Atomics.compareExchange(machine.words, base + Port.STATE, portWord(PortState.FREE), portWord(PortState.RESERVED)) === PortState.FREE) {
      Atomics.store(machine.words, base + Port.HANDLE, 0);
      Atomics.store(machine.words, base + Port.STATE, portWord(PortState.UNBOUND, remoteDomid));
      return port;
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
  for (let handle = 0; handle < MAX_EVTCHN_HANDLES; handle++) {
    const base = machine.handleBase(handle);
    const owner = Atomics.load(machine.words, base + Handle.OWNER);
    if (owner === 0 || Atomics.load(machine.words, base + Handle.TAG) !== tag) continue;
    const slot = machine.slotOf(owner - 1);
    if (slot >= 0) {
      for (let port = 1; port < EVTCHN_PORTS; port++) {
        Atomics.compareExchange(machine.words, machine.portBase(slot, port) + Port.HANDLE, handle + 1, 0);
      }
    }
    Atomics.store(machine.words, base + Handle.OWNER, 0);
    reclaimed++;
  }
  return reclaimed;
}
