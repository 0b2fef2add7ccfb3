/**
 * blkfront's data path: buffers in the domain's own memory go to the
 * backend as they are. A read lands straight in the caller's buffer and a
 * write leaves from it: the pages granted are the buffer's own, and with
 * persistent grants the same references come back request after request;
 * without them each request's grants end with its response. Buffers that
 * are not page-aligned memory of the domain still work, through bounce
 * pages, mixed freely with the others. A 1 MiB operation is one ring
 * request of 256 segments. Ids come from a small free list and are reused
 * under load. Freeing a buffer an operation still uses is refused. Pages
 * of the domain the device did not allocate go as they are without
 * persistent grants, granted for one request; with them, through the
 * persistently granted pages (the backend keeps what it is given mapped).
 *
 * Bad inputs tried here: a buffer freed while a read into it waits, freed
 * twice, a buffer the device never allocated, a read into a freed buffer,
 * a buffer of the domain's memory that starts mid-page.
 */
import t from 'tap';
import { BLKIF_MAX_SEGMENTS_PER_REQUEST, BlkifOp, SECTOR_SIZE, decodeRequest } from '../shared/blkif.js';
import { PAGE_SIZE, type DomainInterface, type GrantTable } from '../shared/platform.js';
import { BufferInUseError, BufferNotAllocatedError } from '../blkfront/disk.js';
import type { BlkfrontQueue } from '../blkfront/queue.js';
import { freePages, randomBytes, startBlkTestbed, type BlkTestbed } from './helpers/blk.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Every grant the guest makes and ends from now on, by pfn and reference. */
function watchGrants(domain: DomainInterface): { granted: { pfn: number; gref: number; readonly: boolean }[]; ended: number[]; reset(): void } {
  const grants = domain.grants as GrantTable;
  const log = { granted: [] as { pfn: number; gref: number; readonly: boolean }[], ended: [] as number[], reset: () => void ((log.granted = []), (log.ended = [])) };
  const grantAccess = grants.grantAccess.bind(grants);
  const endAccess = grants.endAccess.bind(grants);
  grants.grantAccess = (remote, pfn, readonly) => {
    const gref = grantAccess(remote, pfn, readonly);
    log.granted.push({ pfn, gref, readonly });
    return gref;
  };
  grants.endAccess = (gref) => {
    const ended = endAccess(gref);
    if (ended) log.ended.push(gref);
    return ended;
  };
  return log;
}

/** The pfns a buffer of the domain's memory spans. */
function pfnsOf(domain: DomainInterface, buffer: Uint8Array): number[] {
  const first = domain.memory.addressOf(buffer) / PAGE_SIZE;
  return Array.from({ length: Math.ceil(buffer.length / PAGE_SIZE) }, (_, i) => first + i);
}


function queuesOf(blk: BlkTestbed, devid: number): readonly BlkfrontQueue[] {
  return blk.front.devices.get(String(devid))!.queues;
}

/** Records every request put on a queue's ring (of the default x86_64 ABI), as the backend will read it. */
function watchRequests(queue: BlkfrontQueue): ReturnType<typeof decodeRequest>[] {
  const seen: ReturnType<typeof decodeRequest>[] = [];
  const ring = queue.ring;
  const claim = ring.claimRequest.bind(ring);
  const entry = new Uint8Array(ring.sring.entryBytes);
  ring.claimRequest = () => {
    ring.sring.readEntry(ring.reqProdPvt, entry);
    seen.push(decodeRequest('x86_64', entry));
    return claim();
  };
  return seen;
}

for (const persistent of [true, false]) {
  t.test(`reads land in the caller's buffer and writes leave from it, granted as they are (persistent grants ${persistent ? 'on' : 'off'})`, async (t) => {
    const blk = await startBlkTestbed(t, { front: { maxQueues: 1, persistent }, back: { persistent } });
    const spec = blk.disk('xvda');
    const disk = await blk.connect(spec);
    const domain = blk.guest.ctx.domain;
    const grants = watchGrants(domain);

    // 11 pages: the most a direct request carries, so that only data pages are granted.
    const bytes = BLKIF_MAX_SEGMENTS_PER_REQUEST * PAGE_SIZE;
    const source = disk.allocateBuffer(bytes);
    t.equal(domain.memory.addressOf(source) % PAGE_SIZE, 0, 'allocateBuffer gives page-aligned memory of the domain');
    const data = randomBytes(bytes);
    source.set(data);
    await disk.write(64, source);
    const pages = pfnsOf(domain, source);
    t.same(grants.granted.map((g) => g.pfn), pages, "the write granted the buffer's own pages, and nothing else (no bounce page)");
    if (!persistent) t.ok(grants.granted.every((g) => g.readonly), 'read-only, as the backend only reads them');

    grants.reset();
    const target = disk.allocateBuffer(bytes);
    const read = disk.readInto(64, target);
    await read;
    t.ok(Buffer.compare(target, data) === 0, 'the data landed in the buffer');
    t.same(grants.granted.map((g) => g.pfn), pfnsOf(domain, target), "the read granted the target's own pages, and nothing else");
    if (!persistent) t.ok(grants.granted.every((g) => !g.readonly), 'writable, as the backend writes them');

    grants.reset();
    await disk.readInto(64, target);
    await disk.write(64, source);
    if (persistent) {
      t.same(grants.granted, [], 'with persistent grants the same references are offered again: no new grant');
      t.same(grants.ended, [], 'and none is ended while connected');
    } else {
      t.equal(grants.granted.length, 2 * BLKIF_MAX_SEGMENTS_PER_REQUEST, 'without them each request grants its pages again');
      t.same(grants.ended.sort(), grants.granted.map((g) => g.gref).sort(), "and every grant ended with its request's response");
    }

    for (const buffer of [source, target]) disk.freeBuffer(buffer);
  });
}

for (const persistent of [false, true]) {
  t.test(`pages of the domain the device did not allocate, persistent grants ${persistent ? 'on' : 'off'}`, async (t) => {
    const blk = await startBlkTestbed(t, { front: { maxQueues: 1, persistent }, back: { persistent } });
    const disk = await blk.connect(blk.disk('xvda'));
    const domain = blk.guest.ctx.domain;
    // A kernel's own page, as a bio's would be.
    const [pfn] = domain.memory.allocPages(1);
    t.teardown(() => domain.memory.freePages([pfn!]));
    const page = domain.memory.page(pfn!);
    const data = randomBytes(PAGE_SIZE);
    page.set(data);
    const grants = watchGrants(domain);
    await disk.write(8, page);
    page.fill(0);
    await disk.readInto(8, page);
    t.ok(Buffer.compare(page, data) === 0, 'written from the page and read back into it');
    if (persistent) {
      // The backend keeps what it is given mapped: a grant of this page could never be ended in time.
      t.notOk(grants.granted.some((g) => g.pfn === pfn), 'the page itself was never granted: its data went through the persistent pages, as Linux copies');
    } else {
      t.same(grants.granted.map((g) => g.pfn), [pfn, pfn], 'the page itself was granted, for each request (no bounce page)');
      t.same(grants.ended.sort(), grants.granted.map((g) => g.gref).sort(), 'and each grant ended with its response');
    }
  });
}

t.test('a 1 MiB operation is one ring request of 256 segments, on the buffer\'s own pages', async (t) => {
  const blk = await startBlkTestbed(t, { front: { maxQueues: 1 } });
  const spec = blk.disk('xvda');
  const disk = await blk.connect(spec);
  const domain = blk.guest.ctx.domain;
  // Half the guest's memory, in a row: taken before anything else fragments it.
  const big = disk.allocateBuffer(MiB);
  const data = randomBytes(MiB);
  big.set(data);
  const queue = queuesOf(blk, spec.devid)[0]!;
  t.equal(queue.segmentsPerRequest, 256, 'the connection carries 256 segments per request');
  const requests = watchRequests(queue);
  const grants = watchGrants(domain);
  await disk.write(2048, big);
  big.fill(0);
  await disk.readInto(2048, big);
  t.ok(Buffer.compare(big, data) === 0, '1 MiB reads back');
  t.same(
    requests.map((r) => r.kind === 'indirect' && { op: r.indirectOp, segments: r.nrSegments }),
    [
      { op: BlkifOp.WRITE, segments: 256 },
      { op: BlkifOp.READ, segments: 256 },
    ],
    'each 1 MiB operation is one indirect request of 256 segments',
  );
  const pages = new Set(pfnsOf(domain, big));
  const others = grants.granted.filter((g) => !pages.has(g.pfn));
  t.equal(grants.granted.length - others.length, 256, "the buffer's 256 pages were granted, once (persistent grants)");
  t.ok(others.length <= 1, `besides them, only an indirect page (${others.length})`);
  disk.freeBuffer(big);
});

t.test('a barrier write from a device buffer: its lead and its barrier both leave from the buffer', async (t) => {
  const blk = await startBlkTestbed(t, { front: { maxQueues: 1 } });
  const spec = blk.disk('xvda');
  const disk = await blk.connect(spec);
  const domain = blk.guest.ctx.domain;
  const requests = watchRequests(queuesOf(blk, spec.devid)[0]!);
  const grants = watchGrants(domain);
  // 100 sectors: more than a barrier carries (88), not a whole number of pages.
  const buffer = disk.allocateBuffer(100 * SECTOR_SIZE);
  const data = randomBytes(buffer.length);
  buffer.set(data);
  await disk.write(40, buffer, { barrier: true });
  t.same(
    requests.map((r) => [r.kind === 'indirect' ? r.indirectOp : r.operation, r.kind === 'rw' ? r.segments.reduce((n, g) => n + g.lastSect - g.firstSect + 1, 0) : -1]),
    [
      [BlkifOp.WRITE, 16],
      [BlkifOp.WRITE_BARRIER, 84],
    ],
    'two pages as a plain write, then the barrier of the rest, cut on a page boundary',
  );
  t.same(grants.granted.map((g) => g.pfn).sort((a, b) => a - b), pfnsOf(domain, buffer), "both from the buffer's own pages");
  t.ok(Buffer.compare(await disk.read(40, 100), data) === 0, 'and it reads back');
  disk.freeBuffer(buffer);
});

t.test('aligned and unaligned buffers mixed, each read back through the other kinds', async (t) => {
  const blk = await startBlkTestbed(t, { front: { maxQueues: 2 } });
  const disk = await blk.connect(blk.disk('xvda'));
  const domain = blk.guest.ctx.domain;
  const grants = watchGrants(domain);
  const bytes = 96 * KiB;
  const device = disk.allocateBuffer(bytes);
  const spare = disk.allocateBuffer(bytes + SECTOR_SIZE);
  // Memory of the domain, but starting mid-page: it goes through bounce pages.
  const midPage = spare.subarray(SECTOR_SIZE);
  const plain = new Uint8Array(bytes);
  const buffers = { device, midPage, plain };
  const contents = Object.fromEntries(Object.keys(buffers).map((name) => [name, randomBytes(bytes)]));
  for (const [name, buffer] of Object.entries(buffers)) buffer.set(contents[name]!);
  const at = { device: 0, midPage: 1000, plain: 2000 } as const;
  await Promise.all(Object.entries(buffers).map(([name, buffer]) => disk.write(at[name as keyof typeof at], buffer)));
  t.notOk(grants.granted.some((g) => pfnsOf(domain, spare).includes(g.pfn)), 'a buffer that starts mid-page is never granted as it is');
  t.ok(pfnsOf(domain, device).every((pfn) => grants.granted.some((g) => g.pfn === pfn)), 'the aligned one is');

  // Each extent read into each kind of buffer, all at once.
  const reads = Object.keys(buffers).flatMap((from) =>
    Object.keys(buffers).map((into) => {
      const target = into === 'device' ? disk.allocateBuffer(bytes) : into === 'midPage' ? disk.allocateBuffer(bytes + SECTOR_SIZE).subarray(SECTOR_SIZE) : new Uint8Array(bytes);
      return disk.readInto(at[from as keyof typeof at], target).then(() => ({ from, into, same: Buffer.compare(target, contents[from]!) === 0 }));
    }),
  );
  const results = await Promise.all(reads);
  t.same(
    results.filter((r) => !r.same),
    [],
    `every extent reads back into every kind of buffer (${results.length} reads)`,
  );
  t.ok(Buffer.compare(await disk.read(at.midPage, bytes / SECTOR_SIZE), contents.midPage!) === 0, 'and through read(), which copies');
});

t.test('ids come from a free list: reused under load, never more than the ring holds', async (t) => {
  const blk = await startBlkTestbed(t, { front: { maxQueues: 1, maxRingPageOrder: 0 } });
  const spec = blk.disk('xvda');
  const disk = await blk.connect(spec);
  const queue = queuesOf(blk, spec.devid)[0]!;
  const requests = watchRequests(queue);
  const size = queue.ring.size;
  const count = 3 * size;
  const blocks = Array.from({ length: count }, (_, i) => {
    const block = disk.allocateBuffer(PAGE_SIZE);
    block.fill(i & 0xff);
    block[0] = i >> 8;
    return block;
  });
  await Promise.all(blocks.map((block, i) => disk.write(i * 8, block)));
  const ids = requests.map((r) => Number(r.id));
  t.equal(requests.length, count, `${count} requests went through a ring of ${size}`);
  t.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < size), 'every id is a slot of the ring');
  t.equal(new Set(ids).size, size, 'each slot reused many times');
  const back = await Promise.all(blocks.map((_, i) => disk.read(i * 8, 8)));
  t.equal(back.filter((b, i) => b[0] !== i >> 8 || b[1] !== (i & 0xff)).length, 0, 'and each request got its own answer');
  t.equal(queue.inFlight, 0, 'every id is free again');
});

t.test('a buffer an operation still uses cannot be freed; a freed one cannot be used', async (t) => {
  const blk = await startBlkTestbed(t, { front: { maxQueues: 1 } });
  const spec = blk.disk('xvda');
  const disk = await blk.connect(spec);
  const domain = blk.guest.ctx.domain;
  const before = freePages(domain);
  const buffer = disk.allocateBuffer(8 * PAGE_SIZE);
  t.equal(freePages(domain), before - 8, 'the buffer took 8 of the domain\'s pages');
  // Held before the rings, as a suspended domain holds its requests.
  disk.pause();
  const read = disk.readInto(0, buffer);
  t.throws(() => disk.freeBuffer(buffer), BufferInUseError, 'freeing it while the read waits is refused');
  t.throws(() => disk.freeBuffer(buffer), /in use by 1 outstanding operation/, 'and says why');
  disk.unpause();
  await read;
  disk.freeBuffer(buffer);
  t.throws(() => disk.freeBuffer(buffer), BufferNotAllocatedError, 'freed twice: refused');
  await t.rejects(disk.readInto(0, buffer), BufferNotAllocatedError, 'a read into a freed buffer is refused');
  await t.rejects(disk.write(0, buffer), /freed/, 'and so is a write from one');
  t.throws(() => disk.freeBuffer(new Uint8Array(PAGE_SIZE)), BufferNotAllocatedError, 'a buffer the device never allocated is not its to free');
  const other = disk.allocateBuffer(2 * PAGE_SIZE);
  t.throws(() => disk.freeBuffer(other.subarray(PAGE_SIZE)), BufferNotAllocatedError, 'nor is part of one');
  disk.freeBuffer(other);
  t.equal(freePages(domain), before - 8, "freed, the pages of the buffer the backend never saw are the domain's again");
  // The backend keeps persistently granted pages mapped while it is connected: those come back when it lets go.
  await blk.bed.unplug(spec);
  // The deferred list ends what the backend had mapped once it lets go, and frees the pages.
  const deadline = Date.now() + 5000;
  while (freePages(domain) < before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  // At least as many as before: the unplugged disk's rings came back too.
  t.ok(freePages(domain) >= before, `and once the backend let go, every page of both is the domain's again (${freePages(domain)} free, ${before} before)`);
  t.equal(blk.guest.ctx.deferred.pending, 0, 'and no grant is left deferred');
});

t.test("an unplugged disk ends the grants it kept of callers' pages", async (t) => {
  const blk = await startBlkTestbed(t, { front: { maxQueues: 1 } });
  const spec = blk.disk('xvda');
  const disk = await blk.connect(spec);
  const grants = watchGrants(blk.guest.ctx.domain);
  const buffer = disk.allocateBuffer(16 * PAGE_SIZE);
  await disk.write(0, buffer);
  await disk.readInto(0, buffer);
  const kept = grants.granted.map((g) => g.gref);
  t.ok(kept.length >= 16, 'the pages were granted (and kept: persistent grants)');
  await blk.bed.unplug(spec);
  t.ok(kept.every((gref) => grants.ended.includes(gref)), 'every grant made was ended when the connection went');
  disk.freeBuffer(buffer);
});
