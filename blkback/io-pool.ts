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
 * writes them in place; it copies them through the hypervisor
 * (GNTTABOP_copy) to and from a buffer of its own, as QEMU's Xen disk does;
 * or (auto) it copies operations of up to AUTO_COPY_MAX_PAGES pages and
 * maps larger ones.
 */
export type GrantAccess = 'map' | 'copy' | 'auto';

/**
 * Where copying stops paying on Xen: for a process in dom0, a grant copy
 * cost 0.2-0.5x a map and unmap of 1 to 11 pages, and 1.2-1.5x of 32 to 256
 * (npm run bench:xen-grants under QEMU; BENCHMARKS.md).
 */
export const AUTO_COPY_MAX_PAGES = 16;

/** Whether an operation of `pages` pages goes by grant copy. */
export function copiesGrants(access: GrantAccess, pages: number): boolean {
  return access === 'copy' || (access === 'auto' && pages <= AUTO_COPY_MAX_PAGES);
}

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
