import { BlkifOp, BlkifStatus, BLKIF_MAX_SEGMENTS_PER_REQUEST, SECTOR_SIZE, SECTORS_PER_PAGE } from '../shared/blkif.js';
import { PAGE_SIZE, type GuestMemory } from '../shared/platform.js';
import { DeviceBuffers, BufferNotAllocatedError } from './buffers.js';
import type { CallerPageGrants } from './caller-grants.js';
import type { BlkfrontQueue, QueueListener } from './queue.js';
import type { Operation, Work, WorkKind } from './work.js';

export { BufferInUseError, BufferNotAllocatedError } from './buffers.js';

/** What the backend says of the disk once connected. */
export interface DiskInfo {
  readonly sectors: number;
  readonly sectorSize: number;
  readonly physicalSectorSize: number;
  readonly readOnly: boolean;
  readonly cdrom: boolean;
  readonly removable: boolean;
  /** How a flush is carried: FLUSH_DISKCACHE, an empty WRITE_BARRIER, or not at all (a write-through disk). */
  readonly flush: 'flush' | 'barrier' | 'none';
  readonly barrier: boolean;
  readonly discard: { readonly granularity: number; readonly alignment: number; readonly secure: boolean } | undefined;
}

/** An I/O error the backend reported (BLKIF_RSP_ERROR). */
export class DiskIoError extends Error {
  readonly code = 'EIO';
}

/** An operation the backend does not support (BLKIF_RSP_EOPNOTSUPP, or a feature it never offered). */
export class DiskNotSupportedError extends Error {
  readonly code = 'EOPNOTSUPP';
}

/**
 * The block device a frontend gives its domain: reads, writes, flushes and
 * discards as promises. Operations queue up in order and are cut into
 * blkif requests as the rings have room, each no larger than the
 * negotiated segment limit. A flush or a barrier is an ordering point: it
 * goes to the backend once everything before it is answered, and nothing
 * after it goes until it is. While no backend is connected operations
 * wait; those in flight when the backend went are replayed, exactly once,
 * on the next connection (perhaps cut differently, if its limits differ).
 *
 * Data travels in the caller's own pages when they are page-aligned memory
 * of the domain (allocateBuffer gives such buffers): granted to the backend
 * as they are, with no allocation or copy per request. Any other buffer is
 * copied through bounce pages.
 */
export class BlockDevice implements QueueListener {
  private waiting: Work[] = [];
  private connection: { queues: BlkfrontQueue[]; info: DiskInfo; sectorsPerPiece: number; callerPages: CallerPageGrants } | undefined;
  private readonly buffers: DeviceBuffers;
  /** Pieces on the rings now. */
  private inFlight = 0;
  /** An ordering point is on a ring: nothing else goes until it is answered. */
  private holding = false;
  private nextSeq = 0;
  private nextQueue = 0;
  private connectedWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  private closed: Error | undefined;
  /** Suspended: nothing new goes to the rings until resumed. */
  private paused = false;

  /** `memory`: the domain's, which zero-copy buffers lie in (without it every buffer goes through bounce pages). */
  constructor(memory?: GuestMemory) {
    this.buffers = new DeviceBuffers(memory);
  }

  /** What the backend said of the disk, while connected. */
  get info(): DiskInfo | undefined {
    return this.connection?.info;
  }

  get connected(): boolean {
    return this.connection !== undefined;
  }

  /** Operations made and not yet answered: waiting to go, or on the rings. */
  get outstanding(): number {
    return this.waiting.length + this.inFlight;
  }

  /** Resolves once every operation made so far is answered. */
  idle(): Promise<void> {
    if (this.outstanding === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Resolves once a backend is connected. */
  whenConnected(): Promise<void> {
    if (this.connection) return Promise.resolve();
    return new Promise((resolve) => this.connectedWaiters.push(resolve));
  }

  /**
   * A page-aligned buffer of `bytes` (zeroed) in the domain's own memory:
   * reads into it and writes from it carry its pages to the backend as
   * they are, with no copy. Give it back with freeBuffer().
   */
  allocateBuffer(bytes: number): Uint8Array {
    return this.buffers.allocate(bytes);
  }

  /**
   * Gives back a buffer allocateBuffer() made. Refused (BufferInUseError)
   * while an operation on it is outstanding, and (BufferNotAllocatedError)
   * for any other buffer.
   */
  freeBuffer(buffer: Uint8Array): void {
    const { pfn, pages } = this.buffers.claimForFree(buffer);
    const held = this.connection?.callerPages.revoke(pfn, pages) ?? [];
    this.buffers.release(buffer, pfn, pages, held);
  }

  /** Reads `count` sectors into a new array (copied out of bounce pages). */
  read(sector: number, count: number): Promise<Uint8Array> {
    const data = new Uint8Array(count * SECTOR_SIZE);
    return this.readInto(sector, data).then(() => data);
  }

  /**
   * Reads whole sectors into `buffer`. A buffer of the domain's memory
   * that starts on a page boundary (allocateBuffer's) receives the data
   * directly; any other is filled from bounce pages. Either way it is
   * settled only after the backend answered.
   */
  readInto(sector: number, buffer: Uint8Array): Promise<void> {
    if (buffer.length === 0 || buffer.length % SECTOR_SIZE !== 0) {
      return Promise.reject(new RangeError(`a read into ${buffer.length} bytes is not a whole number of sectors`));
    }
    return this.submit('read', BlkifOp.READ, sector, buffer.length / SECTOR_SIZE, buffer, false);
  }

  /**
   * Writes whole sectors, from the buffer's own pages when it is
   * page-aligned memory of the domain (allocateBuffer's), else through
   * bounce pages. With `barrier`, every operation made before it is
   * complete before it is written, and it is durable before anything made
   * after it starts.
   */
  write(sector: number, data: Uint8Array, options: { barrier?: boolean } = {}): Promise<void> {
    if (data.length === 0 || data.length % SECTOR_SIZE !== 0) {
      return Promise.reject(new RangeError(`a write of ${data.length} bytes is not a whole number of sectors`));
    }
    const sectors = data.length / SECTOR_SIZE;
    if (!options.barrier) return this.submit('write', BlkifOp.WRITE, sector, sectors, data, false);
    // A barrier cannot be indirect: all but its last pages go first as plain
    // writes, cut on a page boundary so that a device buffer's barrier part
    // still starts on a page of its own (and goes without a copy).
    const beyond = Math.max(0, sectors - BLKIF_MAX_SEGMENTS_PER_REQUEST * SECTORS_PER_PAGE);
    const lead = Math.ceil(beyond / SECTORS_PER_PAGE) * SECTORS_PER_PAGE;
    const lastPiece = sectors - lead;
    const parts: Promise<void>[] = [];
    if (lead > 0) parts.push(this.submit('write', BlkifOp.WRITE, sector, lead, data.subarray(0, lead * SECTOR_SIZE), false));
    parts.push(this.submit('barrier', BlkifOp.WRITE_BARRIER, sector + lead, lastPiece, data.subarray(lead * SECTOR_SIZE), false));
    return Promise.all(parts).then(() => {});
  }

  /** Makes every write made before it durable (once they are all answered). */
  flush(): Promise<void> {
    return this.submit('flush', BlkifOp.FLUSH_DISKCACHE, 0, 0, undefined, false);
  }

  discard(sector: number, count: number, options: { secure?: boolean } = {}): Promise<void> {
    return this.submit('discard', BlkifOp.DISCARD, sector, count, undefined, options.secure ?? false);
  }

  /** A connection is up, over these queues: what waits (replays first, being oldest) goes out. */
  connect(queues: BlkfrontQueue[], info: DiskInfo, callerPages: CallerPageGrants): void {
    const segments = Math.min(...queues.map((queue) => queue.segmentsPerRequest));
    this.connection = { queues, info, sectorsPerPiece: segments * SECTORS_PER_PAGE, callerPages };
    for (const resolve of this.connectedWaiters.splice(0)) resolve();
    this.pump();
  }

  /**
   * The connection went: pieces the backend never answered go back to wait,
   * in the order they were made, and are sent again on the next connection.
   */
  disconnect(): void {
    const connection = this.connection;
    if (!connection) return;
    this.connection = undefined;
    const replays: Work[] = [];
    for (const queue of connection.queues) replays.push(...queue.close());
    this.inFlight = 0;
    this.holding = false;
    this.waiting = [...replays, ...this.waiting].sort((a, b) => a.seq - b.seq);
  }

  /** Stops sending requests (the domain is about to be suspended); those in flight stay. */
  pause(): void {
    this.paused = true;
  }

  /** Sends again what waits (after a resume, once a backend is connected). */
  unpause(): void {
    this.paused = false;
    this.pump();
  }

  /** The device is gone for good: everything waiting fails. */
  close(reason: Error): void {
    this.disconnect();
    this.closed = reason;
    for (const work of this.waiting.splice(0)) this.settle(work.op, reason);
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  /** A request's response (QueueListener). */
  requestAnswered(op: Operation, kind: WorkKind, sectors: number, status: number): void {
    this.inFlight--;
    if (kind === 'flush' || kind === 'barrier') this.holding = false;
    this.settlePiece(op, status, sectors);
  }

  /** Responses were taken off a ring: send what waits (QueueListener). */
  responsesTaken(): void {
    this.pump();
  }

  private submit(kind: WorkKind, operation: number, sector: number, sectors: number, data: Uint8Array | undefined, secure: boolean): Promise<void> {
    if (this.closed) return Promise.reject(this.closed);
    if (!Number.isSafeInteger(sector) || sector < 0 || !Number.isSafeInteger(sectors) || sectors < 0 || !Number.isSafeInteger(sector + sectors)) {
      return Promise.reject(new RangeError(`sectors ${sector} + ${sectors} are not a valid range`));
    }
    const info = this.connection?.info;
    if (info) {
      const refusal = this.refusal(info, kind, sector, sectors);
      if (refusal) return Promise.reject(refusal);
    }
    if (data && this.buffers.wasFreed(data)) return Promise.reject(new BufferNotAllocatedError('the buffer was freed: allocate another'));
    const firstPfn = data ? this.buffers.firstPfn(data) : -1;
    const pinnedPages = firstPfn >= 0 ? Math.ceil(data!.length / PAGE_SIZE) : 0;
    const ownBuffer = pinnedPages > 0 && this.buffers.allOwned(firstPfn, pinnedPages);
    return new Promise<void>((resolve, reject) => {
      if (pinnedPages > 0) this.buffers.pin(firstPfn, pinnedPages);
      const op: Operation = { open: Math.max(1, sectors), failure: undefined, pinnedPfn: firstPfn, pinnedPages, resolve, reject };
      this.waiting.push({ kind, operation, sector, sectors, data, dataOffset: 0, firstPfn, ownBuffer, secure, seq: this.nextSeq++, op });
      this.pump();
    });
  }

  /** Why the backend would refuse this anyway, said before it goes anywhere. */
  private refusal(info: DiskInfo, kind: WorkKind, sector: number, sectors: number): Error | undefined {
    if (sector + sectors > info.sectors) return new RangeError(`sectors ${sector}..${sector + sectors} are past the end of the disk (${info.sectors})`);
    if (info.readOnly && (kind === 'write' || kind === 'barrier' || kind === 'discard')) return new DiskIoError('the disk is read-only');
    if (kind === 'discard' && !info.discard) return new DiskNotSupportedError('the backend does not offer discard');
    if (kind === 'barrier' && !info.barrier) return new DiskNotSupportedError('the backend does not offer barriers');
    return undefined;
  }

  /** Sends what waits, then tells whoever waits for the device to be idle. */
  private pump(): void {
    this.sendWaiting();
    if (this.outstanding === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  /** Sends what waits while rings have room, respecting ordering points. */
  private sendWaiting(): void {
    const connection = this.connection;
    if (!connection || this.holding || this.paused) return;
    while (this.waiting.length > 0) {
      const work = this.waiting[0]!;
      const ordering = work.kind === 'flush' || work.kind === 'barrier';
      if (ordering && this.inFlight > 0) break;
      if (work.kind === 'flush' && connection.info.flush === 'none') {
        // A write-through disk: everything answered is already durable.
        this.waiting.shift();
        this.settlePiece(work.op, BlkifStatus.OKAY);
        continue;
      }
      const target = ordering ? connection.queues[0]! : this.queueWithRoom(connection.queues);
      if (!target || target.free === 0) break;
      // A discard goes whole; data goes at most one request's worth at a time.
      const sectors = work.kind === 'discard' ? work.sectors : Math.min(work.sectors, connection.sectorsPerPiece);
      if (!target.canCarry(work, sectors)) {
        // Short of pages: wait for answers to bring some back, unless none can.
        if (this.inFlight > 0) break;
        this.waiting.shift();
        this.settleFailure(work, new DiskIoError('the domain has no memory left for the request'));
        continue;
      }
      const operation = work.kind === 'flush' ? (connection.info.flush === 'barrier' ? BlkifOp.WRITE_BARRIER : BlkifOp.FLUSH_DISKCACHE) : work.operation;
      try {
        target.issue(work, sectors, operation);
      } catch (err) {
        this.waiting.shift();
        this.settleFailure(work, err as Error);
        continue;
      }
      this.inFlight++;
      if (sectors >= work.sectors) this.waiting.shift();
      else {
        work.sector += sectors;
        work.sectors -= sectors;
        work.dataOffset += sectors * SECTOR_SIZE;
      }
      if (ordering) {
        this.holding = true;
        break;
      }
    }
    for (const queue of connection.queues) queue.push();
  }

  private queueWithRoom(queues: BlkfrontQueue[]): BlkfrontQueue | undefined {
    for (let i = 0; i < queues.length; i++) {
      const candidate = queues[(this.nextQueue + i) % queues.length]!;
      if (candidate.free > 0) {
        this.nextQueue = (this.nextQueue + i + 1) % queues.length;
        return candidate;
      }
    }
    return undefined;
  }

  private settlePiece(op: Operation, status: number, sectors = 0): void {
    if (status === BlkifStatus.EOPNOTSUPP) op.failure ??= new DiskNotSupportedError('the backend does not support this operation');
    else if (status !== BlkifStatus.OKAY) op.failure ??= new DiskIoError(`the backend reported an I/O error (status ${status})`);
    op.open -= Math.max(1, sectors);
    if (op.open <= 0) this.settle(op, op.failure);
  }

  /**
   * What is left of `work` cannot be sent: its operation fails, once the
   * pieces of it already on the rings are answered (a read's buffer is
   * the backend's until then).
   */
  private settleFailure(work: Work, err: Error): void {
    const { op } = work;
    op.failure ??= err;
    op.open -= Math.max(1, work.sectors);
    if (op.open <= 0) this.settle(op, op.failure);
  }

  private settle(op: Operation, failure: Error | undefined): void {
    if (op.pinnedPages > 0) {
      this.buffers.unpin(op.pinnedPfn, op.pinnedPages);
      op.pinnedPages = 0;
    }
    if (failure) op.reject(failure);
    else op.resolve();
  }
}
