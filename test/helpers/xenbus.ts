import { connectXenstore, type KernelConnection } from '../../host/machine/kernel.js';
import { devicePaths, type DeviceSpec, type DevicePaths, type UnplugOptions, type UnplugResult } from '../../host/toolstack/devices.js';
import type { StartInfo } from '../../host/toolstack/domain-builder.js';
import { Toolstack } from '../../host/toolstack/toolstack.js';
import type { EmbeddedEventChannels } from '../../shared/embedded/evtchn.js';
import { createLogger } from '../../shared/log.js';
import type { XenStoreClient } from '../../xenstore/client/client.js';
import { BackBus } from '../../xenbus/back-bus.js';
import type { XenbusBus } from '../../xenbus/bus.js';
import { DeferredRelease } from '../../xenbus/deferred-release.js';
import type { BusContext } from '../../xenbus/device.js';
import type { XenbusDriver } from '../../xenbus/driver.js';
import { EchoBackDriver, type EchoBackOptions } from '../../echo/back.js';
import { EchoFrontDriver, type EchoFrontOptions } from '../../echo/front.js';
import { FrontBus } from '../../xenbus/front-bus.js';
import { readStateAt } from '../../xenbus/read.js';
import { stateName } from '../../xenbus/state.js';
import { startDaemon, type RunningDaemon, type TestDaemonOptions } from './daemon.js';

/** Memory of a test domain: 2 MiB, room for many multi-page rings. */
const BUS_TEST_DOMAIN_PAGES = 512;

/** A domain whose kernel runs in this process: its xenstore ring and its buses. */
export interface TestDomain {
  readonly start: StartInfo;
  readonly domid: number;
  readonly ctx: BusContext;
  readonly kernel: KernelConnection;
  /** Starts a back bus with these drivers. */
  backBus(...drivers: XenbusDriver[]): Promise<BackBus>;
  /** Starts a front bus with these drivers. */
  frontBus(...drivers: XenbusDriver[]): Promise<FrontBus>;
  /** Stops its buses and closes its xenstore connection and event channels. */
  halt(): Promise<void>;
  /**
   * The kernel dies: its buses stop without a word to xenstore, and what it
   * had bound stays bound (as after a worker that died), for the kernel
   * that follows.
   */
  crash(): Promise<void>;
}

export interface BusTestbed {
  readonly env: RunningDaemon;
  /** dom0's toolstack connection, over the socket (a new one after restartXenstored()). */
  readonly dom0: XenStoreClient;
  /** Replaces xenstored with one that takes over its state, under the running buses. */
  restartXenstored(): Promise<void>;
  readonly toolstack: Toolstack;
  /** Creates a domain (of BUS_TEST_DOMAIN_PAGES unless told) through the toolstack and connects its kernel (in this process). */
  domain(name: string, pages?: number): Promise<TestDomain>;
  /** A domain's kernel again after the previous one died (a restarted worker). */
  restartKernel(domain: TestDomain): Promise<TestDomain>;
  plug(spec: DeviceSpec): Promise<DevicePaths>;
  unplug(spec: DeviceSpec, options?: UnplugOptions): Promise<UnplugResult>;
  /** The state node of both ends of a device, by name. */
  states(spec: DeviceSpec): Promise<{ front: string; back: string }>;
  /** Waits until both ends of a device read the given states. */
  waitStates(spec: DeviceSpec, front: number, back: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** An echo device between two domains. */
export function echoSpec(frontendDomid: number, backendDomid: number, devid: number): DeviceSpec {
  return { kind: 'echo', frontendDomid, backendDomid, devid };
}

/** Echo drivers with options, for tests that vary the negotiation. */
export function echoDrivers(front: EchoFrontOptions = {}, back: EchoBackOptions = {}): { front: EchoFrontDriver; back: EchoBackDriver } {
  return { front: new EchoFrontDriver(front), back: new EchoBackDriver(back) };
}

/**
 * A xenstored with an embedded machine behind it, dom0's toolstack on the
 * socket, and domains whose kernels (their xenstore rings and buses) run in
 * this process, so that a test can drive every step of a connection.
 */
export async function startBusTestbed(options: TestDaemonOptions = {}): Promise<BusTestbed> {
  const env = await startDaemon(options);
  let dom0 = await env.client();
  const toolstack = new Toolstack(env.platform, () => dom0);
  const domains: TestDomain[] = [];

  const connect = async (start: StartInfo): Promise<TestDomain> => {
    const kernel = await connectXenstore(env.platform, start);
    const log = createLogger(`${start.name}`);
    const ctx: BusContext = {
      xs: kernel.xs,
      domid: start.domid,
      home: `/local/domain/${start.domid}`,
      domain: kernel.domain,
      events: kernel.events,
      link: env.platform.link,
      log,
      deferred: new DeferredRelease(kernel.domain.grants, kernel.domain.memory, log),
    };
    const buses: XenbusBus[] = [];
    const startBus = async <B extends XenbusBus>(bus: B, drivers: XenbusDriver[]): Promise<B> => {
      for (const driver of drivers) bus.register(driver);
      buses.push(bus);
      await bus.start();
      return bus;
    };
    const domain: TestDomain = {
      start,
      domid: start.domid,
      ctx,
      kernel,
      backBus: (...drivers) => startBus(new BackBus(ctx), drivers),
      frontBus: (...drivers) => startBus(new FrontBus(ctx), drivers),
      async halt() {
        for (const bus of buses.splice(0)) await bus.stop().catch(() => {});
        ctx.deferred.stop();
        kernel.xs.close();
        kernel.events.channels.close();
      },
      async crash() {
        for (const bus of buses.splice(0)) bus.abandon();
        ctx.deferred.stop();
        kernel.xs.close();
        (kernel.events.channels as EmbeddedEventChannels).abandon();
      },
    };
    domains.push(domain);
    return domain;
  };

  const testbed: BusTestbed = {
    env,
    get dom0() {
      return dom0;
    },
    toolstack,
    async restartXenstored() {
      await env.restart();
      dom0 = await env.client();
    },
    async domain(name, pages = BUS_TEST_DOMAIN_PAGES) {
      return connect(await toolstack.createDomain({ name, pages }));
    },
    async restartKernel(domain) {
      await domain.crash();
      return connect(domain.start);
    },
    plug: (spec) => toolstack.plugDevice(spec),
    unplug: (spec, options) => toolstack.unplugDevice(spec, options),
    async states(spec) {
      const paths = devicePaths(spec);
      return {
        front: stateName(await readStateAt(dom0, `${paths.frontend}/state`)),
        back: stateName(await readStateAt(dom0, `${paths.backend}/state`)),
      };
    },
    async waitStates(spec, front, back, timeoutMs = 5000) {
      const paths = devicePaths(spec);
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const [f, b] = [await readStateAt(dom0, `${paths.frontend}/state`), await readStateAt(dom0, `${paths.backend}/state`)];
        if (f === front && b === back) return;
        if (Date.now() > deadline) {
          throw new Error(`${paths.frontend}: waited for ${stateName(front)}/${stateName(back)}, have ${stateName(f)}/${stateName(b)}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    },
    async close() {
      for (const domain of domains) await domain.halt().catch(() => {});
      await env.close();
    },
  };
  return testbed;
}

export interface EchoTestbed {
  readonly bed: BusTestbed;
  readonly driver: TestDomain;
  readonly guest: TestDomain;
  readonly front: EchoFrontDriver;
  readonly back: EchoBackDriver;
  /** The echo device `devid` from the driver domain to the guest. */
  spec(devid: number): DeviceSpec;
}

/**
 * The usual setting of a bus test: a testbed closed when the test ends, a
 * driver domain and a guest, echo drivers for each, and (unless `buses` is
 * false) both buses started.
 */
export async function startEchoTestbed(
  t: { teardown(fn: () => unknown): void },
  options: { front?: EchoFrontOptions; back?: EchoBackOptions; buses?: boolean } = {},
): Promise<EchoTestbed> {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const { front, back } = echoDrivers(options.front, options.back);
  if (options.buses !== false) await Promise.all([guest.frontBus(front), driver.backBus(back)]);
  return { bed, driver, guest, front, back, spec: (devid) => echoSpec(guest.domid, driver.domid, devid) };
}
