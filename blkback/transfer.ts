/**
 * Moving bytes between a store and a frontend's pages: what the pool's
 * workers and the io_uring runner do alike.
 */
import { nativeCalls } from '../shared/native.js';
import { PAGE_SIZE, type GrantCopy, type GrantTable } from '../shared/platform.js';
import type { PageChunk } from './io-task.js';

/** An error carrying an errno name in `code`, as the request queue reads outcomes. */
export function ioError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** The views still to transfer after `done` bytes of them moved (a short read or write). */
export function advance(views: Uint8Array[], done: number): Uint8Array[] {
  let skip = done;
  let first = 0;
  while (first < views.length && skip >= views[first]!.length) skip -= views[first++]!.length;
  const rest = views.slice(first);
  if (rest.length > 0 && skip > 0) rest[0] = rest[0]!.subarray(skip);
  return rest;
}

/** A read or write of a RAM disk's bytes from `offset` on, to or from the views in order. */
export function memoryTransfer(bytes: SharedArrayBuffer, kind: 'read' | 'write', offset: number, views: readonly Uint8Array[]): void {
  let at = offset;
  for (const view of views) {
    const store = new Uint8Array(bytes, at, view.length);
    if (kind === 'read') view.set(store);
    else store.set(view);
    at += view.length;
  }
}

/** A page-aligned buffer of `bytes` bytes: O_DIRECT wants its buffers on logical block boundaries. */
export function alignedBuffer(bytes: number): Uint8Array {
  const raw = new Uint8Array(bytes + PAGE_SIZE);
  const misalignment = nativeCalls().addressOf(raw) % PAGE_SIZE;
  const start = misalignment === 0 ? 0 : PAGE_SIZE - misalignment;
  return raw.subarray(start, start + bytes);
}

/**
 * Copies between the frontend's pages the chunks name and `buffer` (laid
 * out one chunk after another) through the hypervisor (GNTTABOP_copy):
 * into the pages when `toPages`, out of them otherwise. A refused copy is
 * EFAULT, as a bad address is.
 */
export function copyThroughGrants(grants: GrantTable, granter: number, chunks: readonly PageChunk[], buffer: Uint8Array, toPages: boolean): void {
  let at = 0;
  const copies = chunks.map((chunk): GrantCopy => {
    const local = { bytes: buffer, offset: at };
    const granted = { domid: granter, gref: chunk.gref, offset: chunk.start };
    at += chunk.length;
    return toPages ? { source: local, dest: granted, length: chunk.length } : { source: granted, dest: local, length: chunk.length };
  });
  try {
    grants.copy(copies);
  } catch (err) {
    throw ioError('EFAULT', (err as Error).message);
  }
}
