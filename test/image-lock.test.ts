/**
 * Image locks as QEMU takes them: two driver domains of one host, each
 * with its own blkback, serve disks of one image to a guest. A second
 * read-write backend of an image is refused, and so is a read-only one
 * while another writes it (the device fails with EBUSY on its error node,
 * the frontend sees it fail, and the toolstack refuses the same disk up
 * front); two read-only backends share it; and the lock goes when the
 * device disconnects, leaving the image free for the next.
 */
import t from 'tap';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkbackDriver } from '../blkback/driver.js';
import { openStore } from '../blkback/store.js';
import { ImageError } from '../blkback/image.js';
import { waitForDevice } from '../host/toolstack/device-wait.js';
import { devicePaths, diskDevice, plugDevice, type DeviceSpec } from '../host/toolstack/devices.js';
import { checkDiskImages, chooseDiskAccess, DiskRefused } from '../host/toolstack/disk-check.js';
import { XenbusState } from '../xenbus/state.js';
import { startBlkTestbed } from './helpers/blk.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'xenmesh-image-lock-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, 4 * MiB);
  closeSync(fd);
  return path;
}

/** The store of a disk of `path`, as blkback opens it at connect. */
function store(path: string, readOnly: boolean) {
  return openStore({ target: { kind: 'path', path }, readOnly } as Parameters<typeof openStore>[0]);
}

t.test('blkback stores: one writer, or any number of readers', async (t) => {
  const path = image('store.img');
  const writer = await store(path, false);
  await t.rejects(store(path, false), new ImageError('EBUSY', path, 'is in use: another backend holds it, so it cannot be served read-write'), 'a second read-write store is refused');
  await t.rejects(store(path, true), new ImageError('EBUSY', path, 'is in use: another backend holds it read-write, so it cannot be served read-only'), 'a read-only store while one writes is refused');
  await writer.close();
  const readers = [await store(path, true), await store(path, true)];
  t.pass('two read-only stores share the image once the writer closed it');
  await t.rejects(store(path, false), { code: 'EBUSY' }, 'a read-write store while two read is refused');
  for (const reader of readers) await reader.close();
  const again = await store(path, false);
  t.pass('with every store closed, the image can be written again');
  await again.close();
});

t.test('the toolstack refuses an image another backend holds', async (t) => {
  const path = image('toolstack.img');
  const writer = await store(path, false);
  for (const access of ['rw', 'ro', 'auto'] as const) {
    await t.rejects(chooseDiskAccess(path, access), DiskRefused, `--access ${access}: refused`);
  }
  await t.rejects(chooseDiskAccess(path, 'auto'), { message: `${path} is in use: another backend holds it, so it cannot be served read-write` }, 'in one line naming the image');
  await writer.close();
  t.same(await chooseDiskAccess(path, 'auto'), { readOnly: false }, 'once it is closed, the image is served read-write');
});

t.test('two driver domains, one image', async (t) => {
  // Closed before the testbed goes, so that its rings stop before their domains do.
  const otherBack = new BlkbackDriver();
  t.teardown(() => otherBack.close());
  const blk = await startBlkTestbed(t);
  const other = await blk.bed.domain('driver2');
  await other.backBus(otherBack);
  const path = image('shared.img');
  const fromFirst = (vdev: string, readOnly = false) => blk.disk(vdev, path, { readOnly });
  const fromSecond = (vdev: string, readOnly = false): DeviceSpec =>
    diskDevice({ frontendDomid: blk.guest.domid, backendDomid: other.domid, vdev, target: path, readOnly });

  /** Plugs a disk by hand, as a toolstack that does not look first would, and waits for its outcome. */
  const plugUnchecked = async (spec: DeviceSpec) => {
    await plugDevice(blk.bed.dom0, spec);
    return waitForDevice(blk.bed.dom0, spec, 10_000);
  };
  const errorNode = (spec: DeviceSpec) => blk.bed.dom0.tryRead(`/local/domain/${spec.backendDomid}/error/backend/vbd/${spec.frontendDomid}/${spec.devid}/error`);

  const writer = fromFirst('xvda');
  await blk.connect(writer);
  t.pass('the first driver domain serves the image read-write');

  const second = fromSecond('xvdb');
  const outcome = await plugUnchecked(second);
  t.match(outcome, { outcome: 'failed', reason: new RegExp(`^16 opening the backing store: ${path} is in use: another backend holds it, so it cannot be served read-write$`) }, 'a second read-write backend fails with EBUSY (16), naming the image');
  t.match(await errorNode(second), /^16 opening the backing store: .* is in use/, 'its error node says so');
  const backendState = Number(await blk.bed.dom0.read(`${devicePaths(second).backend}/state`));
  t.ok(backendState === XenbusState.Closing || backendState === XenbusState.Closed, `its backend went Closing or Closed (${backendState})`);
  await t.rejects(blk.bed.plug(fromSecond('xvdc')), { name: 'DiskRefused', message: `disk xvdc: ${path} is in use: another backend holds it, so it cannot be served read-write` }, 'the toolstack refuses the same disk before plugging it');

  const reader = fromSecond('xvdd', true);
  t.match(await plugUnchecked(reader), { outcome: 'failed', reason: /is in use: another backend holds it read-write, so it cannot be served read-only$/ }, 'a read-only backend while another writes the image fails');

  await blk.bed.unplug(writer);
  await checkDiskImages([fromSecond('xvde')]);
  t.pass('once the writer disconnected, the image is free');

  await blk.connect(fromFirst('xvdf', true));
  await blk.bed.plug(fromSecond('xvdg', true));
  await blk.bed.waitStates(fromSecond('xvdg', true), XenbusState.Connected, XenbusState.Connected, 10_000);
  t.pass('two read-only backends, one in each driver domain, share the image');
  await t.rejects(checkDiskImages([fromSecond('xvdh')]), { name: 'DiskRefused', message: /is in use/ }, 'and a read-write disk is refused while they do');
});
