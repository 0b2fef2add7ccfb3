/**
 * A pool of equal chunks of the control buffer (grant frames, port groups)
 * that domains take as they need them and give back when they die. A bit
 * per chunk says it is taken; chunks are taken lowest first, so the pages
 * of the pool that are ever written are those of the most chunks ever held
 * at once, and a chunk comes back zeroed, ready for its next domain.
 */
export interface ChunkPool {
  /** Word offset of the bitmap of taken chunks. */
  readonly bitmap: number;
  /** Word offset of chunk 0. */
  readonly base: number;
  readonly chunkWords: number;
  readonly chunks: number;
}

/** Takes the lowest free chunk; its word offset, or -1 if every chunk is taken. */
export function takeChunk(words: Int32Array, pool: ChunkPool): number {
  const bitmapWords = Math.ceil(pool.chunks / 32);
  for (let w = 0; w < bitmapWords; w++) {
    let taken = Atomics.load(words, pool.bitmap + w);
    while (taken !== -1) {
      const bit = 31 - Math.clz32(~taken & (taken + 1));
      const chunk = w * 32 + bit;
      if (chunk >= pool.chunks) return -1;
      const mask = 1 << bit;
      const before = Atomics.or(words, pool.bitmap + w, mask);
      if ((before & mask) === 0) return chunkBase(pool, chunk);
      taken = before | mask;
    }
  }
  return -1;
}

/** Zeroes a chunk nobody uses any more and gives it back. */
export function giveChunk(words: Int32Array, pool: ChunkPool, base: number): void {
  words.fill(0, base, base + pool.chunkWords);
  const chunk = (base - pool.base) / pool.chunkWords;
  Atomics.and(words, pool.bitmap + (chunk >>> 5), ~(1 << (chunk & 31)));
}

export function chunkBase(pool: ChunkPool, chunk: number): number {
  return pool.base + chunk * pool.chunkWords;
}
