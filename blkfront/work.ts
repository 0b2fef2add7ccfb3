/** What a caller asked the block device for, as it waits for the rings and travels on them. */

/** The kinds of operation a caller makes. */
export type WorkKind = 'read' | 'write' | 'barrier' | 'flush' | 'discard';

/** A caller's operation: done once every piece of it is answered. */
export interface Operation {
  /** Sectors not yet cut into pieces, plus pieces not yet answered. */
  open: number;
  failure: Error | undefined;
  /** The pages of the domain's memory the operation's buffer lies in, held until it settles (none once settled). */
  readonly pinnedPfn: number;
  pinnedPages: number;
  resolve(): void;
  reject(err: Error): void;
}

/**
 * Work waiting for a ring: the rest of an operation, cut into requests as
 * rings have room. A piece a connection took and never answered comes back
 * as work of its own (same operation, same seq), to be sent again.
 */
export interface Work {
  readonly kind: WorkKind;
  /** The BLKIF_OP_* it goes as (a flush's is chosen per connection). */
  readonly operation: number;
  sector: number;
  sectors: number;
  /** What a write writes, where a read's data goes; from dataOffset on is still to send. */
  readonly data: Uint8Array | undefined;
  dataOffset: number;
  /**
   * The page of the domain's memory data[0] starts, when data is
   * page-aligned memory of the domain: its pages are granted as they are
   * (zero-copy). -1: data goes through bounce pages.
   */
  readonly firstPfn: number;
  /** data lies in buffers the device allocated: their pages' grants may be kept across requests (persistent grants). */
  readonly ownBuffer: boolean;
  readonly secure: boolean;
  /** Submission order, kept when pieces are replayed. */
  readonly seq: number;
  readonly op: Operation;
}
