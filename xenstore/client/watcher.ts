/** One watch event: the path that changed (relative if the watch was set relative) and the token. */
export interface WatchEvent {
  path: string;
  token: string;
}

/**
 * The events of one watch as an async iterator. Events queue up until they
 * are consumed; ending the iteration early (`break`, `return()`) or calling
 * `close()` removes the watch from xenstored.
 */
export class Watcher implements AsyncIterableIterator<WatchEvent> {
  private readonly queue: WatchEvent[] = [];
  private waiting: ((result: IteratorResult<WatchEvent>) => void) | undefined;
  private ended = false;
  private closing: Promise<void> | undefined;
  /** Set once xenstored confirmed the watch; a reconnecting client sets only these again. */
  registered = false;

  constructor(
    readonly path: string,
    readonly token: string,
    readonly depth: number | undefined,
    private readonly unwatch: () => Promise<void>,
  ) {}

  /** Called by the client for each event carrying this watch's token. */
  push(event: WatchEvent): void {
    if (this.ended) return;
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = undefined;
      resolve({ value: event, done: false });
    } else {
      this.queue.push(event);
    }
  }

  /** Ends the iteration without talking to xenstored (the connection is gone). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.queue.length = 0;
    const resolve = this.waiting;
    this.waiting = undefined;
    resolve?.({ value: undefined, done: true });
  }

  /** Events received and not yet consumed. */
  get pendingEvents(): number {
    return this.queue.length;
  }

  next(): Promise<IteratorResult<WatchEvent>> {
    const event = this.queue.shift();
    if (event) return Promise.resolve({ value: event, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  /** Removes the watch; further events are discarded. */
  close(): Promise<void> {
    if (!this.closing) {
      this.end();
      this.closing = this.unwatch();
    }
    return this.closing;
  }

  async return(): Promise<IteratorResult<WatchEvent>> {
    await this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<WatchEvent> {
    return this;
  }
}
