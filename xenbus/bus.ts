import { isConnectionLoss } from '../xenstore/client/client.js';
import type { WatchEvent, Watcher } from '../xenstore/client/watcher.js';
import { XenbusDevice, type BusContext } from './device.js';
import { PeerDomains } from './peer-domains.js';
import type { DeviceHandler, XenbusDriver } from './driver.js';
import { SerialQueue } from './serial.js';
import { readIfVisible, waitForState } from './read.js';
import { XenbusState, stateName } from './state.js';

/** Where a device's other end lives (XENBUSB_GET_OTHEREND_NODE). */
export interface OtherendNode {
  readonly path: string;
  readonly id: number;
}

/**
 * What a bus finds of a device's other end: where it is, what is wrong
 * with the keys that name it, or nothing yet.
 */
export type OtherendLookup = OtherendNode | { readonly malformed: string } | undefined;

/** A device as the bus reports it: this end's state and the other end's. */
export interface DeviceStatus {
  readonly type: string;
  readonly id: string;
  readonly node: string;
  readonly driver: string;
  readonly state: number;
  readonly otherendPath: string;
  readonly otherendId: number;
  readonly otherendState: number | undefined;
}

type Phase = 'attaching' | 'attached' | 'detached';

/** The bus's record of one device (FreeBSD's xenbus_device_ivars). */
export class BusDevice {
  phase: Phase = 'attaching';
  handler: DeviceHandler | undefined;
  otherendWatch: Watcher | undefined;
  localWatch: Watcher | undefined;
  /** The other end's state the driver last handled without failing. */
  deliveredState: number | undefined;
  /** Whether the other end has ever been seen: until then its absence means "not yet", not "gone". */
  otherendSeen = false;

  constructor(
    readonly key: string,
    readonly device: XenbusDevice,
    readonly driver: XenbusDriver,
  ) {}
}

/**
 * The common core of a XenBus (FreeBSD's xenbusb.c): it finds devices by
 * watching its root in xenstore, probes and attaches the drivers registered
 * for their class, follows each device's other end and its own directory,
 * and detaches devices that go away. The front and back buses specialise it
 * through the methods of FreeBSD's xenbusb_if.m: where the other end is
 * named, and what the bus itself does when either end changes.
 *
 * Every device has its own serial queue, so its events are handled in the
 * order they happened and never overlap (an attach is never raced by the
 * detach that follows it), while different devices proceed concurrently.
 */
/** How long a device that shuts down waits for its other end to close (Linux's xenbus_dev_shutdown waits 5 s). */
export const SHUTDOWN_WAIT_MS = 5000;

export abstract class XenbusBus {
  /** The bus's directory: `<home>/device` or `<home>/backend`. */
  readonly root: string;
  private readonly drivers: XenbusDriver[] = [];
  private readonly devices = new Map<string, BusDevice>();
  private readonly queues = new Map<string, SerialQueue>();
  private readonly busQueue: SerialQueue;
  /**
   * Devices whose attach a lost xenstore connection cut short, with the
   * state they had reached: they are attached again from that state when
   * the re-registered watches fire, instead of being taken for devices on
   * their way out.
   */
  private readonly interrupted = new Map<string, number>();
  /** Devices found when the bus started, which may have been left mid-connection by a predecessor. */
  private readonly foundAtStart = new Set<string>();
  /** Devices whose other-end keys are malformed, with what was reported. */
  private readonly refused = new Map<string, string>();
  private rootWatcher: Watcher | undefined;
  /** Tells when the domain at a device's other end dies. */
  private readonly peers: PeerDomains;
  private stopped = false;
  /** Stopped or shut down: the drivers have let go, and neither is done again. */
  private down = false;
  /** Between suspend and resume: events are not acted on. */
  private suspended = false;

  protected constructor(
    readonly ctx: BusContext,
    rootName: 'device' | 'backend',
    /** Path components after the class that name a device: `<id>`, or `<frontend-domid>/<id>`. */
    private readonly idComponents: number,
  ) {
    this.root = `${ctx.home}/${rootName}`;
    this.busQueue = new SerialQueue((err) => this.taskFailed(this.root, err));
    this.peers = new PeerDomains(
      ctx.xs,
      ctx.log,
      () => this.attachedDevices().map((entry) => entry.device.otherendId),
      (domid) => this.otherendDomainGone(domid),
    );
  }

  /** `front` or `back`, for logs and reports. */
  abstract readonly kind: string;

  // ---- the bus methods (xenbusb_if.m) -----------------------------------------

  /** Reads where the device's other end is; undefined while the toolstack has not written it. */
  protected abstract getOtherendNode(device: XenbusDevice): Promise<OtherendLookup>;

  /** The other end changed state; the driver hears of it first. */
  protected async otherendChanged(entry: BusDevice, state: number): Promise<void> {
    await entry.handler!.otherendChanged(state);
  }

  /** Something under this end's directory changed (`path` relative to it). */
  protected async localendChanged(entry: BusDevice, path: string): Promise<void> {
    await entry.handler!.localChanged?.(path);
  }

  /** Publishes what the toolstack waits for once a driver has attached. */
  protected async attached(_entry: BusDevice): Promise<void> {}

  /** Publishes what the other end and the toolstack need to see once a device is detached. */
  protected async publishDetached(entry: BusDevice): Promise<void> {
    await entry.device.switchState(XenbusState.Closed, true);
  }

  /**
   * A device found at start in a state other than Initialising, left by an
   * instance of this bus that went away mid-connection: brings it back to
   * where a fresh attach can begin, or returns false to leave it alone.
   */
  protected abstract recoverAtStart(device: XenbusDevice): Promise<boolean>;

  // ---- the bus's life -------------------------------------------------------------

  /** Adds a driver; devices of its class that are waiting are probed again. */
  register(driver: XenbusDriver): void {
    this.drivers.push(driver);
    if (this.rootWatcher) void this.busQueue.run(() => this.enumerate([driver.deviceClass]));
  }

  /** Starts watching the bus root; resolves once the devices present have been attached. */
  async start(): Promise<void> {
    await this.peers.start();
    const watcher = await this.ctx.xs.watch(this.root);
    this.rootWatcher = watcher;
    void this.follow(watcher, (event) => {
      if (!this.suspended) this.rootChanged(event.path);
    });
    await this.busQueue.call(() => this.enumerate([], true));
    await this.settled();
  }

  /** Resolves once every event seen so far has been handled. */
  async settled(): Promise<void> {
    for (;;) {
      await this.busQueue.drained();
      const busy = [...this.queues.values()].filter((queue) => !queue.idle);
      if (busy.length === 0 && this.busQueue.idle) return;
      await Promise.all(busy.map((queue) => queue.drained()));
    }
  }

  /**
   * Stops the bus without touching xenstore: the kernel is going away, and
   * what the other ends see of that is the toolstack's business. Drivers
   * release what they hold.
   */
  async stop(): Promise<void> {
    if (this.down) return;
    this.down = true;
    this.stopped = true;
    await this.rootWatcher?.close().catch(() => {});
    await this.peers.stop();
    await this.settled();
    await this.detachAll(false);
  }

  /** Detaches every device (publishing Closed if asked), then lets the drivers release what they share. */
  private async detachAll(publishClosed: boolean): Promise<void> {
    for (const entry of [...this.devices.values()]) {
      await this.queueOf(entry.key).call(async () => {
        entry.phase = 'detached';
        this.devices.delete(entry.key);
        await this.closeWatches(entry);
        await entry.handler?.detach();
        if (publishClosed) await entry.device.switchState(XenbusState.Closed);
      });
    }
    for (const driver of this.drivers) await driver.close?.();
  }

  /**
   * The kernel died under the bus: nothing more is done, not even by the
   * drivers; what they held stays as it was, for the next kernel to find.
   */
  abandon(): void {
    this.stopped = true;
    for (const entry of this.devices.values()) entry.phase = 'detached';
    this.devices.clear();
  }

  /** The attached devices, with both ends' states. */
  async status(): Promise<DeviceStatus[]> {
    const out: DeviceStatus[] = [];
    for (const { device, driver } of this.devices.values()) {
      const otherendState = await device.readOtherendState().catch(() => undefined);
      out.push({
        type: device.type,
        id: device.id,
        node: device.node,
        driver: driver.name,
        state: device.state,
        otherendPath: device.otherendPath,
        otherendId: device.otherendId,
        otherendState,
      });
    }
    return out.sort((a, b) => a.node.localeCompare(b.node));
  }

  /**
   * The domain shuts down (Linux's xenbus_dev_shutdown): each device
   * finishes and releases what it serves or uses, goes Closing, and is
   * given SHUTDOWN_WAIT_MS for its other end to follow before it is
   * detached and Closed. Devices go down together, as they are independent.
   */
  async shutdown(): Promise<void> {
    if (this.down) return;
    this.down = true;
    this.stopped = true;
    await this.rootWatcher?.close().catch(() => {});
    await this.peers.stop();
    await this.settled();
    await Promise.all(
      this.attachedDevices().map((entry) =>
        this.queueOf(entry.key).call(async () => {
          const { device } = entry;
          try {
            await entry.handler!.release?.();
          } catch (err) {
            this.ctx.log.warn(`${device.node}: releasing it for shutdown: ${(err as Error).message}`);
          }
          await device.switchState(XenbusState.Closing);
          if (device.otherendPath) {
            await this.waitForOtherend(device, [XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown], SHUTDOWN_WAIT_MS);
          }
        }),
      ),
    );
    await this.settled();
    await this.detachAll(true);
  }

  // ---- suspend and resume -------------------------------------------------------

  /**
   * Calls every attached driver's suspend, one device after another in the
   * order they attached. Until resume, the bus stops acting on xenstore
   * events (as Linux's xenwatch stands still while xenstore is suspended):
   * what changes meanwhile is looked at again on resume.
   */
  async suspend(): Promise<void> {
    this.suspended = true;
    await this.settled();
    for (const entry of this.attachedDevices()) {
      await this.queueOf(entry.key).call(() => entry.handler!.suspend?.());
    }
  }

  /**
   * After the domain was resumed, perhaps on another host: each device
   * starts over from Initialising and finds its other end again (it may be
   * another backend), then its driver resumes (xenbusb_resume); then the
   * bus looks again at everything that changed while it was suspended.
   */
  async resume(): Promise<void> {
    for (const entry of this.attachedDevices()) {
      await this.queueOf(entry.key).call(async () => {
        const { device } = entry;
        await entry.otherendWatch?.close().catch(() => {});
        entry.otherendWatch = undefined;
        await device.switchState(XenbusState.Initialising, true);
        const otherend = await this.getOtherendNode(device);
        if (!otherend || 'malformed' in otherend) throw new Error(`${device.node} names no usable other end after resume`);
        device.otherendId = otherend.id;
        device.otherendPath = otherend.path;
        entry.deliveredState = undefined;
        entry.otherendSeen = false;
        await entry.handler!.resume?.();
        this.peers.track(otherend.id);
        entry.otherendWatch = await this.ctx.xs.watch(`${otherend.path}/state`);
        this.followOtherend(entry, entry.otherendWatch);
      });
    }
    this.suspended = false;
    await this.busQueue.call(() => this.enumerate([]));
    for (const entry of this.attachedDevices()) {
      const queue = this.queueOf(entry.key);
      void queue.run(() => this.localEvent(entry, entry.device.node));
      void queue.run(() => this.otherendEvent(entry));
    }
    await this.settled();
  }

  private attachedDevices(): BusDevice[] {
    return [...this.devices.values()].filter((entry) => entry.phase === 'attached');
  }

  // ---- enumeration ----------------------------------------------------------------

  /** A change somewhere under the root: the device it belongs to is looked at, or a whole subtree. */
  private rootChanged(path: string): void {
    if (this.stopped || (path !== this.root && !path.startsWith(`${this.root}/`))) return;
    const parts = path === this.root ? [] : path.slice(this.root.length + 1).split('/');
    const depth = 1 + this.idComponents;
    if (parts.length < depth) {
      void this.busQueue.run(() => this.enumerate(parts));
      return;
    }
    const key = parts.slice(0, depth).join('/');
    // A key inside a device already attached is that device's business
    // (its own watch sees it); its removal is reported at its own node.
    if (parts.length > depth && this.devices.has(key)) return;
    void this.queueOf(key).run(() => this.check(key));
  }

  /** Lists the devices under `prefix` (class, then id components) and looks at each, known or new. */
  private async enumerate(prefix: string[], atStart = false): Promise<void> {
    const keys = new Set<string>();
    const walk = async (parts: string[]): Promise<void> => {
      if (parts.length === 1 + this.idComponents) {
        keys.add(parts.join('/'));
        return;
      }
      const path = [this.root, ...parts].join('/');
      for (const child of await this.ctx.xs.directory(path).catch(() => [] as string[])) await walk([...parts, child]);
    };
    await walk(prefix);
    const under = prefix.join('/');
    for (const key of this.devices.keys()) if (under === '' || key === under || key.startsWith(`${under}/`)) keys.add(key);
    for (const key of keys) {
      if (atStart) this.foundAtStart.add(key);
      void this.queueOf(key).run(() => this.check(key));
    }
  }

  /** Whether a device's node exists, and what to do about it. */
  private async check(key: string): Promise<void> {
    if (this.stopped) return;
    const node = `${this.root}/${key}`;
    const exists = (await readIfVisible(this.ctx.xs, node)) !== undefined;
    const entry = this.devices.get(key);
    if (entry) {
      if (!exists) await this.detach(entry, 'its directory was removed');
      return;
    }
    const atStart = this.foundAtStart.delete(key);
    if (exists) await this.add(key, node, atStart);
    else {
      this.refused.delete(key);
      this.interrupted.delete(key);
    }
  }

  // ---- attach ---------------------------------------------------------------------

  private async add(key: string, node: string, atStart: boolean): Promise<void> {
    const [type, ...rest] = key.split('/') as [string, ...string[]];
    const device = new XenbusDevice(this.ctx, type, rest.join('/'), node);
    device.state = await device.readState();
    const otherend = await this.getOtherendNode(device);
    if (!otherend) {
      this.ctx.log.debug(`${node}: no other end named yet`);
      return;
    }
    if ('malformed' in otherend) {
      // Reported once; the toolstack's next write is looked at afresh.
      if (this.refused.get(key) !== otherend.malformed) {
        this.refused.set(key, otherend.malformed);
        await device.error('EINVAL', otherend.malformed);
      }
      return;
    }
    this.refused.delete(key);
    // A toolstack that writes the nodes first and sets their permissions
    // after (xenstore-write, then xenstore-chmod) is not done until the
    // directory is ours to write; its chmod fires the watch again.
    if (!(await this.writable(node))) {
      this.ctx.log.debug(`${node}: not ours to write yet`);
      return;
    }
    device.otherendId = otherend.id;
    device.otherendPath = otherend.path;

    const resumeFrom = this.interrupted.get(key);
    if (device.state !== XenbusState.Initialising && device.state !== resumeFrom) {
      const recovered = atStart && (await this.recoverAtStart(device));
      if (!recovered) {
        // A device that is not new is on its way out (or was refused):
        // it is not picked up again until the toolstack resets it.
        this.ctx.log.debug(`${node} ignored in state ${stateName(device.state)}`);
        return;
      }
    }
    this.interrupted.delete(key);

    const driver = await this.probe(device);
    if (!driver) {
      // Another driver may serve this class in this domain (xenconsoled
      // the console, QEMU a qdisk, the kernel a vif): the device is not
      // ours to touch. A driver registered later finds it.
      this.ctx.log.debug(`${node}: no ${this.kind} driver here for class '${type}'; leaving it alone`);
      return;
    }

    const entry = new BusDevice(key, device, driver);
    this.devices.set(key, entry);
    try {
      entry.otherendWatch = await this.ctx.xs.watch(`${otherend.path}/state`);
      this.followOtherend(entry, entry.otherendWatch);
      entry.localWatch = await this.ctx.xs.watch(node);
      void this.follow(entry.localWatch, (event) => {
        if (!this.suspended) void this.queueOf(key).run(() => this.localEvent(entry, event.path));
      });
      entry.handler = await driver.attach(device);
      entry.phase = 'attached';
    } catch (err) {
      await this.attachFailed(entry, err);
      return;
    }
    await this.ctx.xs.rm(`${this.ctx.home}/error/${device.relativeNode}`).catch(() => {});
    await this.attached(entry);
    this.peers.track(device.otherendId);
    this.ctx.log.info(`${node} attached to ${driver.name} (other end ${otherend.path})`);
  }

  private async writable(node: string): Promise<boolean> {
    const perms = await this.ctx.xs.getPermissions(node).catch(() => undefined);
    if (!perms || perms.length === 0) return false;
    const { domid } = this.ctx;
    return perms[0]!.domid === domid || perms.some((p) => p.domid === domid && (p.access === 'write' || p.access === 'both'));
  }

  private async probe(device: XenbusDevice): Promise<XenbusDriver | undefined> {
    for (const driver of this.drivers) {
      if (driver.deviceClass !== device.type) continue;
      if (!driver.probe || (await driver.probe(device))) return driver;
    }
    return undefined;
  }

  /**
   * A driver that failed to attach leaves the reason in the error node and
   * the device Closed, so that neither the other end nor the toolstack waits
   * for it; the bus forgets the device, and does not pick it up again while
   * it stays Closed.
   */
  private async attachFailed(entry: BusDevice, err: unknown): Promise<void> {
    const { device, key } = entry;
    entry.phase = 'detached';
    this.devices.delete(key);
    await this.closeWatches(entry);
    if (isConnectionLoss(err)) {
      this.interrupted.set(key, device.state);
      this.ctx.log.warn(`${device.node}: attach cut short by the xenstore connection; trying again when it is back`);
      return;
    }
    if (!(await device.exists().catch(() => false))) {
      this.ctx.log.info(`${device.node} was removed while it attached`);
      return;
    }
    await device.error(err, `attaching ${entry.driver.name}`);
    await device.switchState(XenbusState.Closed).catch((closeErr: Error) => {
      this.ctx.log.error(`${device.node}: cannot publish Closed: ${closeErr.message}`);
    });
  }

  // ---- events of attached devices -------------------------------------------------

  private async otherendEvent(entry: BusDevice): Promise<void> {
    if (entry.phase !== 'attached') return;
    const state = await entry.device.readOtherendState();
    if (state === XenbusState.Unknown && !entry.otherendSeen) return; // not there yet
    entry.otherendSeen = true;
    if (state === entry.deliveredState) return;
    await this.guard(
      entry,
      `handling the other end's state ${stateName(state)}`,
      () => this.otherendChanged(entry, state),
      // A failure to act on a state the other end has already left (a
      // ring it published and took back as it closed) is that race, not
      // the device's fault: its newer state is handled next.
      async () => (await entry.device.readOtherendState()) !== state,
    );
    entry.deliveredState = state;
  }

  private async localEvent(entry: BusDevice, path: string): Promise<void> {
    if (entry.phase !== 'attached') return;
    const { device } = entry;
    const relative = path.slice(device.node.length);
    if (relative === '') {
      if (!(await device.exists())) await this.detach(entry, 'its directory was removed');
      return;
    }
    // Others write our state too (a toolstack unplugging sets Closing).
    if (relative === '/state') {
      const state = await device.readState();
      if (state !== XenbusState.Unknown) device.state = state;
    }
    await this.guard(entry, `handling a change of ${relative}`, () => this.localendChanged(entry, relative));
  }

  /**
   * Runs a driver method. A lost connection is passed on (the re-registered
   * watches bring the event back); any other failure is the device's, and
   * is reported as a fatal error, so that no device hangs half connected.
   */
  private async guard(entry: BusDevice, what: string, body: () => Promise<void>, overtaken?: () => Promise<boolean>): Promise<void> {
    try {
      await body();
    } catch (err) {
      if (isConnectionLoss(err) || entry.phase !== 'attached') throw err;
      if (overtaken && (await overtaken())) {
        this.ctx.log.info(`${entry.device.node}: ${what} failed, but the other end has moved on: ${(err as Error).message}`);
        return;
      }
      await entry.device.fatal(err, what);
    }
  }

  /**
   * The domain at the other end of some devices died without closing them
   * (it crashed, or was destroyed before the toolstack tore its devices
   * down): their drivers are told the other end is Closed, so that they
   * answer and release what they hold of it now. On Xen, a dead domain's
   * memory is freed only once nobody maps its pages any more.
   */
  private otherendDomainGone(domid: number): void {
    for (const entry of this.attachedDevices()) {
      if (entry.device.otherendId !== domid || entry.deliveredState === XenbusState.Closed) continue;
      void this.queueOf(entry.key).run(async () => {
        if (entry.phase !== 'attached') return;
        await this.guard(entry, `releasing the device of dead domain ${domid}`, () => this.otherendChanged(entry, XenbusState.Closed));
        entry.deliveredState = XenbusState.Closed;
      });
    }
  }

  // ---- detach ---------------------------------------------------------------------

  /** Detaches a device: its driver releases it, and the bus publishes that it is gone. */
  protected async detach(entry: BusDevice, reason: string): Promise<void> {
    if (entry.phase === 'detached') return;
    entry.phase = 'detached';
    this.devices.delete(entry.key);
    await this.closeWatches(entry);
    try {
      await entry.handler?.detach();
    } catch (err) {
      this.ctx.log.error(`${entry.device.node}: ${entry.driver.name} failed to detach: ${(err as Error).message}`);
    }
    try {
      await this.publishDetached(entry);
    } catch (err) {
      this.ctx.log.warn(`${entry.device.node}: cannot publish the detach: ${(err as Error).message}`);
    }
    this.ctx.log.info(`${entry.device.node} detached: ${reason}`);
  }

  private async closeWatches(entry: BusDevice): Promise<void> {
    const watches = [entry.otherendWatch, entry.localWatch];
    entry.otherendWatch = entry.localWatch = undefined;
    for (const watch of watches) await watch?.close().catch(() => {});
  }

  // ---- plumbing -------------------------------------------------------------------

  private queueOf(key: string): SerialQueue {
    let queue = this.queues.get(key);
    if (!queue) {
      // Queues of devices that come and go are dropped once idle.
      queue = new SerialQueue(
        (err) => this.taskFailed(`${this.root}/${key}`, err),
        () => {
          if (!this.devices.has(key)) this.queues.delete(key);
        },
      );
      this.queues.set(key, queue);
    }
    return queue;
  }

  /** Waits until the other end's state is one of `wanted`, for at most `timeoutMs`. */
  protected waitForOtherend(device: XenbusDevice, wanted: readonly number[], timeoutMs: number): Promise<number | undefined> {
    return waitForState(this.ctx.xs, `${device.otherendPath}/state`, wanted, timeoutMs);
  }

  private followOtherend(entry: BusDevice, watcher: Watcher): void {
    void this.follow(watcher, () => {
      if (!this.suspended) void this.queueOf(entry.key).run(() => this.otherendEvent(entry));
    });
  }

  private async follow(watcher: Watcher, onEvent: (event: WatchEvent) => void): Promise<void> {
    for await (const event of watcher) onEvent(event);
  }

  private taskFailed(where: string, err: unknown): void {
    if (isConnectionLoss(err)) {
      this.ctx.log.debug(`${where}: ${(err as Error).message}; the watches bring it back`);
      return;
    }
    this.ctx.log.error(`${where}: ${(err as Error)?.stack ?? String(err)}`);
  }
}
