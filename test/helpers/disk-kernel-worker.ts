/**
 * The real kernel role, plus what the block tests ask of a domain through
 * its own xenstore directory (`data/`):
 * - `data/crash` = `now`: the kernel throws an exception nobody catches, as
 *   a kernel bug would (only changes after the watch's first event count,
 *   so that a restarted kernel does not crash again at once);
 * - `data/disk-job` = JSON `{ id, kind: 'write' | 'verify', count, depth }`:
 *   writes `count` distinct 4 KiB blocks (block i at sector 8 i, filled
 *   from i) with `depth` in flight, or reads them back and compares; the
 *   acknowledged count goes to `data/disk-progress` as it grows (and a
 *   bitmap of the acknowledged blocks, base64, to `data/disk-acked`), and the
 *   outcome (JSON `{ id, acked, errors, mismatches, settledTwice }`) to
 *   `data/disk-result`. With `devid`, the job goes to that disk; else to
 *   the first;
 * - `data/stall-queries` = `now`: from then on the kernel never answers the
 *   supervisor's queries, as a kernel stuck in a driver would not.
 */
import type { BlockDevice } from '../../blkfront/disk.js';
import type { BlkfrontDriver } from '../../blkfront/driver.js';
import { startKernel, type KernelRoleConfig } from '../../host/machine/kernel.js';
import { runRole } from '../../shared/mesh/worker-runtime.js';
import { diskBlock as block } from './disk-jobs.js';

interface Job {
  id: string;
  kind: 'write' | 'verify';
  count: number;
  depth: number;
  devid?: number;
}


runRole<KernelRoleConfig>(async (ctx) => {
  const kernel = await startKernel(ctx);
  const xs = kernel.xenstore;
  const follow = async (path: string, onChange: (value: string | undefined) => void) => {
    const watcher = await xs.watch(path);
    void (async () => {
      let first = true;
      for await (const _event of watcher) {
        if (first) {
          first = false;
          continue;
        }
        onChange(await xs.tryRead(path));
      }
    })();
  };
  await follow('data/crash', (value) => {
    if (value === 'now') throw new Error('the test asked this kernel to crash');
  });
  let queriesStalled = false;
  await follow('data/stall-queries', (value) => {
    if (value === 'now') queriesStalled = true;
  });
  await follow('data/disk-job', (value) => {
    if (value) void runJob(JSON.parse(value) as Job);
  });

  const disk = (devid: number | undefined): BlockDevice => {
    const driver = kernel.drivers.front.get('vbd') as BlkfrontDriver | undefined;
    const frontend = driver && (devid === undefined ? [...driver.devices.values()][0] : driver.devices.get(String(devid)));
    if (!frontend) throw new Error('this domain has no disk');
    return frontend.disk;
  };

  async function runJob(job: Job): Promise<void> {
    const device = disk(job.devid);
    await device.whenConnected();
    let next = 0;
    let acked = 0;
    let errors = 0;
    let mismatches = 0;
    let settledTwice = 0;
    const settled = new Set<number>();
    let lastReport = 0;
    const report = async () => {
      const bitmap = Buffer.alloc(Math.ceil(job.count / 8));
      for (const i of settled) bitmap[i >> 3]! |= 1 << (i & 7);
      await xs.write('data/disk-acked', bitmap.toString('base64')).catch(() => {});
      await xs.write('data/disk-progress', String(acked)).catch(() => {});
    };
    await Promise.all(
      Array.from({ length: job.depth }, async () => {
        while (next < job.count) {
          const i = next++;
          try {
            if (job.kind === 'write') await device.write(i * 8, block(i));
            else if (!equal(await device.read(i * 8, 8), block(i))) mismatches++;
            if (settled.has(i)) settledTwice++;
            settled.add(i);
            acked++;
          } catch {
            errors++;
          }
          if (acked - lastReport >= 50) {
            lastReport = acked;
            void report();
          }
        }
      }),
    );
    await report();
    await xs.write('data/disk-result', JSON.stringify({ id: job.id, acked, errors, mismatches, settledTwice }));
  }

  return { ...kernel, query: (topic: string) => (queriesStalled ? new Promise<never>(() => {}) : kernel.query!(topic)) };
});

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
