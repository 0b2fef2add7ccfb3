import type { StoreHandle } from './store.js';

/**
 * The work an I/O worker does for the request queue: reads and writes
 * straight between the store and pages a frontend granted, flushes and
 * discards. Everything here is structured-clonable: handles travel, the
 * worker maps the pages itself.
 */
export interface IoTask {
  readonly store: StoreHandle;
  /** The domain whose grants the pages are (the frontend), and the one mapping them (ours). */
  readonly granter: number;
  readonly mapper: number;
  readonly ops: readonly IoOp[];
}

/** Bytes `start` .. `start + length` of the page a grant reference names. */
export interface PageChunk {
  readonly gref: number;
  readonly start: number;
  readonly length: number;
}

export type IoOp =
  /** Store bytes from `offset` on, to or from the chunks in order. */
  | { readonly op: 'read' | 'write'; readonly offset: number; readonly chunks: readonly PageChunk[] }
  /** Makes every completed write durable. */
  | { readonly op: 'flush' }
  | { readonly op: 'discard'; readonly offset: number; readonly length: number; readonly secure: boolean };

/** Per op: null when it succeeded, else the errno name it failed with. */
export type IoOutcome = string | null;
