/**
 * Below this many consumed slots a FIFO does not bother to compact: moving a
 * few dozen references is not worth a new array.
 */
const COMPACT_MIN = 64;

/**
 * A first-in first-out queue costing O(1) per item to add and to take.
 *
 * `Array.prototype.shift` moves every remaining element once the array is
 * too big for V8 to trim it in place (its backing store is in the large
 * object space past 128 KiB, some 16,000 references), so draining a long
 * queue with it costs quadratic time. Here the items are read from a head
 * index instead, and the consumed prefix is cut off only once it is at least
 * half of the array: every item is moved at most once on average.
 */
export class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  /** The oldest item, left in place. */
  peek(): T | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  /** Takes the oldest item out. */
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= COMPACT_MIN && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Empties the queue, returning what it held, oldest first. */
  takeAll(): T[] {
    const rest = this.items.slice(this.head) as T[];
    this.items = [];
    this.head = 0;
    return rest;
  }
}
