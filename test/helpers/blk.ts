import type { DomainInterface } from '../../shared/platform.js';
import { randomFillSync } from 'node:crypto';
import { diskDevice, type DeviceSpec, type DiskSpec } from '../../host/toolstack/devices.js';
import { BlkbackDriver, type BlkbackOptions } from '../../blkback/driver.js';
import type { BlockDevice } from '../../blkfront/disk.js';
import { BlkfrontDriver } from '../../blkfront/driver.js';
import type { FrontendLimits } from '../../blkfront/negotiate.js';
import type { BackBus } from '../../xenbus/back-bus.js';
import { XenbusState } from '../../xenbus/state.js';
import { startBusTestbed, type BusTestbed, type TestDomain } from './xenbus.js';

/** A RAM disk of 16 MiB: big enough for every test's data, cheap to make. */
export const TEST_DISK = `memory:${16 * 1024 * 1024}`;

export interface BlkTestbed {
  readonly bed: BusTestbed;
  readonly driver: TestDomain;
  readonly guest: TestDomain;
  readonly front: BlkfrontDriver;
  readonly back: BlkbackDriver;
  /** The driver domain's back bus (suspend and resume it to close and reopen every backend). */
  readonly backBus: BackBus;
  /** A disk from the driver domain to the guest, as libxl describes it. */
  disk(vdev: string, target?: string, options?: Partial<DiskSpec>): DeviceSpec;
  /** Plugs a disk and waits until both ends are Connected; its BlockDevice. */
  connect(spec: DeviceSpec): Promise<BlockDevice>;
  /** Starts the guest's front bus, when the testbed was asked to leave it for later. */
  startFrontBus(): Promise<void>;
}

/**
 * A driver domain serving disks to a guest, both kernels in this process,
 * with block drivers of the given limits; closed (I/O workers included)
 * when the test ends. With `frontBusLater` the guest's front bus waits for
 * startFrontBus(), so that a backend can be found in InitWait.
 */
export async function startBlkTestbed(
  t: { teardown(fn: () => unknown): void },
  options: { front?: Partial<FrontendLimits>; back?: BlkbackOptions; frames?: number; frontBusLater?: boolean; guestPages?: number } = {},
): Promise<BlkTestbed> {
  const bed = await startBusTestbed({ frames: options.frames ?? 16384 });
  const front = new BlkfrontDriver(options.front);
  const back = new BlkbackDriver(options.back);
  t.teardown(async () => {
    await bed.close();
    await back.close();
  });
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest', options.guestPages);
  const startFrontBus = async () => void (await guest.frontBus(front));
  const [, backBus] = await Promise.all([options.frontBusLater ? undefined : startFrontBus(), driver.backBus(back)]);
  return {
    bed,
    driver,
    guest,
    front,
    back,
    backBus,
    disk: (vdev, target = TEST_DISK, more = {}) => diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev, target, ...more }),
    async connect(spec) {
      await bed.plug(spec);
      await bed.waitStates(spec, XenbusState.Connected, XenbusState.Connected, 10_000);
      const disk = front.devices.get(String(spec.devid))!.disk;
      await disk.whenConnected();
      return disk;
    },
    startFrontBus,
  };
}

/** `bytes` of random data. */
export function randomBytes(bytes: number): Uint8Array {
  return randomFillSync(new Uint8Array(bytes));
}

/** Pages the domain could still allocate: allocates them all, counts, and gives them back. */
export function freePages(domain: DomainInterface): number {
  const taken: number[] = [];
  for (;;) {
    try {
      taken.push(...domain.memory.allocPages(1));
    } catch {
      break;
    }
  }
  domain.memory.freePages(taken);
  return taken.length;
}
