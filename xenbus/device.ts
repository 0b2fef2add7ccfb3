import { constants } from 'node:os';
import { otherendErrno, XsError } from '../shared/errors.js';
import type { EventDispatcher } from '../shared/event-dispatcher.js';
import type { Logger } from '../shared/log.js';
import type { DomainInterface, GrantMapping, PlatformLink, SharedPages } from '../shared/platform.js';
import { isConnectionLoss, type XenStoreClient } from '../xenstore/client/client.js';
import type { DeferredRelease } from './deferred-release.js';
import { readIfVisible, readStateAt } from './read.js';
import { XenbusState, parseState, stateName } from './state.js';

/** What a bus and its devices need from the domain they run in. */
export interface BusContext {
  readonly xs: XenStoreClient;
  readonly domid: number;
  /** The domain's home, `/local/domain/<domid>`. */
  readonly home: string;
  /** The domain's memory and grant table. */
  readonly domain: DomainInterface;
  /** The worker's event channels, shared by every driver in it. */
  readonly events: EventDispatcher;
  /** How a driver's own workers (an I/O pool) reach the platform themselves. */
  readonly link: PlatformLink;
  readonly log: Logger;
  /** Grants the other ends still have mapped, ended once they let go. */
  readonly deferred: DeferredRelease;
}

/** Pages of our memory granted to the other end as a ring. */
export type GrantedRing = SharedPages;

/** errno values for the `error` nodes, which carry numbers as Linux and FreeBSD write them. */
function errnoNumber(err: string | number): number {
  if (typeof err === 'number') return err;
  return (constants.errno as Record<string, number>)[err] ?? constants.errno.EIO;
}


/**
 * One end of a split device as a driver sees it, with the client helpers
 * of FreeBSD's xenbus.c: switching state, reading and writing the device's
 * keys and the other end's, granting a ring, allocating the event channel,
 * and reporting errors.
 */
export class XenbusDevice {
  /** The state this end last wrote (or found). */
  state: number = XenbusState.Initialising;
  otherendId = -1;
  /** The other end's directory (absolute). */
  otherendPath = '';

  constructor(
    readonly ctx: BusContext,
    /** The device class: `vbd`, `echo`. */
    readonly type: string,
    /** The id under the bus: `51712`, or `<frontend-domid>/51712` on the back bus. */
    readonly id: string,
    /** This end's directory (absolute). */
    readonly node: string,
  ) {}

  get log(): Logger {
    return this.ctx.log;
  }

  /** This end's directory relative to the domain home, as error paths use it. */
  get relativeNode(): string {
    return this.node.startsWith(`${this.ctx.home}/`) ? this.node.slice(this.ctx.home.length + 1) : this.node;
  }

  // ---- state ------------------------------------------------------------

  /**
   * Writes this end's state (xenbus_switch_state): nothing if it is already
   * that (unless `force`), and nothing if the device's directory has gone:
   * a device being torn down must not be brought back by writing its state.
   */
  async switchState(state: number, force = false): Promise<void> {
    if (state === this.state && !force) return;
    const { xs } = this.ctx;
    try {
      const outcome = await xs.transaction(async (tx) => {
        const current = await xs.tryRead(`${this.node}/state`, { tx });
        if (current === undefined) return 'gone';
        // A device on its way out (a toolstack unplugging it set Closing)
        // goes nowhere but Closed: a driver racing the toolstack must not
        // bring it back to life. The change reaches the driver through the
        // bus's watch on this end.
        const now = parseState(current);
        if (!force && now === XenbusState.Closing && state < XenbusState.Closing) return now;
        await xs.write(`${this.node}/state`, String(state), { tx });
        return 'written';
      });
      if (outcome === 'gone') {
        this.log.debug(`${this.node} is gone: not writing state ${stateName(state)}`);
        return;
      }
      if (outcome !== 'written') {
        this.log.info(`${this.node} was set ${stateName(outcome)} meanwhile: not moving it to ${stateName(state)}`);
        this.state = outcome;
        return;
      }
      this.state = state;
    } catch (err) {
      // A lost connection is not the device's fault: the bus looks again
      // once it is back. Failing to write Closing leaves nothing to fall to.
      if (isConnectionLoss(err) || state === XenbusState.Closing) throw err;
      await this.fatal(err, `writing new state ${stateName(state)}`);
    }
  }

  async readState(): Promise<number> {
    return readStateAt(this.ctx.xs, `${this.node}/state`);
  }

  /** The other end's state; Unknown while it is not there (or not readable) yet. */
  async readOtherendState(): Promise<number> {
    return readStateAt(this.ctx.xs, `${this.otherendPath}/state`);
  }

  // ---- keys -------------------------------------------------------------

  /** One of this end's keys, or undefined. */
  read(key: string): Promise<string | undefined> {
    return readIfVisible(this.ctx.xs, `${this.node}/${key}`);
  }

  /** One of the other end's keys, or undefined if it is missing or not readable. */
  readOtherend(key: string): Promise<string | undefined> {
    return readIfVisible(this.ctx.xs, `${this.otherendPath}/${key}`);
  }

  /** An integer key of this end; `fallback` if absent, EINVAL if it is not an integer. */
  async readInt(key: string, fallback?: number): Promise<number> {
    return this.parseInt(`${this.node}/${key}`, await this.read(key), fallback);
  }

  async readOtherendInt(key: string, fallback?: number): Promise<number> {
    return this.parseInt(`${this.otherendPath}/${key}`, await this.readOtherend(key), fallback);
  }

  private parseInt(path: string, text: string | undefined, fallback: number | undefined): number {
    if (text === undefined) {
      if (fallback === undefined) throw new XsError('ENOENT', `${path} is missing`);
      return fallback;
    }
    if (!/^\s*[+-]?\d+\s*$/.test(text)) throw new XsError('EINVAL', `${path} is not an integer: '${text}'`);
    return Number(text);
  }

  /**
   * Writes keys of this end and removes others (stale keys of an earlier
   * connection), all in one transaction, unless the device's directory has
   * gone (then nothing, and false): writing a key would otherwise bring a
   * removed device's directory back.
   */
  async write(values: Record<string, string | number>, remove: readonly string[] = []): Promise<boolean> {
    return this.writeIfPresent(values, remove);
  }

  /** Whether this end's directory exists. */
  async exists(): Promise<boolean> {
    return (await readIfVisible(this.ctx.xs, this.node)) !== undefined;
  }

  private writeIfPresent(values: Record<string, string | number>, remove: readonly string[] = []): Promise<boolean> {
    const { xs } = this.ctx;
    return xs.transaction(async (tx) => {
      if ((await xs.tryRead(this.node, { tx })) === undefined) return false;
      for (const key of remove) await xs.rm(`${this.node}/${key}`, { tx }).catch(() => {});
      for (const [key, value] of Object.entries(values)) await xs.write(`${this.node}/${key}`, String(value), { tx });
      return true;
    });
  }

  // ---- rings and event channels -----------------------------------------------

  /** Takes `count` pages of our memory and grants them to the other end (xenbus_grant_ring). */
  grantRing(count: number, readonly = false): GrantedRing {
    return this.ctx.domain.grants.share(this.otherendId, count, readonly);
  }

  /**
   * Ends the grants of a ring and frees its pages (xenbus_teardown_ring).
   * Pages the other end still has mapped cannot be taken back yet: the
   * domain's deferred list ends and frees them once it lets go.
   */
  releaseRing(ring: GrantedRing): void {
    this.ctx.deferred.releaseShared(ring);
  }

  /**
   * Maps the ring pages the other end granted us, writable
   * (xenbus_map_ring_valloc). A failure is an XsError, as the keys that
   * named the pages were read from xenstore: ENOENT if the other end's
   * domain is gone (ESRCH), EINVAL for references it did not grant us.
   */
  mapRing(refs: readonly number[]): GrantMapping {
    try {
      return this.ctx.domain.grants.map(this.otherendId, refs, true);
    } catch (err) {
      if (err instanceof XsError) throw err;
      throw new XsError(otherendErrno(err), `mapping ring-ref ${refs.join(',')} of domain ${this.otherendId}: ${(err as Error).message}`);
    }
  }

  /** An unbound event channel for the other end to bind (xenbus_alloc_evtchn), with its handler. */
  allocEventChannel(handler: () => void): number {
    const port = this.ctx.events.channels.allocUnbound(this.otherendId);
    this.ctx.events.on(port, handler);
    return port;
  }

  /** Binds to the other end's event channel, with its handler. */
  bindEventChannel(remotePort: number, handler: () => void): number {
    const port = this.ctx.events.channels.bindInterdomain(this.otherendId, remotePort);
    this.ctx.events.on(port, handler);
    return port;
  }

  freeEventChannel(port: number): void {
    this.ctx.events.off(port);
    try {
      this.ctx.events.channels.unbind(port);
    } catch (err) {
      this.log.debug(`unbinding port ${port}: ${(err as Error).message}`);
    }
  }

  notify(port: number): void {
    this.ctx.events.channels.notify(port);
  }

  // ---- errors -----------------------------------------------------------

  /**
   * Reports an error where the toolstack looks for it (xenbus_dev_error):
   * `error/<device path>/error` in our home, holding the errno and the
   * message. `err` is what went wrong: an exception, or an errno name or
   * number.
   */
  async error(err: unknown, message: string): Promise<void> {
    const errno =
      typeof err === 'string' || typeof err === 'number'
        ? err
        : err instanceof XsError
          ? err.errno
          : ((err as NodeJS.ErrnoException | undefined)?.code ?? 'EIO');
    const text = `${errnoNumber(errno)} ${message}${err instanceof Error ? `: ${err.message}` : ''}`;
    this.log.error(`${this.node}: ${text}`);
    try {
      await this.ctx.xs.write(`${this.ctx.home}/error/${this.relativeNode}/error`, text);
    } catch (writeErr) {
      this.log.error(`${this.node}: cannot write the error node: ${(writeErr as Error).message}`);
    }
  }

  /** An error the device cannot go on after (xenbus_dev_fatal): reported, and the device moves to Closing. */
  async fatal(err: unknown, message: string): Promise<void> {
    await this.error(err, message);
    await this.switchState(XenbusState.Closing);
  }
}
