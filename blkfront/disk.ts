import { BlkifOp, BlkifStatus, BLKIF_MAX_SEGMENTS_PER_REQUEST, SECTOR_SIZE, SECTORS_PER_PAGE } from '../shared/blkif.js';
import type { FrontQueue, Piece } from './ring.js';

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

/** A piece of a caller's operation, as the rings carry it. */
export interface DiskPiece extends Piece {
  readonly op: Operation;
}

/** A ring of the current connection and how to signal its backend. */
export interface ConnectedQueue {
  readonly queue: FrontQueue<DiskPiece>;
  readonly notify: () => void;
}

/** An I/O error the backend reported (BLKIF_RSP_ERROR). */
export class DiskIoError extends Error {
  readonly code = 'EIO';
}

/** An operation the backend does not support (BLKIF_RSP_EOPNOTSUPP, or a feature it never offered). */
export class DiskNotSupportedError extends Error {
  readonly code = 'EOPNOTSUPP';
}

/** A caller's operation: done once every piece of it is answered. */
export interface Operation {
  /** Sectors not yet cut into pieces, plus pieces not yet answered. */
  open: number;
  failure: Error | undefined;
  resolve(): void;
  reject(err: Error): void;
}

/** Work waiting for a ring: the rest of an operation, cut into pieces as rings have room. */
interface Work {
  readonly kind: Piece['kind'];
  readonly operation: number;
  sector: number;
  sectors: number;
  data: Uint8Array | undefined;
  readonly secure: boolean;
  readonly seq: number;
  readonly op: Operation;
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
 */
export class BlockDevice {
  private waiting: Work[] = [];
  private connection: { queues: ConnectedQueue[]; info: DiskInfo; sectorsPerPiece: number } | undefined;
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

  read(sector: number, count: number): Promise<Uint8Array> {
    const data = new Uint8Array(count * SECTOR_SIZE);
    return this.submit('read', BlkifOp.READ, sector, count, data, false).then(() => data);
  }

  /**
   * Writes whole sectors. With `barrier`, every operation made before it is
   * complete before it is written, and it is durable before anything made
   * after it starts.
   */
  write(sector: number, data: Uint8Array, options: { barrier?: boolean } = {}): Promise<void> {
    if (data.length === 0 || data.length % SECTOR_SIZE !== 0) {
      return Promise.reject(new RangeError(`a write of ${data.length} bytes is not a whole number of sectors`));
    }
    const sectors = data.length / SECTOR_SIZE;
    if (!options.barrier) return this.submit('write', BlkifOp.WRITE, sector, sectors, data, false);
    // A barrier cannot be indirect: all but its last pages go first as plain writes.
    const lastPiece = Math.min(sectors, BLKIF_MAX_SEGMENTS_PER_REQUEST * SECTORS_PER_PAGE);
    const lead = sectors - lastPiece;
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

  /** A connection is up: what waits (replays first, being oldest) goes out. */
  connect(queues: ConnectedQueue[], info: DiskInfo, segmentsPerRequest: number): void {
    this.connection = { queues, info, sectorsPerPiece: segmentsPerRequest * SECTORS_PER_PAGE };
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
    for (const { queue } of connection.queues) {
      // Answers the backend gave before it went count: only the unanswered
      // are sent again, so that each request is done exactly once.
      try {
        queue.takeResponses();
      } catch {
        // A ring the backend broke: what it says is not believed.
      }
      for (const piece of queue.abandon()) replays.push(workOf(piece));
    }
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

  /** Responses arrived on a ring: settle them, then send what waits. */
  responsesArrived(queue: FrontQueue<DiskPiece>): void {
    queue.takeResponses();
    this.pump();
  }

  private submit(kind: Piece['kind'], operation: number, sector: number, sectors: number, data: Uint8Array | undefined, secure: boolean): Promise<void> {
    if (this.closed) return Promise.reject(this.closed);
    if (!Number.isSafeInteger(sector) || sector < 0 || !Number.isSafeInteger(sectors) || sectors < 0) {
      return Promise.reject(new RangeError(`sectors ${sector} + ${sectors} are not a valid range`));
    }
    const info = this.connection?.info;
    if (info) {
      const refusal = this.refusal(info, kind, sector, sectors);
      if (refusal) return Promise.reject(refusal);
    }
    return new Promise<void>((resolve, reject) => {
      const op: Operation = { open: Math.max(1, sectors), failure: undefined, resolve, reject };
      this.waiting.push({ kind, operation, sector, sectors, data, secure, seq: this.nextSeq++, op });
      this.pump();
    });
  }

  /** Why the backend would refuse this anyway, said before it goes anywhere. */
  private refusal(info: DiskInfo, kind: Piece['kind'], sector: number, sectors: number): Error | undefined {
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
    const touched = new Set<ConnectedQueue>();
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
      if (!target || target.queue.free === 0) break;
      const sectors = this.pieceSectors(work, connection);
      if (!target.queue.canCarry(sectors)) {
        // Short of pages: wait for answers to bring some back, unless none can.
        if (this.inFlight > 0) break;
        this.waiting.shift();
        this.settleFailure(work.op, new DiskIoError('the domain has no memory left for the request'));
        continue;
      }
      const piece = this.cut(work, connection);
      try {
        target.queue.issue(piece);
      } catch (err) {
        this.settleFailure(work.op, err as Error);
        continue;
      }
      this.inFlight++;
      touched.add(target);
      if (ordering) {
        this.holding = true;
        break;
      }
    }
    for (const target of touched) if (target.queue.push()) target.notify();
  }

  private queueWithRoom(queues: ConnectedQueue[]): ConnectedQueue | undefined {
    for (let i = 0; i < queues.length; i++) {
      const candidate = queues[(this.nextQueue + i) % queues.length]!;
      if (candidate.queue.free > 0) {
        this.nextQueue = (this.nextQueue + i + 1) % queues.length;
        return candidate;
      }
    }
    return undefined;
  }

  /** The next piece of the work at the head of the queue (all of it, if it fits). */
  /** Sectors of data the next piece of `work` carries: at most what one request takes. */
  private pieceSectors(work: Work, connection: NonNullable<BlockDevice['connection']>): number {
    if (work.kind === 'flush' || work.kind === 'discard') return 0;
    return Math.min(work.sectors, connection.sectorsPerPiece);
  }

  private cut(work: Work, connection: NonNullable<BlockDevice['connection']>): DiskPiece {
    const sectors = work.kind === 'discard' ? work.sectors : this.pieceSectors(work, connection);
    const operation = work.kind === 'flush' ? (connection.info.flush === 'barrier' ? BlkifOp.WRITE_BARRIER : BlkifOp.FLUSH_DISKCACHE) : work.operation;
    const piece: DiskPiece = {
      op: work.op,
      kind: work.kind,
      operation,
      sector: work.sector,
      sectors,
      data: work.data?.subarray(0, sectors * SECTOR_SIZE),
      secure: work.secure,
      seq: work.seq,
      settle: (status) => {
        this.inFlight--;
        if (work.kind === 'flush' || work.kind === 'barrier') this.holding = false;
        this.settlePiece(work.op, status, sectors);
      },
    };
    if (sectors >= work.sectors) this.waiting.shift();
    else {
      work.sector += sectors;
      work.sectors -= sectors;
      work.data = work.data?.subarray(sectors * SECTOR_SIZE);
    }
    return piece;
  }

  private settlePiece(op: Operation, status: number, sectors = 0): void {
    if (status === BlkifStatus.EOPNOTSUPP) op.failure ??= new DiskNotSupportedError('the backend does not support this operation');
    else if (status !== BlkifStatus.OKAY) op.failure ??= new DiskIoError(`the backend reported an I/O error (status ${status})`);
    op.open -= Math.max(1, sectors);
    if (op.open <= 0) this.settle(op, op.failure);
  }

  private settleFailure(op: Operation, err: Error): void {
    op.open = 0;
    this.settle(op, err);
  }

  private settle(op: Operation, failure: Error | undefined): void {
    if (failure) op.reject(failure);
    else op.resolve();
  }
}

/** A piece handed back unanswered, as work to send again. */
function workOf(piece: DiskPiece): Work {
  return {
    kind: piece.kind,
    operation: piece.kind === 'flush' ? BlkifOp.FLUSH_DISKCACHE : piece.operation,
    sector: piece.sector,
    sectors: piece.sectors,
    data: piece.data,
    secure: piece.secure,
    seq: piece.seq,
    op: piece.op,
  };
}
