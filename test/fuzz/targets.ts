/**
 * The fuzz targets by name, for the tap entry points and `npm run fuzz`.
 * Each is imported only when used: the block fuzzer starts I/O workers.
 */
import type { OpenTarget, TargetName } from './runner.js';

export const TARGETS: readonly TargetName[] = ['xenstore', 'blkif'];

export async function openerOf(target: TargetName): Promise<OpenTarget> {
  if (target === 'xenstore') {
    const { runXenstoreBatch } = await import('./xs-batch.js');
    return async (logs) => ({
      async batch(seed) {
        const s = await runXenstoreBatch(seed, logs);
        return `${s.requests} requests, ${s.replies} replies and ${s.events} watch events checked, ${s.cutOffs} clients rightly cut off`;
      },
      async close() {},
    });
  }
  const { openBlkifFuzz } = await import('./blk-batch.js');
  return openBlkifFuzz;
}
