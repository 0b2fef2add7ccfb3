import { XsError } from '../shared/errors.js';
import type { XenbusDevice } from './device.js';

/**
 * How a frontend publishes the grant references of a shared ring, as
 * blkif.h names the keys: `ring-ref` for a single page (the original
 * protocol, which every backend understands), `ring-page-order` and
 * `ring-ref0` .. `ring-ref<2^order - 1>` for a multi-page ring.
 */
export function ringKeys(grefs: readonly number[]): Record<string, number> {
  const order = Math.log2(grefs.length);
  if (!Number.isInteger(order)) throw new RangeError(`a ring of ${grefs.length} pages is not a power of two`);
  if (order === 0) return { 'ring-ref': grefs[0]! };
  const keys: Record<string, number> = { 'ring-page-order': order };
  grefs.forEach((gref, i) => (keys[`ring-ref${i}`] = gref));
  return keys;
}

/** Every ring key a ring of up to 2^maxOrder pages may have left from an earlier connection. */
export function ringKeyNames(maxOrder: number): string[] {
  return ['ring-ref', 'ring-page-order', ...Array.from({ length: 1 << maxOrder }, (_, i) => `ring-ref${i}`)];
}

/**
 * Grants references of the ring the other end (a frontend) published:
 * `ring-ref` if it published no `ring-page-order`, else one reference per
 * page. An order above `maxOrder` (what this end offered), a missing
 * reference or one that is not an integer is EINVAL or ENOENT.
 */
export async function readRingRefs(device: XenbusDevice, maxOrder: number): Promise<number[]> {
  const order = await device.readOtherendInt('ring-page-order', -1);
  if (order === -1) return [await device.readOtherendInt('ring-ref')];
  if (order < 0 || order > maxOrder) throw new XsError('EINVAL', `ring-page-order ${order} is not in 0..${maxOrder}`);
  const refs: number[] = [];
  for (let i = 0; i < 1 << order; i++) refs.push(await device.readOtherendInt(`ring-ref${i}`));
  return refs;
}
