/**
 * What the block fuzzer's batches share: a driver domain running the real
 * blkback (I/O workers and all, reaching pages by grant copy for small
 * requests and by mapping for large ones, as `xenmesh backend` does by
 * default), a hostile guest whose disks are connected by hand, and a
 * well-behaved guest with blkfront.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkbackDriver } from '../../blkback/driver.js';
import { BlkfrontDriver } from '../../blkfront/driver.js';
import { startBusTestbed, type BusTestbed, type TestDomain } from '../helpers/xenbus.js';

/** Machine memory for the testbed: 64 MiB, for three domains and their rings. */
const TESTBED_FRAMES = 16384;

/** How long anything the backend owes may take on a loaded machine. */
export const RESPONSE_TIMEOUT_MS = 10_000;

export interface Testbed {
  readonly bed: BusTestbed;
  readonly back: BlkbackDriver;
  readonly front: BlkfrontDriver;
  readonly driver: TestDomain;
  readonly hostile: TestDomain;
  readonly good: TestDomain;
  /** Where the batches' images go. */
  readonly workdir: string;
  close(): Promise<void>;
}

export async function openTestbed(): Promise<Testbed> {
  const bed = await startBusTestbed({ frames: TESTBED_FRAMES });
  const back = new BlkbackDriver({ grantAccess: 'auto' });
  const front = new BlkfrontDriver();
  const workdir = await mkdtemp(join(tmpdir(), 'xenmesh-blk-fuzz-'));
  const close = async () => {
    await bed.close();
    await back.close();
    await rm(workdir, { recursive: true, force: true });
  };
  try {
    const driver = await bed.domain('driver');
    const hostile = await bed.domain('hostile');
    const good = await bed.domain('good');
    await driver.backBus(back);
    await good.frontBus(front);
    return { bed, back, front, driver, hostile, good, workdir, close };
  } catch (err) {
    await close();
    throw err;
  }
}
