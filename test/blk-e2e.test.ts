/**
 * The whole block stack on real backing stores: random data written
 * through blkfront with checksums, read back, and compared with the image
 * file itself; O_DIRECT when the toolstack says it is safe; discard
 * punching holes; a read-only disk; a block device (a loop device over an
 * image); and the store opened at connect and closed when the frontend
 * goes.
 *
 * Bad inputs tried here (the frontend refuses them before they reach the
 * backend): a write to a read-only disk, a read past the end, a write that
 * is not a whole number of sectors.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, ftruncateSync, readFileSync, readlinkSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SECTOR_SIZE } from '../shared/blkif.js';
import { XenbusState } from '../xenbus/state.js';
import { run } from './helpers/daemon.js';
import { freePages, randomBytes, startBlkTestbed } from './helpers/blk.js';

const MiB = 1024 * 1024;

/** A sparse image of `bytes` in a temporary directory (on disk, not tmpfs), removed when the test ends. */
function image(t: { teardown(fn: () => unknown): void }, bytes: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'disk.img');
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return path;
}

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** Whether this process holds `path` open (the store is open). */
function holdsOpen(path: string): boolean {
  return readdirSync('/proc/self/fd').some((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });
}

for (const grantAccess of ['map', 'copy', 'auto'] as const) t.test(`random data through blkfront, read back and found in the image file (pages reached by grant ${grantAccess})`, async (t) => {
  const bytes = 32 * MiB;
  const path = image(t, bytes);
  const blk = await startBlkTestbed(t, { back: { grantAccess } });
  const disk = await blk.connect(blk.disk('xvda', path));
  t.equal(disk.info!.sectors, bytes / SECTOR_SIZE, 'the disk is the size of the image');
  const model = new Uint8Array(bytes);

  // Extents that do not overlap, written all at once: sizes from one sector
  // to far more than one request carries (indirect requests, several pieces).
  const extents: { sector: number; data: Uint8Array; sum: string }[] = [];
  let sector = 3;
  for (const sectors of [1, 7, 8, 9, 88, 89, 256, 257, 600, 2048, 1, 33]) {
    const data = randomBytes(sectors * SECTOR_SIZE);
    extents.push({ sector, data, sum: sha(data) });
    sector += sectors + 5;
  }
  await Promise.all(extents.map((e) => disk.write(e.sector, e.data)));
  for (const e of extents) model.set(e.data, e.sector * SECTOR_SIZE);
  // Then overlapping ones, one after another: the last write wins.
  for (const [at, sectors] of [[0, 16], [10, 300], [305, 1]] as const) {
    const data = randomBytes(sectors * SECTOR_SIZE);
    await disk.write(at, data);
    model.set(data, at * SECTOR_SIZE);
  }
  await disk.flush();

  for (const e of extents) {
    const back = await disk.read(e.sector, e.data.length / SECTOR_SIZE);
    t.equal(sha(back), sha(model.subarray(e.sector * SECTOR_SIZE, e.sector * SECTOR_SIZE + e.data.length)), `extent at ${e.sector} reads back`);
  }
  t.equal(sha(readFileSync(path)), sha(model), 'the image file holds exactly what was written, and nothing else');
});

for (const grantAccess of ['map', 'copy'] as const) t.test(`direct-io-safe: the store is opened with O_DIRECT where the file system allows it (grant ${grantAccess})`, async (t) => {
  const path = image(t, 8 * MiB);
  const blk = await startBlkTestbed(t, { back: { grantAccess } });
  const spec = blk.disk('xvda', path, { directIoSafe: true });
  const disk = await blk.connect(spec);
  const backend = blk.back.devices.get(`${blk.guest.domid}/${spec.devid}`)!;
  t.ok(backend.store!.direct, `${path} was opened O_DIRECT`);
  const data = randomBytes(1 * MiB);
  await disk.write(2048, data);
  await disk.flush();
  t.same(await disk.read(2048, data.length / SECTOR_SIZE), data);
  t.equal(sha(readFileSync(path).subarray(2048 * SECTOR_SIZE, 2048 * SECTOR_SIZE + data.length)), sha(data), 'and the file holds it');
});

t.test('discard punches a hole: the range reads as zeros and its blocks are freed', async (t) => {
  const path = image(t, 8 * MiB);
  const blk = await startBlkTestbed(t);
  const disk = await blk.connect(blk.disk('xvda', path));
  t.ok(disk.info!.discard, 'the file-backed disk offers discard');
  await disk.write(0, randomBytes(4 * MiB));
  await disk.flush();
  const before = statSync(path).blocks;
  await disk.discard(2048, 4096);
  await disk.flush();
  t.same(await disk.read(2048, 8), new Uint8Array(8 * SECTOR_SIZE), 'the discarded range reads as zeros');
  t.ok(statSync(path).blocks < before, `blocks freed (${before} → ${statSync(path).blocks})`);
  t.equal(statSync(path).size, 8 * MiB, 'the image keeps its size');
});

t.test('a read-only disk: reads work, writes and discards are refused', async (t) => {
  const path = image(t, 4 * MiB);
  const blk = await startBlkTestbed(t);
  const disk = await blk.connect(blk.disk('xvda', path, { readOnly: true }));
  t.ok(disk.info!.readOnly, 'the frontend knows it is read-only');
  t.same(await disk.read(0, 8), new Uint8Array(8 * SECTOR_SIZE));
  await t.rejects(disk.write(0, randomBytes(SECTOR_SIZE)), /read-only/, 'a write is refused');
  await t.rejects(disk.discard(0, 8), /read-only/, 'a discard is refused');
  await t.rejects(disk.read(disk.info!.sectors - 1, 2), /past the end/, 'a read past the end is refused');
  await t.rejects(disk.write(0, new Uint8Array(100)), /whole number of sectors/, 'a partial sector is refused');
});

t.test('a block device: a loop device over an image', async (t) => {
  const path = image(t, 16 * MiB);
  const attached = await run('losetup', ['--find', '--show', path]);
  t.equal(attached.code, 0, `losetup attaches the image (${attached.stderr.trim()})`);
  const device = attached.stdout.trim();
  t.teardown(() => run('losetup', ['-d', device]));
  const blk = await startBlkTestbed(t);
  const spec = blk.disk('xvda', device);
  const disk = await blk.connect(spec);
  t.equal(disk.info!.sectors, (16 * MiB) / SECTOR_SIZE, `${device} is the size of its image`);
  const data = randomBytes(2 * MiB);
  await disk.write(100, data);
  await disk.flush();
  t.same(await disk.read(100, data.length / SECTOR_SIZE), data, 'data written through the block device reads back');
  if (disk.info!.discard) {
    await disk.discard(0, 2048);
    t.same(await disk.read(100, 8), new Uint8Array(8 * SECTOR_SIZE), 'BLKDISCARD zeroes what a loop device discards');
  }
  t.equal(sha(readFileSync(path).subarray(2048 * SECTOR_SIZE, 100 * SECTOR_SIZE + data.length)), sha(data.subarray((2048 - 100) * SECTOR_SIZE)), 'and its image holds the data');
});

t.test('the store is opened at connect and closed when the frontend goes', async (t) => {
  const path = image(t, 4 * MiB);
  const blk = await startBlkTestbed(t);
  const spec = blk.disk('xvda', path);
  const disk = await blk.connect(spec);
  t.ok(holdsOpen(path), 'open while connected');
  await disk.write(0, randomBytes(SECTOR_SIZE));
  const frontend = blk.front.devices.get(String(spec.devid))!;
  await blk.bed.unplug(spec);
  t.notOk(holdsOpen(path), 'closed once the device is unplugged');
  void frontend;

  // Plugged, but with no frontend to connect: the backend waits in
  // InitWait without opening the store.
  const lonely = blk.disk('xvdb', path);
  await blk.guest.halt();
  await blk.bed.plug(lonely);
  await blk.bed.waitStates(lonely, XenbusState.Initialising, XenbusState.InitWait);
  t.notOk(holdsOpen(path), 'not opened before the frontend connects');
});


t.test("an unplugged disk gives the guest back every page its frontend took", async (t) => {
  const blk = await startBlkTestbed(t);
  const { domain } = blk.guest.kernel;
  const before = freePages(domain);
  for (const vdev of ['xvda', 'xvdb', 'xvdc']) {
    const spec = blk.disk(vdev);
    const disk = await blk.connect(spec);
    // Enough at once for indirect requests and many data pages.
    await Promise.all([disk.write(0, randomBytes(256 * SECTOR_SIZE)), disk.read(512, 64)]);
    await blk.bed.unplug(spec);
  }
  const after = freePages(domain);
  t.equal(after, before, `after three disks came and went, the guest has as many free pages as before (${after} of ${before})`);
});
