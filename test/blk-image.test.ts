/**
 * blkback and images it cannot serve, plugged by hand (as `xenstore-write`
 * or another toolstack would, with no check of the image before): each is
 * refused when the device attaches with an error node that names the path
 * and what is wrong, and the device goes Closed at both ends; nothing is
 * created for a path that is not there. An image that goes bad between
 * attach and connect (removed, emptied, replaced by a directory, made
 * read-only) takes the protocol's error path when the frontend connects:
 * the error node, Closing, and Closed once the frontend has closed, never
 * a frontend left waiting. An image that cannot be written is served
 * read-only when the disk is.
 */
import t, { type Test } from 'tap';
import { chmodSync, closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { plugDevice, type DeviceSpec } from '../host/toolstack/devices.js';
import { SECTOR_SIZE } from '../shared/blkif.js';
import { XenbusState } from '../xenbus/state.js';
import { startBlkTestbed, type BlkTestbed } from './helpers/blk.js';
import { run } from './helpers/daemon.js';

const MiB = 1024 * 1024;

function workdir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blk-image-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function image(dir: string, name: string, bytes: number): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return path;
}

/**
 * Makes an image that this process cannot open read-write: mode 0444, and
 * for root (whom modes do not stop) the immutable attribute. False where
 * neither holds (chattr +i refused by the file system or the container).
 */
async function makeUnwritable(t: { teardown(fn: () => unknown): void }, path: string): Promise<boolean> {
  chmodSync(path, 0o444);
  if (process.getuid?.() === 0 && (await run('chattr', ['+i', path])).code === 0) {
    t.teardown(() => run('chattr', ['-i', path]));
  }
  try {
    closeSync(openSync(path, 'r+'));
    return false;
  } catch {
    return true;
  }
}

/** Why the tests of an image that cannot be written are skipped here, if they are. */
const unwritableSkip = await (async () => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blk-image-'));
  const undo: (() => unknown)[] = [];
  try {
    const made = await makeUnwritable({ teardown: (fn) => undo.push(fn) }, image(dir, 'probe.img', SECTOR_SIZE));
    return made ? false : 'this process can open any file read-write here (root, without chattr +i)';
  } finally {
    for (const fn of undo) await fn();
    rmSync(dir, { recursive: true, force: true });
  }
})();

const errorNode = (blk: BlkTestbed, spec: DeviceSpec) =>
  blk.bed.dom0.tryRead(`/local/domain/${blk.driver.domid}/error/backend/vbd/${spec.frontendDomid}/${spec.devid}/error`);

t.test('images blkback refuses at attach: an error node naming the path, and Closed', async (t) => {
  const dir = workdir(t);
  const blk = await startBlkTestbed(t);
  const dangling = join(dir, 'dangling.img');
  symlinkSync(join(dir, 'gone.img'), dangling);
  const fifo = join(dir, 'fifo');
  await run('mkfifo', [fifo]);
  writeFileSync(join(dir, 'short.img'), Buffer.alloc(100));
  const cases: [string, string, RegExp][] = [
    ['a missing image', join(dir, 'a', 'b', 'c', 'missing.img'), /missing\.img does not exist$/],
    ['a path through a file', join(dir, 'short.img', 'disk.img'), /does not exist \(a component of the path is not a directory\)$/],
    ['a dangling symlink', dangling, /dangling\.img is a dangling symlink \(its target .*gone\.img does not exist\)$/],
    ['a directory', dir, / is a directory, not a regular file or a block device$/],
    ['a character device', '/dev/null', /^\d+ attaching blkback: \/dev\/null is a character device, not a regular file or a block device$/],
    ['a FIFO', fifo, /fifo is a FIFO, not a regular file or a block device$/],
    ['an empty image', image(dir, 'empty.img', 0), /empty\.img is empty \(a disk needs at least one 512-byte sector\)$/],
    ['an image shorter than a sector', join(dir, 'short.img'), /short\.img is 100 bytes, shorter than one 512-byte sector$/],
  ];
  let n = 0;
  for (const [what, path, message] of cases) {
    const spec = blk.disk(`xvd${String.fromCharCode(97 + n++)}`, path);
    await plugDevice(blk.bed.dom0, spec);
    await blk.bed.waitStates(spec, XenbusState.Closed, XenbusState.Closed);
    const error = await errorNode(blk, spec);
    t.match(error, /^\d+ attaching blkback: \//, `${what}: the error node says blkback refused it`);
    t.match(error, message, `${what}: and names the path and what is wrong (${error})`);
  }
  t.notOk(existsSync(join(dir, 'a')), 'no directory was created for the missing image');
  t.equal(blk.back.devices.size, 0, 'blkback holds none of them');
});

t.test('an image that goes bad between attach and connect: the error path, and Closed at both ends', async (t) => {
  const dir = workdir(t);
  const blk = await startBlkTestbed(t, { frontBusLater: true });
  const cases: [string, string, (path: string) => unknown, RegExp][] = [
    ['removed', 'removed.img', (path) => rmSync(path), /removed\.img does not exist$/],
    ['emptied', 'emptied.img', (path) => closeSync(openSync(path, 'w')), /emptied\.img is empty \(a disk needs at least one 512-byte sector\)$/],
    ['replaced by a directory', 'directory.img', (path) => (rmSync(path), mkdirSync(path)), /directory\.img is a directory, not a regular file or a block device$/],
  ];
  if (!unwritableSkip) {
    cases.push(['made unwritable', 'unwritable.img', (path) => makeUnwritable(t, path), /unwritable\.img is not writable \((EACCES: permission denied|EPERM: operation not permitted)\), and the disk is read-write$/]);
  }
  const specs: DeviceSpec[] = [];
  for (const [i, [, name]] of cases.entries()) {
    const spec = blk.disk(`xvd${String.fromCharCode(97 + i)}`, image(dir, name, 4 * MiB));
    await blk.bed.plug(spec);
    await blk.bed.waitStates(spec, XenbusState.Initialising, XenbusState.InitWait);
    specs.push(spec);
  }
  for (const [, name, spoil] of cases) await spoil(join(dir, name));
  await blk.startFrontBus();
  for (const [i, [what, , , message]] of cases.entries()) {
    const spec = specs[i]!;
    await blk.bed.waitStates(spec, XenbusState.Closed, XenbusState.Closed, 10_000);
    t.pass(`${what}: both ends are Closed`);
    const error = await errorNode(blk, spec);
    t.match(error, /^\d+ opening the backing store: \//, `${what}: the error node says the store could not be opened`);
    t.match(error, message, `${what}: and why (${error})`);
    t.equal(blk.back.devices.get(`${spec.frontendDomid}/${spec.devid}`)?.store, undefined, `${what}: nothing is left open`);
  }
});

t.test('an image that cannot be written: refused for a read-write disk, served for a read-only one', { skip: unwritableSkip }, async (t) => {
  const dir = workdir(t);
  const path = image(dir, 'readonly.img', 4 * MiB);
  t.ok(await makeUnwritable(t, path), 'the image cannot be opened read-write');
  const blk = await startBlkTestbed(t);
  const rw = blk.disk('xvda', path);
  await plugDevice(blk.bed.dom0, rw);
  await blk.bed.waitStates(rw, XenbusState.Closed, XenbusState.Closed);
  t.match(
    await errorNode(blk, rw),
    /^\d+ attaching blkback: .*readonly\.img is not writable \((EACCES: permission denied|EPERM: operation not permitted)\), and the disk is read-write$/,
    'a read-write disk is refused at attach, saying the image is not writable',
  );
  const ro = blk.disk('xvdb', path, { readOnly: true });
  const disk = await blk.connect(ro);
  t.ok(disk.info!.readOnly, 'a read-only disk over it connects, read-only');
  t.equal(disk.info!.sectors, (4 * MiB) / SECTOR_SIZE, 'with the size of the image');
  t.same(await disk.read(0, 1), new Uint8Array(SECTOR_SIZE), 'and reads');
});
