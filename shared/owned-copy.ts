/**
 * Copies of bytes that the daemon keeps for long, in allocations of their own.
 *
 * A slice keeps all of the memory it was cut from alive. Node hands out
 * buffers smaller than half of `Buffer.poolSize` (8 KiB) as slices of a
 * shared slab (`Buffer.from`, `Buffer.allocUnsafe`), and a request's payload
 * is a slice of what its transport read: a value of a few bytes kept that way
 * can hold kilobytes while counting as a few bytes. What is kept past the
 * request that brought it is copied out with `ownedCopy`, so that what is
 * counted is what is held.
 */

const EMPTY = Buffer.alloc(0);

/** A copy of `bytes` in an allocation of exactly its size. */
export function ownedCopy(bytes: Uint8Array): Buffer {
  if (bytes.length === 0) return EMPTY;
  // allocUnsafeSlow never takes from the pool; every byte is overwritten at once.
  const copy = Buffer.allocUnsafeSlow(bytes.length);
  copy.set(bytes);
  return copy;
}
