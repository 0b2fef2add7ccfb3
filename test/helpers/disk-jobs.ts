/**
 * The host's side of the disk jobs a guest running
 * test/helpers/disk-kernel-worker.ts carries out: make an image, hand the
 * guest a job through its `data/` directory, and wait for what it reports.
 */
import { closeSync, ftruncateSync, openSync } from 'node:fs';
import type { XenStoreClient } from '../../xenstore/client/client.js';
import { waitFor } from './daemon.js';

/** The size of the blocks a job writes: block `i` at sector 8 i. */
export const DISK_BLOCK_BYTES = 4096;

/** The contents of block `i`: its number in every word, so that any misplaced block shows. */
export function diskBlock(i: number): Uint8Array {
  const data = new Uint8Array(DISK_BLOCK_BYTES);
  new Uint32Array(data.buffer).fill((i * 2654435761) >>> 0);
  return data;
}

/** The kernel module that runs disk jobs. */
export const DISK_KERNEL = new URL('./disk-kernel-worker.js', import.meta.url);

export interface DiskJob {
  readonly id: string;
  readonly kind: 'write' | 'verify';
  readonly count: number;
  readonly depth: number;
  /** The disk (its virtual-device number) the job goes to; the guest's first disk if absent. */
  readonly devid?: number;
}

export interface DiskJobResult {
  readonly id: string;
  readonly acked: number;
  readonly errors: number;
  readonly mismatches: number;
  readonly settledTwice: number;
}

/** A sparse image file of `bytes`. */
export function makeImage(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
}

/** Gives the guest a job, runs `during` while it works, and waits for its result. */
export async function runDiskJob(
  xs: XenStoreClient,
  guestDomid: number,
  job: DiskJob,
  during?: () => Promise<void>,
  timeoutMs = 90_000,
): Promise<DiskJobResult> {
  const data = `/local/domain/${guestDomid}/data`;
  await xs.write(`${data}/disk-job`, JSON.stringify(job));
  await during?.();
  let result: DiskJobResult | undefined;
  await waitFor(
    () => {
      void xs.tryRead(`${data}/disk-result`).then((text) => {
        const parsed = text ? (JSON.parse(text) as DiskJobResult) : undefined;
        if (parsed?.id === job.id) result = parsed;
      });
      return result !== undefined;
    },
    `job ${job.id}`,
    timeoutMs,
  );
  return result!;
}

/** The number of writes the guest has had acknowledged so far in its current job. */
export async function diskProgress(xs: XenStoreClient, guestDomid: number): Promise<number> {
  return Number((await xs.tryRead(`/local/domain/${guestDomid}/data/disk-progress`)) ?? 0);
}

/** Waits until the guest has had `count` writes of its current job acknowledged. */
export async function waitForProgress(xs: XenStoreClient, guestDomid: number, count: number, timeoutMs = 30_000): Promise<void> {
  let progress = 0;
  await waitFor(
    () => {
      void diskProgress(xs, guestDomid).then((p) => (progress = p));
      return progress >= count;
    },
    'the guest to be writing',
    timeoutMs,
  );
}
