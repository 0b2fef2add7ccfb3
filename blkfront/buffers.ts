import { PAGE_SIZE, type GuestMemory } from '../shared/platform.js';

/** A buffer freed while operations on it were still outstanding. */
export class BufferInUseError extends Error {
  override readonly name = 'BufferInUseError';
  readonly code = 'EBUSY';
}

/** A buffer that is not (or no longer) one the device allocated. */
export class BufferNotAllocatedError extends Error {
  override readonly name = 'BufferNotAllocatedError';
  readonly code = 'EINVAL';
}

/**
 * I/O buffers in the domain's own memory, as a kernel's bio pages are: a
 * request carries such a buffer's pages as they are (granted to the
 * backend, no copy) when it starts on a page boundary. Buffers come from
 * allocate(); any other page-aligned view of the domain's memory is taken
 * as well, its pages granted for one request at a time. The pages of an operation are held (pinned) until it settles,
 * so that freeing its buffer meanwhile is refused instead of handing the
 * backend pages the domain may already be using for something else.
 */
export class DeviceBuffers {
  /** First pfn → pages, of the buffers allocate() made and free() has not taken back. */
  private readonly allocations = new Map<number, number>();
  /** Outstanding operations per page of the domain's memory. */
  private readonly pins: Int32Array;
  /** 1 for each page of a buffer allocate() made and free() has not taken back. */
  private readonly owned: Uint8Array;
  private readonly freed = new WeakSet<Uint8Array>();

  constructor(private readonly memory: GuestMemory | undefined) {
    this.pins = new Int32Array(memory?.pages ?? 0);
    this.owned = new Uint8Array(memory?.pages ?? 0);
  }

  /** A page-aligned buffer of `bytes` over pages of the domain's memory (zeroed). */
  allocate(bytes: number): Uint8Array {
    if (!Number.isSafeInteger(bytes) || bytes < 1) throw new RangeError(`cannot allocate a buffer of ${bytes} bytes`);
    const memory = this.requireMemory();
    const pages = Math.ceil(bytes / PAGE_SIZE);
    const pfn = memory.allocContiguousPages(pages);
    this.allocations.set(pfn, pages);
    this.owned.fill(1, pfn, pfn + pages);
    return memory.range(pfn, pages).subarray(0, bytes);
  }

  /**
   * The first page and the page count of a buffer allocate() made, to be
   * freed; a buffer that is not one (or was freed already) is refused, and
   * so is one that operations still use.
   */
  claimForFree(buffer: Uint8Array): { pfn: number; pages: number } {
    if (this.freed.has(buffer)) throw new BufferNotAllocatedError('the buffer was freed already');
    const pfn = this.firstPfn(buffer);
    const pages = pfn < 0 ? undefined : this.allocations.get(pfn);
    if (pages === undefined || Math.ceil(buffer.length / PAGE_SIZE) !== pages) {
      throw new BufferNotAllocatedError('the buffer was not allocated by this device (free the buffer allocateBuffer returned)');
    }
    let users = 0;
    for (let p = pfn; p < pfn + pages; p++) users = Math.max(users, this.pins[p]!);
    if (users > 0) throw new BufferInUseError(`the buffer is in use by ${users} outstanding operation(s): free it once they settle`);
    return { pfn, pages };
  }

  /** Gives a claimed buffer's pages back to the domain, but for `held` (still granted: freed once their grants end). */
  release(buffer: Uint8Array, pfn: number, pages: number, held: readonly number[]): void {
    this.allocations.delete(pfn);
    this.owned.fill(0, pfn, pfn + pages);
    this.freed.add(buffer);
    const free: number[] = [];
    for (let p = pfn; p < pfn + pages; p++) if (!held.includes(p)) free.push(p);
    this.requireMemory().freePages(free);
  }

  /** Whether `buffer` is one free() took back: using it would hand the backend pages that are not the caller's. */
  wasFreed(buffer: Uint8Array): boolean {
    return this.freed.has(buffer);
  }

  /** The pfn `buffer` starts, if it is page-aligned memory of the domain; -1 if not (it goes through bounce pages). */
  firstPfn(buffer: Uint8Array): number {
    if (!this.memory || buffer.length === 0) return -1;
    const address = this.memory.addressOf(buffer);
    return address >= 0 && address % PAGE_SIZE === 0 ? address / PAGE_SIZE : -1;
  }

  /**
   * Whether `pages` pages from `pfn` all lie in buffers allocate() made:
   * grants of such pages may outlive a request (persistent grants), since
   * free() ends them before the pages go back to the domain. Pages the
   * caller got elsewhere are granted for one request at a time.
   */
  allOwned(pfn: number, pages: number): boolean {
    for (let p = pfn; p < pfn + pages; p++) if (this.owned[p] !== 1) return false;
    return true;
  }

  /** An operation on `pages` pages from `pfn` is outstanding. */
  pin(pfn: number, pages: number): void {
    for (let p = pfn; p < pfn + pages; p++) this.pins[p] = this.pins[p]! + 1;
  }

  /** The operation settled. */
  unpin(pfn: number, pages: number): void {
    for (let p = pfn; p < pfn + pages; p++) this.pins[p] = this.pins[p]! - 1;
  }

  private requireMemory(): GuestMemory {
    if (!this.memory) throw new RangeError('this device has no domain memory to allocate buffers in');
    return this.memory;
  }
}
