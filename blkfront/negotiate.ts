import { BLKIF_MAX_SEGMENTS_PER_REQUEST, XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64, type BlkifAbi } from '../shared/blkif.js';
import type { RingSizeScheme } from '../shared/blkif-keys.js';
import { roundDownPow2 } from '../shared/ring.js';
import type { XenbusDevice } from '../xenbus/device.js';

/** What a frontend is willing to use; the backend's offer can only lower it. */
export interface FrontendLimits {
  /** The largest ring, as a page order. */
  readonly maxRingPageOrder: number;
  readonly maxQueues: number;
  /** Segments per indirect request (0: never indirect). */
  readonly maxIndirectSegments: number;
  readonly persistent: boolean;
  /** The ABI of the ring's requests and responses. */
  readonly abi: BlkifAbi;
  /**
   * Which keys announce a multi-page ring: Linux's `ring-page-order`,
   * the older `num-ring-pages`, or both with the same size (blkif.h's note 3).
   */
  readonly ringKeys: RingSizeScheme;
  /**
   * Where each ring's free-running indexes start (ring.h's
   * FRONT_RING_ATTACH): 0, as Linux does; tests start them just below 2^32
   * to cross the wrap-around.
   */
  readonly firstRingIndex: number;
}

/**
 * Segments per indirect request a frontend asks for unless told otherwise:
 * 256, Linux blkback's MAX_INDIRECT_SEGMENTS (drivers/block/xen-blkback/
 * common.h), the most a Linux backend offers; with 4 KiB pages a 1 MiB
 * I/O is then one request (one indirect page of 256 segments) where
 * Linux blkfront's own default of 32 (its max_indirect_segments) cuts it
 * into 8.
 */
export const BLKFRONT_MAX_INDIRECT_SEGMENTS = 256;

/**
 * A frontend's limits unless told otherwise: Linux blkfront's queues (4),
 * indirect requests as large as a Linux backend takes, and rings of 4
 * pages (128 requests each) where Linux stays with one page unless told
 * otherwise.
 */
export const DEFAULT_FRONTEND_LIMITS: FrontendLimits = {
  maxRingPageOrder: 2,
  maxQueues: 4,
  maxIndirectSegments: BLKFRONT_MAX_INDIRECT_SEGMENTS,
  persistent: true,
  abi: 'x86_64',
  ringKeys: 'both',
  firstRingIndex: 0,
};

/** What this connection uses: the lesser of both ends, each missing key read as the original protocol. */
export interface Negotiated {
  readonly ringPages: number;
  readonly queues: number;
  /** Segments per request: 11, or the indirect limit if both ends take indirect requests. */
  readonly segmentsPerRequest: number;
  readonly indirect: boolean;
  readonly persistent: boolean;
  readonly abi: BlkifAbi;
}

/** The name blkif.h's `protocol` key gives an ABI. */
export function protocolName(abi: BlkifAbi): string {
  return abi === 'x86_32' ? XEN_IO_PROTO_ABI_X86_32 : XEN_IO_PROTO_ABI_X86_64;
}

/**
 * Reads the backend's offer and settles on the lesser of it and our
 * limits. A backend that published nothing gets the original protocol: one
 * page, one queue, 11 segments, no persistent grants. Malformed offers are
 * read as absent. Each limit the backend lowered is logged.
 */
export async function negotiate(device: XenbusDevice, limits: FrontendLimits): Promise<Negotiated> {
  const offered = async (key: string): Promise<number | undefined> => {
    const value = await device.readOtherendInt(key, -1).catch(() => -1);
    return value < 0 ? undefined : value;
  };
  const lowered: string[] = [];

  // Either scheme may name the ring's limit; take the larger, as blkif.h's maximum does.
  const order = await offered('max-ring-page-order');
  const pages = await offered('max-ring-pages');
  const backendPages = Math.max(order === undefined ? 1 : 2 ** Math.min(order, 16), pages === undefined || pages < 1 ? 1 : roundDownPow2(pages));
  const ownPages = 2 ** limits.maxRingPageOrder;
  const ringPages = Math.min(ownPages, backendPages);
  if (ringPages < ownPages) lowered.push(`ring of ${ringPages} page(s), not ${ownPages}`);

  const backendQueues = Math.max(1, (await offered('multi-queue-max-queues')) ?? 1);
  const queues = Math.min(limits.maxQueues, backendQueues);
  if (queues < limits.maxQueues) lowered.push(`${queues} queue(s), not ${limits.maxQueues}`);

  const backendIndirect = (await offered('feature-max-indirect-segments')) ?? 0;
  const indirectSegments = Math.min(limits.maxIndirectSegments, backendIndirect);
  const indirect = indirectSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST;
  if (limits.maxIndirectSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST && indirectSegments < limits.maxIndirectSegments) {
    lowered.push(indirect ? `indirect requests of ${indirectSegments} segments, not ${limits.maxIndirectSegments}` : 'no indirect requests');
  }

  const persistent = limits.persistent && ((await offered('feature-persistent')) ?? 0) !== 0;
  if (limits.persistent && !persistent) lowered.push('no persistent grants');

  if (lowered.length > 0) device.log.info(`${device.node}: the backend's offer lowered our limits: ${lowered.join('; ')}`);
  return {
    ringPages,
    queues,
    segmentsPerRequest: indirect ? indirectSegments : BLKIF_MAX_SEGMENTS_PER_REQUEST,
    indirect,
    persistent,
    abi: limits.abi,
  };
}
