import { Piscina } from 'piscina';
import type { PlatformLink } from '../shared/platform.js';
import type { IoOutcome, IoTask } from './io-task.js';

/**
 * I/O workers per driver domain. Each does one task at a time with
 * blocking system calls. Handing a task to a sleeping worker costs a
 * thread wake-up, which on a small machine costs more than a 4 KiB read
 * from the page cache; two workers, each given a batch, measured best on
 * two cores (npm run bench:blk).
 */
export const IO_THREADS = 2;

/**
 * How an I/O worker reaches a frontend's pages: it maps them and reads or
 * writes them in place, or it copies them through the hypervisor
 * (GNTTABOP_copy) to and from a buffer of its own, as QEMU's Xen disk does.
 */
export type GrantAccess = 'map' | 'copy';

/**
 * The pool of I/O workers every block backend of a driver domain shares, so
 * that a slow store stalls its own requests, never a ring.
 */
export class IoPool {
  private readonly piscina: Piscina<IoTask, IoOutcome[]>;

  constructor(link: PlatformLink, readonly threads = IO_THREADS, grantAccess: GrantAccess = 'map') {
    this.piscina = new Piscina({
      filename: new URL('./io-worker.js', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      concurrentTasksPerWorker: 1,
      // A task is handed over as soon as one is queued; no waiting for more.
      idleTimeout: Number.POSITIVE_INFINITY,
      workerData: { link, grantAccess },
    });
  }

  run(task: IoTask): Promise<IoOutcome[]> {
    return this.piscina.run(task);
  }

  async close(): Promise<void> {
    await this.piscina.destroy();
  }
}
