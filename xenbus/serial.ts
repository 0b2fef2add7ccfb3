/**
 * Runs tasks one after another, in the order they were queued, whatever
 * each awaits: a device's events never overlap, so that an attach in
 * progress is never raced by the detach that follows it.
 */
export class SerialQueue {
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;

  constructor(
    private readonly onError: (err: unknown) => void,
    /** Called each time the last queued task has finished. */
    private readonly onIdle?: () => void,
  ) {}

  /** Queues a task whose failure goes to the queue's error handler. */
  run(task: () => Promise<void> | void): Promise<void> {
    return this.call(task).catch(this.onError);
  }

  /** Queues a task and hands its result, or its failure, to the caller. */
  call<T>(task: () => Promise<T> | T): Promise<T> {
    this.queued++;
    const result = this.tail.then(task).finally(() => {
      if (--this.queued === 0) this.onIdle?.();
    });
    this.tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  /** Whether nothing is queued or running. */
  get idle(): boolean {
    return this.queued === 0;
  }

  /** Resolves once everything queued so far has run. */
  drained(): Promise<void> {
    return this.tail;
  }
}
