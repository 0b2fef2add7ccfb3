/** The machine's workers, each a module of host/machine/workers/. */
export type WorkerName = 'kernel-worker' | 'xenstored-worker' | 'backend-worker';
export const WORKER_NAMES: readonly WorkerName[] = ['kernel-worker', 'xenstored-worker', 'backend-worker'];

/** Where a worker's module is, for the Supervisor to start it from wherever its caller lives. */
export function workerModule(name: WorkerName): URL {
  return new URL(`./workers/${name}.js`, import.meta.url);
}
