/**
 * An I/O worker of the block backend's piscina pool. It maps the granted
 * pages a task names through its own attachment to the platform, reads or
 * writes them straight from or to the store with preadv/pwritev (no copy
 * in between), unmaps them, and only then reports: the queue answers a
 * request after its pages are no longer touched. Where the pool copies
 * (see GrantAccess) it moves the data between the pages and a buffer of its
 * own with grant copies instead, and does the I/O on that buffer.
 */
import { fdatasyncSync, readvSync, writevSync } from 'node:fs';
import { workerData } from 'node:worker_threads';
import { attachPlatform } from '../shared/attach.js';
import { nativeCalls } from '../shared/native.js';
import type { DomainInterface, GrantMapping, PlatformLink } from '../shared/platform.js';
import { copiesGrants, type GrantAccess } from './io-pool.js';
import type { IoOp, IoOutcome, IoTask } from './io-task.js';
import type { StoreHandle } from './store.js';
import { advance, alignedBuffer, copyThroughGrants, ioError, memoryTransfer } from './transfer.js';

interface PoolWorkerData {
  link: PlatformLink;
  grantAccess: GrantAccess;
}

const { link, grantAccess } = workerData as PoolWorkerData;
const platform = await attachPlatform(link);
const domains = new Map<number, DomainInterface>();

function domain(domid: number): DomainInterface {
  let found = domains.get(domid);
  if (!found) domains.set(domid, (found = platform.domain(domid)));
  return found;
}

export default function runTask(task: IoTask): IoOutcome[] {
  return task.ops.map((op) => {
    try {
      run(task, op);
      return null;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code ?? 'EIO';
    }
  });
}

function run(task: IoTask, op: IoOp): void {
  const { store } = task;
  switch (op.op) {
    case 'read':
    case 'write': {
      if (copiesGrants(grantAccess, op.chunks.length)) {
        copyIo(task, op);
        return;
      }
      const grants = domain(task.mapper).grants;
      // A read fills the frontend's pages: they must be granted writable.
      let mapping: GrantMapping;
      try {
        mapping = grants.map(task.granter, op.chunks.map((c) => c.gref), op.op === 'read');
      } catch (err) {
        throw ioError('EFAULT', (err as Error).message);
      }
      try {
        const views = op.chunks.map((c, i) => mapping.pages[i]!.subarray(c.start, c.start + c.length));
        if (op.op === 'read') readFully(store, op.offset, views);
        else writeFully(store, op.offset, views);
      } finally {
        mapping.unmap();
      }
      return;
    }
    case 'flush':
      if (store.kind === 'fd') fdatasyncSync(store.fd);
      return;
    case 'discard':
      if (store.kind === 'memory') new Uint8Array(store.bytes, op.offset, op.length).fill(0);
      else if (store.blockDevice) nativeCalls().discardBlocks(store.fd, op.offset, op.length, op.secure);
      else nativeCalls().punchHole(store.fd, op.offset, op.length);
      return;
  }
}

/**
 * Bytes a copy-mode worker stages through: the largest merged operation
 * (the queue's mergeBytes, 1 MiB).
 */
const STAGING_BYTES = 1024 * 1024;
let staging: Uint8Array | undefined;

/** The staging buffer, page-aligned, at least `length` bytes. */
function stagingBuffer(length: number): Uint8Array {
  staging ??= alignedBuffer(STAGING_BYTES);
  if (length > staging.length) throw ioError('EINVAL', `an operation of ${length} bytes is larger than the staging buffer`);
  return staging.subarray(0, length);
}

/** A read or write through the staging buffer, the pages reached by grant copy. */
function copyIo(task: IoTask, op: IoOp & { op: 'read' | 'write' }): void {
  const length = op.chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const buffer = stagingBuffer(length);
  const copy = (toPages: boolean) => copyThroughGrants(domain(task.mapper).grants, task.granter, op.chunks, buffer, toPages);
  if (op.op === 'read') {
    readFully(task.store, op.offset, [buffer]);
    copy(true);
  } else {
    copy(false);
    writeFully(task.store, op.offset, [buffer]);
  }
}

function readFully(store: StoreHandle, offset: number, views: Uint8Array[]): void {
  if (store.kind === 'memory') {
    memoryTransfer(store.bytes, 'read', offset, views);
    return;
  }
  let pending = views;
  let at = offset;
  while (pending.length > 0) {
    const got = readvSync(store.fd, pending, at);
    if (got === 0) {
      // Past the end of a file that is shorter than it claims: zeros, as a hole reads.
      for (const view of pending) view.fill(0);
      return;
    }
    at += got;
    pending = advance(pending, got);
  }
}

function writeFully(store: StoreHandle, offset: number, views: Uint8Array[]): void {
  if (store.kind === 'memory') {
    memoryTransfer(store.bytes, 'write', offset, views);
    return;
  }
  let pending = views;
  let at = offset;
  while (pending.length > 0) {
    const put = writevSync(store.fd, pending, at);
    at += put;
    pending = advance(pending, put);
  }
}
