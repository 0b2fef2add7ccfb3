/**
 * `npm run bench:xen-grants`, on a real Xen host (dom0 or a driver domain):
 * what it costs a process to reach granted pages by mapping them
 * (xengnttab_map_domain_grant_refs, reading them in place, xengnttab_unmap)
 * against copying them into a buffer of its own through the hypervisor
 * (xengnttab_grant_copy), for the sizes a block request carries. These are
 * the two ways `xenmesh backend --grant-access` offers.
 *
 * The pages are the process's own, shared with its own domain through
 * gntalloc, so that no other domain is needed: the hypervisor checks and
 * maps them as it would a guest's. Rounds are interleaved with the order
 * rotated; medians are printed with their range, and the ratio copy/map.
 * `npm run test:xen` runs it inside the VM and reports its lines.
 */
import { XenStoreClient } from '../xenstore/client/client.js';
import { XenGrantTable } from '../shared/xen/platform.js';
import { PAGE_SIZE } from '../shared/platform.js';

/** Pages per operation: one 4 KiB request, Linux blkfront's 11 segments, 32 indirect segments, 1 MiB. */
const SIZES = [1, 11, 32, 256];
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 5);
/** How long each measurement runs. */
const MEASURE_MS = Number(process.env['BENCH_MS'] ?? 1000);

type Mode = 'map' | 'copy';

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Microseconds per operation of moving `pages` granted pages into our buffer, by `mode`. */
function measure(grants: XenGrantTable, domid: number, refs: readonly number[], buffer: Uint8Array, mode: Mode): number {
  const ops = refs.map((gref, i) => ({ source: { domid, gref, offset: 0 }, dest: { bytes: buffer, offset: i * PAGE_SIZE }, length: PAGE_SIZE }));
  let count = 0;
  let sink = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(MEASURE_MS) * 1_000_000n;
  while (process.hrtime.bigint() < deadline) {
    if (mode === 'copy') {
      grants.copy(ops);
      sink += buffer[0]!;
    } else {
      const mapping = grants.map(domid, refs, false);
      // Touch every page, as a write to disk from them would.
      for (const page of mapping.pages) sink += page[PAGE_SIZE - 1]!;
      mapping.unmap();
    }
    count++;
  }
  const elapsedUs = Number(process.hrtime.bigint() - start) / 1000;
  if (sink < 0) throw new Error('unreachable');
  return elapsedUs / count;
}

async function main(): Promise<void> {
  const xs = await XenStoreClient.open();
  const domid = Number(await xs.readString('domid'));
  xs.close();
  const grants = new XenGrantTable(domid);
  const largest = Math.max(...SIZES);
  const shared = grants.share(domid, largest, true);
  shared.pages.forEach((page, i) => page.fill(i & 0xff));
  const buffer = new Uint8Array(largest * PAGE_SIZE);
  const results = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    const modes: Mode[] = round % 2 === 0 ? ['map', 'copy'] : ['copy', 'map'];
    for (const pages of SIZES) {
      for (const mode of modes) {
        const key = `${mode}:${pages}`;
        const us = measure(grants, domid, shared.grefs.slice(0, pages), buffer, mode);
        results.set(key, [...(results.get(key) ?? []), us]);
      }
    }
  }
  grants.unshare(shared);
  const fmt = (values: number[]) => `${median(values).toFixed(1)} us (${Math.min(...values).toFixed(1)}-${Math.max(...values).toFixed(1)})`;
  console.log(`grant access from domain ${domid}: ${ROUNDS} interleaved rounds of ${MEASURE_MS} ms; per operation, median (range)`);
  for (const pages of SIZES) {
    const map = results.get(`map:${pages}`)!;
    const copy = results.get(`copy:${pages}`)!;
    const ratios = map.map((m, i) => copy[i]! / m);
    console.log(
      `pages=${pages} map+unmap=${fmt(map)} copy=${fmt(copy)} copy/map=${median(ratios).toFixed(2)} (${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)})`,
    );
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:xen-grants: ${(err as Error).message}`);
    process.exit(1);
  },
);
