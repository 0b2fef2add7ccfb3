import { ControlDriver } from '../../control/driver.js';
import { attachPlatform, type PlatformShared } from '../../shared/attach.js';
import { EventDispatcher } from '../../shared/event-dispatcher.js';
import type { RoleContext, RoleInstance } from '../../shared/mesh/worker-runtime.js';
import { BLOCK_STATS_TOPIC } from '../../shared/mesh/topics.js';
import type { VbdStatsReport } from '../../shared/vbd-stats.js';
import type { DomainInterface, Platform } from '../../shared/platform.js';
import { XsServerFeature } from '../../shared/xs-wire.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import { RingClientTransport } from '../../xenstore/client/ring-transport.js';
import type { XenbusBus } from '../../xenbus/bus.js';
import { DeferredRelease } from '../../xenbus/deferred-release.js';
import type { BusContext } from '../../xenbus/device.js';
import type { XenbusDriver } from '../../xenbus/driver.js';
import { stateName } from '../../xenbus/state.js';
import type { StartInfo } from '../toolstack/domain-builder.js';
import { backendDriver, frontendDriver } from './drivers.js';

/** The bus drivers a kernel loads, by name (see drivers.ts). */
export interface KernelDrivers {
  /** Frontend drivers, on a front bus (a guest). */
  frontDrivers?: string[];
  /** Backend drivers, on a back bus (a driver domain). */
  backDrivers?: string[];
}

export interface KernelRoleConfig extends KernelDrivers {
  start: StartInfo;
}


export interface Kernel extends RoleInstance {
  readonly xenstore: XenStoreClient;
  readonly buses: readonly XenbusBus[];
  readonly control: ControlDriver;
  /** The drivers loaded, by name as the configuration gave them (`vbd`, `echo`), front and back. */
  readonly drivers: { readonly front: ReadonlyMap<string, XenbusDriver>; readonly back: ReadonlyMap<string, XenbusDriver> };
}

/**
 * How often a kernel looks at its devices' states for the supervisor. Each
 * look reads every device's other end from xenstore: once a second, a host
 * of a thousand guests and their driver domains spent a good part of a core
 * on reads nobody was waiting for, and each guest booted slower than the last.
 */
const STATS_INTERVAL_MS = 5000;

/** What a backend driver that counts its block devices offers (blkback's BlkbackDriver). */
interface BlockStatsSource {
  blockStats(): VbdStatsReport[];
}

/**
 * The answer to the supervisor's query about `topic`: a driver domain's
 * block devices' counters (none for a kernel without blkback).
 */
export function answerKernelQuery(backDrivers: ReadonlyMap<string, XenbusDriver>, topic: string): unknown {
  if (topic !== BLOCK_STATS_TOPIC) throw new Error(`no query '${topic}' (known: ${BLOCK_STATS_TOPIC})`);
  const vbd = backDrivers.get('vbd') as Partial<BlockStatsSource> | undefined;
  return vbd?.blockStats?.() ?? [];
}

/** A domain kernel's link to the hypervisor and to xenstore. */
export interface KernelConnection {
  readonly domain: DomainInterface;
  readonly events: EventDispatcher;
  readonly xs: XenStoreClient;
}

/**
 * What a domain's kernel does of xenstore at boot: it opens the ring it was
 * told of in its start info and starts the connection over (a restarted
 * kernel finds the ring as its predecessor left it).
 */
export async function connectXenstore(platform: Platform, start: StartInfo): Promise<KernelConnection> {
  const domain = platform.domain(start.domid);
  const events = new EventDispatcher(domain.openEventChannels());
  const transport = RingClientTransport.open(domain, events, start.storePfn, start.storePort);
  const xs = new XenStoreClient(transport);
  if (transport.ring.serverFeatures & XsServerFeature.RECONNECTION) await xs.reconnect();
  return { domain, events, xs };
}

/** A kernel learns who it is and runs its buses on top of its xenstore connection. */
export async function startKernel(ctx: RoleContext<KernelRoleConfig>): Promise<Kernel> {
  const { start } = ctx.config;
  const { link } = ctx.shared as PlatformShared;
  const platform = await attachPlatform(link);
  await platform.whenRunning(start.domid);
  const { xs, events, domain } = await connectXenstore(platform, start);
  const name = await xs.readString('name');
  const home = await xs.getDomainPath(start.domid);
  ctx.log.info(`${name} (domain ${start.domid}) connected to xenstore; home ${home}`);
  xs.onReconnected(() => ctx.log.info('the xenstore connection was started over; watches are set again'));

  const deferred = new DeferredRelease(domain.grants, domain.memory, ctx.log);
  const bus: BusContext = { xs, domid: start.domid, home, domain, events, link, log: ctx.log, deferred };
  const buses: XenbusBus[] = [];
  const backDrivers = ctx.config.backDrivers ?? [];
  const frontDrivers = ctx.config.frontDrivers ?? [];
  // Each bus's module is loaded only by a kernel that has one, as its drivers are (drivers.ts).
  const drivers = {
    front: new Map(await Promise.all(frontDrivers.map(async (name) => [name, await frontendDriver(name)] as const))),
    back: new Map(await Promise.all(backDrivers.map(async (name) => [name, await backendDriver(name)] as const))),
  };
  const loaded: [XenbusBus, ReadonlyMap<string, XenbusDriver>, string[]][] = [];
  if (backDrivers.length > 0) loaded.push([new (await import('../../xenbus/back-bus.js')).BackBus(bus), drivers.back, backDrivers]);
  if (frontDrivers.length > 0) loaded.push([new (await import('../../xenbus/front-bus.js')).FrontBus(bus), drivers.front, frontDrivers]);
  for (const [b, mine, names] of loaded) {
    buses.push(b);
    for (const driver of mine.values()) b.register(driver);
    await b.start();
    ctx.log.info(`${b.kind} bus on ${b.root} with ${names.join(', ')}`);
  }

  // Every domain, guest or driver domain, is told to shut down or suspend the same way.
  const control = new ControlDriver({
    domid: start.domid,
    xs,
    log: ctx.log,
    buses,
    drivers: [...drivers.front.values(), ...drivers.back.values()],
    platform,
  });
  await control.start();

  const devices = async (): Promise<Record<string, string>> => {
    const out: Record<string, string> = {};
    for (const b of buses) {
      for (const d of await b.status()) {
        out[`${b.kind} ${d.type}/${d.id}`] = `${stateName(d.state)} (other end ${d.otherendState === undefined ? '?' : stateName(d.otherendState)})`;
      }
    }
    return out;
  };
  let lastDevices: Record<string, string> = {};
  let lastSent = '';
  const timer = setInterval(() => {
    void devices().then((d) => {
      lastDevices = d;
      // The supervisor keeps the last stats it was sent: only a change is news.
      const text = JSON.stringify(d);
      if (text === lastSent) return;
      lastSent = text;
      ctx.stats({ devices: Object.keys(d).length, ...d });
    }, () => {});
  }, STATS_INTERVAL_MS);
  timer.unref();

  return {
    xenstore: xs,
    buses,
    drivers,
    control,
    info: { name, home },
    health: () => ({ xenstore: xs.isClosed ? 'closed' : 'connected', ...lastDevices }),
    query: (topic) => answerKernelQuery(drivers.back, topic),
    async stop() {
      clearInterval(timer);
      await control.stop();
      for (const b of buses) await b.stop().catch((err: Error) => ctx.log.warn(`stopping the ${b.kind} bus: ${err.message}`));
      deferred.stop();
      xs.close();
      events.channels.close();
    },
  };
}
