import type { Logger } from '../shared/log.js';
import type { Platform } from '../shared/platform.js';
import type { XenStoreClient } from '../xenstore/client/client.js';
import type { Watcher } from '../xenstore/client/watcher.js';
import type { XenbusBus } from '../xenbus/bus.js';
import type { XenbusDriver } from '../xenbus/driver.js';
import { stateName } from '../xenbus/state.js';
import {
  CONTROL_FEATURES,
  SHUTDOWN_NODE,
  SHUTDOWN_REQUESTS,
  SYSRQ_KEYS,
  SYSRQ_NODE,
  isShutdownRequest,
  isSysrqKey,
  type ShutdownRequest,
} from './protocol.js';

/** What the control driver needs of the kernel it runs in. */
export interface ControlledKernel {
  readonly domid: number;
  /** The domain's own xenstore connection (relative paths are under its home). */
  readonly xs: XenStoreClient;
  readonly log: Logger;
  readonly buses: readonly XenbusBus[];
  readonly drivers: readonly XenbusDriver[];
  /** SCHEDOP_shutdown, and waiting in it for a resume. */
  readonly platform: Pick<Platform, 'shutdownDomain' | 'whenResumed'>;
}

/**
 * The control driver (FreeBSD's dev/xen/control, Linux's manage.c), in
 * guests and driver domains alike. It publishes what the domain can be
 * asked, watches `control/shutdown` and `control/sysrq`, acknowledges a
 * request by clearing the node in a transaction, and acts on it:
 *
 * - poweroff and halt, reboot: every device finishes what is in flight,
 *   makes it durable and closes (frontends and backends alike), then the
 *   domain shuts down with that reason and the toolstack takes over;
 * - crash: the domain shuts down at once, as a crash would;
 * - suspend: the buses suspend (frontends stop issuing and keep what is in
 *   flight; backends answer, flush and let go of their images), the domain
 *   shuts down to suspend, and when the toolstack resumes it every device
 *   reconnects, perhaps to another backend, and replays what was in flight.
 *
 * Requests are handled one at a time, in the order they come.
 */
export class ControlDriver {
  private readonly watchers: Watcher[] = [];
  private work: Promise<void> = Promise.resolve();
  /** The domain is going down: nothing more is acted on. */
  private down = false;

  constructor(private readonly kernel: ControlledKernel) {}

  async start(): Promise<void> {
    const { xs } = this.kernel;
    for (const feature of CONTROL_FEATURES) await xs.write(`control/${feature}`, '1');
    for (const [node, handle] of [
      [SHUTDOWN_NODE, () => this.shutdownRequested()],
      [SYSRQ_NODE, () => this.sysrqRequested()],
    ] as const) {
      const watcher = await xs.watch(node);
      this.watchers.push(watcher);
      void this.follow(watcher, handle);
    }
  }

  async stop(): Promise<void> {
    this.down = true;
    await Promise.all(this.watchers.map((watcher) => watcher.close().catch(() => {})));
  }

  private async follow(watcher: Watcher, handle: () => Promise<void>): Promise<void> {
    for await (const _event of watcher) {
      this.work = this.work.then(handle).catch((err: Error) => this.kernel.log.error(`control: ${err.message}`));
    }
  }

  private async shutdownRequested(): Promise<void> {
    if (this.down) return;
    const { xs, log } = this.kernel;
    const value = await xs.transaction(async (tx) => {
      const found = await xs.tryRead(SHUTDOWN_NODE, { tx });
      // Only requests this domain handles are acknowledged (manage.c).
      if (found && isShutdownRequest(found)) await xs.write(SHUTDOWN_NODE, '', { tx });
      return found;
    });
    if (!value) return;
    if (!isShutdownRequest(value)) {
      log.warn(`control: ignoring shutdown request '${value}'`);
      return;
    }
    log.info(`control: ${value} requested`);
    await this.act(value);
  }

  private async act(request: ShutdownRequest): Promise<void> {
    const { platform, domid, log } = this.kernel;
    switch (request) {
      case 'crash':
        this.down = true;
        platform.shutdownDomain(domid, 'crash');
        return;
      case 'suspend':
        await this.suspend();
        return;
      default:
        this.down = true;
        await this.quiesce();
        log.info(`control: devices closed; shutting down (${SHUTDOWN_REQUESTS[request]})`);
        platform.shutdownDomain(domid, SHUTDOWN_REQUESTS[request]);
    }
  }

  /** Every bus shuts its devices down, frontends and backends at once. */
  private async quiesce(): Promise<void> {
    await Promise.all(this.kernel.buses.map((bus) => bus.shutdown()));
  }

  private async suspend(): Promise<void> {
    const { buses, platform, domid, log } = this.kernel;
    for (const bus of buses) await bus.suspend();
    log.info('control: devices suspended; the domain suspends');
    platform.shutdownDomain(domid, 'suspend');
    if (!(await platform.whenResumed(domid))) {
      this.down = true;
      log.info('control: destroyed while suspended');
      return;
    }
    log.info('control: resumed; reconnecting devices');
    for (const bus of buses) await bus.resume();
    log.info('control: devices reconnected');
  }

  private async sysrqRequested(): Promise<void> {
    if (this.down) return;
    const { xs, log } = this.kernel;
    const value = await xs.transaction(async (tx) => {
      const found = await xs.tryRead(SYSRQ_NODE, { tx });
      if (found) await xs.write(SYSRQ_NODE, '', { tx });
      return found;
    });
    if (!value) return;
    // manage.c reads one character; the rest of the value is ignored.
    const key = value[0]!;
    if (!isSysrqKey(key)) {
      log.warn(`control: SysRq '${key}' is not handled here`);
      return;
    }
    log.info(`control: SysRq '${key}': ${SYSRQ_KEYS[key]}`);
    const { platform, domid, buses, drivers } = this.kernel;
    switch (key) {
      case 'b':
        this.down = true;
        platform.shutdownDomain(domid, 'reboot');
        return;
      case 'o':
        this.down = true;
        platform.shutdownDomain(domid, 'poweroff');
        return;
      case 'c':
        this.down = true;
        platform.shutdownDomain(domid, 'crash');
        return;
      case 's':
        await Promise.all(drivers.map((driver) => driver.sync?.()));
        log.info('control: SysRq sync done');
        return;
      case 't':
        for (const bus of buses) {
          for (const device of await bus.status()) {
            log.info(
              `control: ${bus.kind} ${device.node} ${stateName(device.state)}, other end ${device.otherendPath || '-'} ` +
                `${device.otherendState === undefined ? '?' : stateName(device.otherendState)}`,
            );
          }
        }
        return;
      case 'h':
        log.info(`control: SysRq keys: ${Object.entries(SYSRQ_KEYS).map(([k, what]) => `${k} ${what}`).join('; ')}`);
        return;
    }
  }
}
