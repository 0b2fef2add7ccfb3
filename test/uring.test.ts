/**
 * The block backend's io_uring: vectored reads and writes (into shared
 * memory too), short reads, flushes, discards, a backlog beyond the ring's
 * size, completions in batches, errors as -errno, bad arguments refused at
 * the call, closing with and without work in flight, and rings in workers.
 */
import t, { type Test } from 'tap';
import { Worker } from 'node:worker_threads';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openUring, uringErrorName, type Uring } from '../shared/uring.js';

const WORKER = fileURLToPath(new URL('./helpers/uring-worker.js', import.meta.url));

// linux/falloc.h
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const EBADF = 9;
const EINVAL = 22;
const EOPNOTSUPP = 95;

const probe = openUring(8);
if ('uring' in probe) probe.uring.close();
/** Where io_uring cannot be had, every test says why instead of failing. */
const skip = 'reason' in probe ? `io_uring is not available here: ${probe.reason}` : false;
const test = (name: string, fn: (t: Test) => Promise<void>) => t.test(name, { skip }, fn);

const dir = mkdtempSync(join(tmpdir(), 'xenmesh-uring-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

/** A new file holding `content`, open read-write; closed at the end of the test. */
function tempFile(t: Test, content: Uint8Array = new Uint8Array(0)): { fd: number; path: string } {
  const path = join(dir, `f${files++}`);
  writeFileSync(path, content);
  const fd = openSync(path, 'r+');
  t.teardown(() => {
    try {
      closeSync(fd);
    } catch {
      // closed by the test itself
    }
  });
  return { fd, path };
}

function ring(t: Test, entries = 8): Uring {
  const result = openUring(entries);
  if ('reason' in result) throw new Error(result.reason);
  t.teardown(() => result.uring.close());
  return result.uring;
}

interface Batches {
  /** Each listener call's tags. */
  readonly calls: number[][];
  /** Resolves with every tag's result once `count` operations have completed. */
  done(count: number): Promise<Map<number, number>>;
}

function listen(uring: Uring): Batches {
  const calls: number[][] = [];
  const results = new Map<number, number>();
  let waiting: { count: number; resolve: (r: Map<number, number>) => void } | undefined;
  uring.onCompletions((tags, res) => {
    calls.push([...tags]);
    tags.forEach((tag, i) => {
      if (results.has(tag)) throw new Error(`tag ${tag} completed twice`);
      results.set(tag, res[i]!);
    });
    if (waiting && results.size >= waiting.count) waiting.resolve(results);
  });
  return {
    calls,
    done: (count) =>
      new Promise((resolve) => {
        if (results.size >= count) resolve(results);
        else waiting = { count, resolve };
      }),
  };
}

function bytes(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

test('writev then readv round trip through several views', async (t) => {
  const { fd, path } = tempFile(t);
  const uring = ring(t);
  const heard = listen(uring);
  uring.writev(fd, [bytes('the quick '), bytes('brown fox '), bytes('jumps')], 3, 1);
  uring.submit();
  t.equal(uring.inFlight, 1, 'in flight until it completes');
  t.same([...(await heard.done(1))], [[1, 25]], 'all 25 bytes written');
  t.equal(uring.inFlight, 0);
  t.equal(readFileSync(path, 'latin1'), '\0\0\0the quick brown fox jumps', 'at the offset asked');

  const parts = [new Uint8Array(4), new Uint8Array(6), Buffer.alloc(15)];
  uring.readv(fd, parts, 3, 2);
  uring.submit();
  t.equal((await heard.done(2)).get(2), 25);
  t.same(parts.map((p) => Buffer.from(p).toString('latin1')), ['the ', 'quick ', 'brown fox jumps'], 'each view filled in turn');
});

test('up to IOV_MAX views in one operation, at offsets beyond 4 GiB', async (t) => {
  const { fd } = tempFile(t);
  const uring = ring(t);
  const heard = listen(uring);
  const FAR = 5 * 2 ** 30 + 7;
  const views = Array.from({ length: 1024 }, (_, i) => new Uint8Array([i & 0xff]));
  uring.writev(fd, views, FAR, 1);
  uring.submit();
  t.equal((await heard.done(1)).get(1), 1024, 'one byte from each of 1024 views');
  t.equal(fstatSync(fd).size, FAR + 1024, 'where a 64-bit offset put it');
  const back = new Uint8Array(1024);
  uring.readv(fd, [back], FAR, 2);
  uring.submit();
  await heard.done(2);
  t.ok(back.every((b, i) => b === (i & 0xff)), 'read back in order');
});

test('reads into and writes from SharedArrayBuffer views', async (t) => {
  const { fd } = tempFile(t, bytes('0123456789abcdef'));
  const uring = ring(t);
  const heard = listen(uring);
  const guest = new SharedArrayBuffer(4096);
  const first = new Uint8Array(guest, 100, 6);
  const second = new Uint8Array(guest, 2000, 10);
  uring.readv(fd, [first, second], 0, 7);
  uring.submit();
  t.equal((await heard.done(1)).get(7), 16);
  t.equal(Buffer.from(guest, 100, 6).toString(), '012345');
  t.equal(Buffer.from(guest, 2000, 10).toString(), '6789abcdef');

  new Uint8Array(guest, 0, 4).set(bytes('WXYZ'));
  uring.writev(fd, [new Uint8Array(guest, 0, 4)], 12, 8);
  uring.submit();
  t.equal((await heard.done(2)).get(8), 4);
  const check = new Uint8Array(16);
  uring.readv(fd, [check], 0, 9);
  uring.submit();
  await heard.done(3);
  t.equal(Buffer.from(check).toString(), '0123456789abWXYZ');
});

test('a read past the end of the file is short, as the kernel says', async (t) => {
  const { fd } = tempFile(t, new Uint8Array(100).fill(1));
  const uring = ring(t);
  const heard = listen(uring);
  uring.readv(fd, [new Uint8Array(4096)], 0, 1);
  uring.readv(fd, [new Uint8Array(64), new Uint8Array(64)], 90, 2);
  uring.readv(fd, [new Uint8Array(512)], 4096, 3);
  uring.submit();
  const results = await heard.done(3);
  t.equal(results.get(1), 100, 'the whole file, no more');
  t.equal(results.get(2), 10, 'the tail, across views');
  t.equal(results.get(3), 0, 'nothing beyond the end');
});

test('fdatasync', async (t) => {
  const { fd } = tempFile(t);
  const uring = ring(t);
  const heard = listen(uring);
  uring.writev(fd, [new Uint8Array(8192).fill(7)], 0, 1);
  uring.submit();
  await heard.done(1);
  uring.fdatasync(fd, 2);
  uring.submit();
  t.equal((await heard.done(2)).get(2), 0);
});

test('fallocate punches holes and zeroes ranges', async (t) => {
  const SIZE = 1 << 20;
  const { fd, path } = tempFile(t, new Uint8Array(SIZE).fill(0xaa));
  const uring = ring(t);
  const heard = listen(uring);
  uring.fdatasync(fd, 1);
  uring.submit();
  await heard.done(1);
  const blocksBefore = fstatSync(fd).blocks;

  uring.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 65536, 262144, 2);
  uring.submit();
  t.equal((await heard.done(2)).get(2), 0, 'hole punched');
  const afterPunch = fstatSync(fd);
  t.equal(afterPunch.size, SIZE, 'KEEP_SIZE kept the size');
  t.ok(afterPunch.blocks < blocksBefore, `blocks given back (${blocksBefore} -> ${afterPunch.blocks})`);
  let content = readFileSync(path);
  t.ok(content.subarray(65536, 65536 + 262144).every((b) => b === 0), 'the hole reads as zeros');
  t.ok(content.subarray(0, 65536).every((b) => b === 0xaa) && content.subarray(65536 + 262144).every((b) => b === 0xaa), 'around it untouched');

  uring.fallocate(fd, FALLOC_FL_ZERO_RANGE, 500000, 1000, 3);
  uring.submit();
  const zeroed = (await heard.done(3)).get(3);
  if (zeroed === -EOPNOTSUPP) {
    t.pass('range zeroed', { skip: `${dir}'s file system has no FALLOC_FL_ZERO_RANGE` });
    return;
  }
  t.equal(zeroed, 0, 'range zeroed');
  content = readFileSync(path);
  t.ok(content.subarray(500000, 501000).every((b) => b === 0), 'the range reads as zeros');
  t.equal(content[499999], 0xaa);
  t.equal(content[501000], 0xaa);
});

test('more operations than the ring holds wait in the backlog', async (t) => {
  const COUNT = 300;
  const { fd, path } = tempFile(t);
  const uring = ring(t, 4);
  t.equal(uring.entries, 4);
  const heard = listen(uring);
  for (let tag = 0; tag < COUNT; tag++) {
    const record = new Uint8Array(8);
    new DataView(record.buffer).setUint32(0, tag, true);
    uring.writev(fd, [record], tag * 8, tag);
  }
  t.equal(uring.inFlight, COUNT, 'queued ones count as in flight');
  uring.submit();
  const results = await heard.done(COUNT);
  t.equal(results.size, COUNT, 'every operation completed once');
  t.ok([...results.values()].every((r) => r === 8), 'each wrote its 8 bytes');
  t.equal(uring.inFlight, 0);
  t.ok(heard.calls.length > 1, `fed in ${heard.calls.length} batches`);
  const content = readFileSync(path);
  t.ok(Array.from({ length: COUNT }, (_, i) => content.readUInt32LE(i * 8) === i).every(Boolean), 'each at its offset');
});

test('operations queued after submit() wait for the next one', async (t) => {
  const { fd } = tempFile(t, new Uint8Array(4096));
  const uring = ring(t, 2);
  const heard = listen(uring);
  for (let tag = 0; tag < 6; tag++) uring.readv(fd, [new Uint8Array(512)], tag * 512, tag);
  uring.submit();
  uring.readv(fd, [new Uint8Array(512)], 0, 100);
  await heard.done(6);
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.notOk(heard.calls.flat().includes(100), 'not submitted, so not done');
  t.equal(uring.inFlight, 1);
  uring.submit();
  t.equal((await heard.done(7)).get(100), 512);
});

test('completions arrive in batches, one listener call each', async (t) => {
  const COUNT = 32;
  const { fd } = tempFile(t, new Uint8Array(COUNT * 512).fill(3));
  const uring = ring(t, 64);
  const heard = listen(uring);
  for (let tag = 0; tag < COUNT; tag++) uring.readv(fd, [new Uint8Array(512)], tag * 512, tag);
  uring.submit();
  await heard.done(COUNT);
  t.ok(heard.calls.length < COUNT, `${COUNT} completions in ${heard.calls.length} calls`);
  t.ok(heard.calls.some((tags) => tags.length > 1), 'at least one call carries several');
});

test('completions before a listener is set are kept for it', async (t) => {
  const { fd } = tempFile(t, new Uint8Array(512));
  const uring = ring(t);
  uring.readv(fd, [new Uint8Array(512)], 0, 5);
  uring.submit();
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.same([...(await listen(uring).done(1))], [[5, 512]]);
});

test('errors are -errno results', async (t) => {
  const { fd } = tempFile(t, new Uint8Array(512));
  const uring = ring(t);
  const heard = listen(uring);
  const closed = openSync(join(dir, 'closed'), 'w');
  closeSync(closed);
  uring.readv(closed, [new Uint8Array(16)], 0, 1);
  uring.writev(closed, [new Uint8Array(16)], 0, 2);
  uring.fdatasync(closed, 3);
  uring.fallocate(fd, 0, 0, 0, 4);
  uring.submit();
  const results = await heard.done(4);
  t.equal(results.get(1), -EBADF, 'readv on a closed fd');
  t.equal(results.get(2), -EBADF, 'writev on a closed fd');
  t.equal(results.get(3), -EBADF, 'fdatasync on a closed fd');
  t.equal(results.get(4), -EINVAL, 'fallocate of no bytes');
  t.equal(uringErrorName(results.get(1)!), 'EBADF');
  t.equal(uringErrorName(-EINVAL), 'EINVAL');
  t.equal(uringErrorName(-4000), 'errno 4000');
  t.throws(() => uringErrorName(5), RangeError, 'a byte count is not an error');
});

test('bad arguments are refused at the call', async (t) => {
  const { fd } = tempFile(t);
  const uring = ring(t);
  const view = new Uint8Array(8);
  const detachedBuffer = new ArrayBuffer(8);
  const onDetached = new Uint8Array(detachedBuffer);
  structuredClone(detachedBuffer, { transfer: [detachedBuffer] });
  const bad = (name: string, fn: () => void, type: typeof TypeError | typeof RangeError, message: RegExp) =>
    t.throws(fn, { constructor: type, message }, name);
  const anyUring = uring as unknown as Record<string, (...args: unknown[]) => void>;

  bad('fd not a number', () => anyUring.readv!('3', [view], 0, 1), TypeError, /^fd must be a number/);
  bad('fd negative', () => uring.readv(-1, [view], 0, 1), RangeError, /^fd must be/);
  bad('fd fractional', () => uring.fdatasync(1.5, 1), RangeError, /^fd must be/);
  bad('negative offset', () => uring.readv(fd, [view], -512, 1), RangeError, /^offset must be/);
  bad('offset beyond 2^53', () => uring.writev(fd, [view], 2 ** 54, 1), RangeError, /^offset must be/);
  bad('offset NaN', () => uring.writev(fd, [view], NaN, 1), RangeError, /^offset must be/);
  bad('views not an array', () => anyUring.readv!(fd, view, 0, 1), TypeError, /^views must be an array/);
  bad('empty views', () => uring.readv(fd, [], 0, 1), RangeError, /^views must not be empty/);
  bad('more than IOV_MAX views', () => uring.writev(fd, new Array(1025).fill(view), 0, 1), RangeError, /IOV_MAX \(1024\)/);
  bad('a view not a Uint8Array', () => anyUring.readv!(fd, [view, new Uint16Array(4)], 0, 1), TypeError, /^views\[1\] must be a Uint8Array, not Uint16Array/);
  bad('a DataView', () => anyUring.writev!(fd, [new DataView(new ArrayBuffer(4))], 0, 1), TypeError, /^views\[0\] must be a Uint8Array/);
  bad('a detached buffer', () => uring.readv(fd, [view, onDetached], 0, 1), TypeError, /^views\[1\] is a view of a detached ArrayBuffer/);
  bad('negative tag', () => uring.readv(fd, [view], 0, -1), RangeError, /^tag must be/);
  bad('tag of 2^31', () => uring.fdatasync(fd, 2 ** 31), RangeError, /^tag must be/);
  bad('tag not a number', () => anyUring.fdatasync!(fd, '1'), TypeError, /^tag must be a number/);
  bad('fallocate negative length', () => uring.fallocate(fd, 0, 0, -1, 1), RangeError, /^length must be/);
  bad('fallocate negative mode', () => uring.fallocate(fd, -1, 0, 1, 1), RangeError, /^mode must be/);
  bad('entries of 0', () => openUring(0), RangeError, /^entries must be at least 1/);
  bad('entries beyond IORING_MAX_ENTRIES', () => openUring(65536), RangeError, /^entries must be/);
  bad('entries not a number', () => (openUring as (e: unknown) => unknown)('8'), TypeError, /^entries must be a number/);
  t.equal(uring.inFlight, 0, 'nothing refused was queued');

  t.doesNotThrow(() => uring.readv(fd, [view, new Uint8Array(0)], 0, 2 ** 31 - 1), 'an empty view and the largest tag are fine');
  uring.close();
  for (const [name, fn] of [
    ['readv', () => uring.readv(fd, [view], 0, 1)],
    ['writev', () => uring.writev(fd, [view], 0, 1)],
    ['fdatasync', () => uring.fdatasync(fd, 1)],
    ['fallocate', () => uring.fallocate(fd, 0, 0, 1, 1)],
    ['submit', () => uring.submit()],
  ] as const) {
    t.throws(fn, { code: 'ERR_URING_CLOSED', message: 'the io_uring is closed' }, `${name} on a closed ring`);
  }
  t.doesNotThrow(() => uring.close(), 'a second close does nothing');
});

test('close with nothing in flight', async (t) => {
  const result = openUring(16);
  if ('reason' in result) throw new Error(result.reason);
  const heard = listen(result.uring);
  result.uring.close();
  t.equal(result.uring.inFlight, 0);
  t.same(heard.calls, []);
});

test('close waits for operations in flight', async (t) => {
  const COUNT = 64;
  const BLOCK = 1 << 16;
  const { fd, path } = tempFile(t);
  const result = openUring(16);
  if ('reason' in result) throw new Error(result.reason);
  const uring = result.uring;
  const heard = listen(uring);
  for (let tag = 0; tag < COUNT; tag++) uring.writev(fd, [new Uint8Array(BLOCK).fill(tag + 1)], tag * BLOCK, tag);
  uring.submit();
  const inKernel = uring.inFlight;
  uring.close();
  t.equal(uring.inFlight, 0);
  const content = readFileSync(path);
  // The first batch went to the kernel before close: close returned only once it had finished.
  t.ok(content.length >= 16 * BLOCK, `the writes the kernel had were done by the time close returned (${inKernel} queued)`);
  for (let tag = 0; tag < 16; tag++) {
    if (content[tag * BLOCK] !== tag + 1 || content[tag * BLOCK + BLOCK - 1] !== tag + 1) t.fail(`block ${tag} not written`);
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.same(heard.calls, [], 'nothing is reported after close');
});

test('close gives up on an operation that never completes, keeping its buffer', async (t) => {
  // A read from a FIFO nobody writes to waits for ever, as a request to a
  // device that stopped answering would.
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const fd = openSync(fifo, 'r+');
  t.teardown(() => closeSync(fd));
  const result = openUring(4);
  if ('reason' in result) throw new Error(result.reason);
  const uring = result.uring;
  const heard = listen(uring);
  const guest = new Uint8Array(new SharedArrayBuffer(16));
  uring.readv(fd, [guest], 0, 1);
  uring.submit();
  await new Promise((resolve) => setTimeout(resolve, 20));
  const started = Date.now();
  t.throws(() => uring.close(), { code: 'ETIMEDOUT', message: /1 operation still in flight after 10000 ms/ });
  t.ok(Date.now() - started >= 9900, 'after waiting for it');
  t.equal(uring.inFlight, 0);
  t.throws(() => uring.submit(), { code: 'ERR_URING_CLOSED' }, 'the ring is closed all the same');
  t.same(heard.calls, []);
});

test('a ring in a worker: used, then left to the worker exit', async (t) => {
  const { path } = tempFile(t, new Uint8Array(64));
  const worker = new Worker(WORKER, { workerData: { path, mode: 'round-trip' } });
  const message = await new Promise<{ result: number; text: string }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  t.equal(message.text, `from worker ${process.pid}`, 'written and read back in the worker');
  t.equal(message.result, message.text.length);
  const code = await new Promise((resolve) => worker.once('exit', resolve));
  t.equal(code, 0, 'an idle ring does not keep the worker alive');
});

test('a worker that exits with writes in flight', async (t) => {
  const { path } = tempFile(t);
  const worker = new Worker(WORKER, { workerData: { path, mode: 'exit-busy' } });
  const errors: Error[] = [];
  worker.on('error', (err) => errors.push(err));
  const message = await new Promise<{ inFlight: number }>((resolve) => worker.once('message', resolve));
  t.ok(message.inFlight > 0, `${message.inFlight} in flight when it exited`);
  const code = await new Promise((resolve) => worker.once('exit', resolve));
  t.equal(code, 0, 'exited cleanly');
  t.same(errors, []);
  t.ok(readFileSync(path).length >= 1 << 16, 'the writes the kernel had were finished first');
});
