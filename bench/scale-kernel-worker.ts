/**
 * A guest's kernel for `npm run bench:scale`: the real kernel role, which
 * once its disk connects writes one block, reads it back, and reports in
 * its `data/scale-check` what it saw (`ok` or why not) and its worker's
 * heap, as JSON.
 */
import type { BlkfrontDriver } from '../blkfront/driver.js';
import { startKernel, type KernelRoleConfig } from '../host/machine/kernel.js';
import { runRole } from '../shared/mesh/worker-runtime.js';
import { CHECK_NODE, type ScaleCheck } from './scale-check.js';

const BLOCK_BYTES = 4096;
const SECTOR = 8;

runRole<KernelRoleConfig>(async (ctx) => {
  const kernel = await startKernel(ctx);
  const xs = kernel.xenstore;
  const driver = kernel.drivers.front.get('vbd') as BlkfrontDriver | undefined;
  // A driver domain runs the same kernel, with nothing to check.
  if (!driver) return kernel;
  void (async () => {
    let check: ScaleCheck;
    try {
      const frontend = await firstDevice(driver);
      await frontend.disk.whenConnected();
      const block = new Uint8Array(BLOCK_BYTES).fill(ctx.domid & 0xff);
      await frontend.disk.write(SECTOR, block);
      const back = await frontend.disk.read(SECTOR, BLOCK_BYTES / 512);
      const ok = Buffer.compare(Buffer.from(back), Buffer.from(block)) === 0;
      check = { ok, why: ok ? undefined : 'the block read back differs from the one written', heapUsed: process.memoryUsage().heapUsed };
    } catch (err) {
      check = { ok: false, why: (err as Error).message, heapUsed: process.memoryUsage().heapUsed };
    }
    await xs.write(CHECK_NODE, JSON.stringify(check)).catch(() => {});
  })();
  return kernel;
});

/** The guest's disk, once the bus has found it. */
async function firstDevice(driver: BlkfrontDriver) {
  for (;;) {
    const frontend = [...driver.devices.values()][0];
    if (frontend) return frontend;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
