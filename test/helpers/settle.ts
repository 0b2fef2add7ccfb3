/**
 * How a promise stands after a while: a test that must show that something
 * settles (or does not) reports it as a failed assertion, rather than
 * hanging until tap's own timeout kills the file.
 */
export type Settled<T> = { state: 'resolved'; value: T } | { state: 'rejected'; error: Error } | { state: 'pending' };

export function settleWithin<T>(promise: Promise<T>, timeoutMs: number): Promise<Settled<T>> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ state: 'pending' }), timeoutMs);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve({ state: 'resolved', value });
      },
      (error: unknown) => {
        clearTimeout(timer);
        resolve({ state: 'rejected', error: error instanceof Error ? error : new Error(String(error)) });
      },
    );
  });
}
