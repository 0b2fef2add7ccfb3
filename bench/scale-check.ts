/** What a guest of `npm run bench:scale` reports once its disk has done its write and read. */

/** Where a guest's check goes, under its home. */
export const CHECK_NODE = 'data/scale-check';

export interface ScaleCheck {
  readonly ok: boolean;
  readonly why?: string;
  /** The guest's kernel worker's heap then, in bytes. */
  readonly heapUsed: number;
}
