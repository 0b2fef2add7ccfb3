/**
 * The toolstack's side of a disk's image, in process: which access a disk
 * gets (read-write, read-only and said so when the image cannot be
 * written, refused when read-write was insisted on), with the image
 * refused by a stand-in opener as a mode of 0444 refuses a user who is not
 * root; the refusal of a disk whose image cannot be served before anything
 * is written to xenstore; and waiting for a disk that blkback gave up on,
 * which ends with the error node's reason instead of a timeout.
 */
import t from 'tap';
import { closeSync, constants, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ImageOpener } from '../blkback/image.js';
import { waitForDevice } from '../host/toolstack/device-wait.js';
import { devicePaths, plugDevice, type DeviceSpec } from '../host/toolstack/devices.js';
import { checkDiskImages, chooseDiskAccess, DiskRefused } from '../host/toolstack/disk-check.js';
import { startBlkTestbed } from './helpers/blk.js';

const MiB = 1024 * 1024;

const dir = mkdtempSync(join(tmpdir(), 'xenmesh-host-disk-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string, bytes: number): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return path;
}

/** Opens as a user who may read the image and not write it (mode 0444, not root). */
const readOnlyOpener: ImageOpener = async (path, flags) => {
  if ((flags & (constants.O_WRONLY | constants.O_RDWR)) !== 0) {
    throw Object.assign(new Error(`EACCES: permission denied, open '${path}'`), { code: 'EACCES' });
  }
  return open(path, flags);
};

t.test('the access a disk gets', async (t) => {
  const path = image('guest.img', 4 * MiB);
  t.same(await chooseDiskAccess(path, 'auto'), { readOnly: false }, 'auto, a writable image: read-write');
  t.same(await chooseDiskAccess(path, 'ro'), { readOnly: true }, 'ro: read-only, with nothing to say');
  t.same(
    await chooseDiskAccess(path, 'auto', readOnlyOpener),
    { readOnly: true, notice: `${path} is not writable (EACCES: permission denied); serving it read-only` },
    'auto, an image that cannot be written: read-only, and a notice that says why',
  );
  t.same(await chooseDiskAccess(path, 'ro', readOnlyOpener), { readOnly: true }, 'ro, an image that cannot be written: read-only');
  await t.rejects(
    chooseDiskAccess(path, 'rw', readOnlyOpener),
    new DiskRefused(`${path} is not writable (EACCES: permission denied), and the disk is read-write`),
    'rw, an image that cannot be written: refused, saying so',
  );
  for (const access of ['auto', 'ro', 'rw'] as const) {
    await t.rejects(chooseDiskAccess(join(dir, 'nothing', 'here.img'), access), new DiskRefused(`${join(dir, 'nothing', 'here.img')} does not exist`), `${access}: a missing image is refused`);
  }
});

t.test('disks whose image cannot be served are refused by the toolstack, and nothing is written', async (t) => {
  const blk = await startBlkTestbed(t);
  writeFileSync(join(dir, 'empty.img'), '');
  const good = blk.disk('xvda', image('good.img', 4 * MiB));
  const cases: [string, DeviceSpec, string][] = [
    ['a missing image', blk.disk('xvdb', join(dir, 'missing.img')), `disk xvdb: ${join(dir, 'missing.img')} does not exist`],
    ['an empty image', blk.disk('xvdc', join(dir, 'empty.img')), `disk xvdc: ${join(dir, 'empty.img')} is empty (a disk needs at least one 512-byte sector)`],
    ['a relative path', blk.disk('xvdd', 'guest.img'), "disk xvdd: 'raw:guest.img' is not an absolute path"],
  ];
  for (const [what, spec, line] of cases) {
    await t.rejects(blk.bed.plug(spec), new DiskRefused(line), `${what}: refused in one line`);
    t.equal(await blk.bed.dom0.tryRead(`${devicePaths(spec).backend}/state`), undefined, `${what}: no backend was written`);
    t.equal(await blk.bed.dom0.tryRead(`${devicePaths(spec).frontend}/state`), undefined, `${what}: nor a frontend`);
  }
  await t.rejects(checkDiskImages([good, cases[0]![1]]), { name: 'DiskRefused', message: /^disk xvdb: / }, 'among several disks, the bad one is named');
  await checkDiskImages([good, blk.disk('xvde'), { kind: 'echo', frontendDomid: 2, backendDomid: 1, devid: 0 }]);
  t.pass('a good image, a RAM disk and a device that is no disk pass');
  const disk = await blk.connect(good);
  t.ok(disk.info, 'and the good one connects');
});

t.test('waiting for a disk blkback gave up on ends with its reason, not a timeout', async (t) => {
  const blk = await startBlkTestbed(t);
  writeFileSync(join(dir, 'short.img'), Buffer.alloc(100));
  // Plugged by hand, as by a toolstack that does not look at the image first.
  const bad = blk.disk('xvdb', join(dir, 'short.img'));
  await plugDevice(blk.bed.dom0, bad);
  const started = Date.now();
  const outcome = await waitForDevice(blk.bed.dom0, bad, 10_000);
  t.match(outcome, { outcome: 'failed', reason: new RegExp(`^\\d+ attaching blkback: ${join(dir, 'short.img')} is 100 bytes, shorter than one 512-byte sector$`) }, 'failed, with the error node\'s reason');
  t.ok(Date.now() - started < 5000, `at once (${Date.now() - started} ms), not after the wait`);

  const good = blk.disk('xvda', image('fine.img', 4 * MiB));
  await plugDevice(blk.bed.dom0, good);
  t.same(await waitForDevice(blk.bed.dom0, good, 10_000), { outcome: 'connected' }, 'a good disk connects');
});
