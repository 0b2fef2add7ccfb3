/**
 * The xenstore keys that carry a blkif's transport (xen/io/blkif.h,
 * "Request Transport Parameters" and "Multiple Hardware Queues/Rings"),
 * which other ring-based devices (the echo device) reuse: what a frontend
 * publishes and what a backend reads back and checks.
 *
 * A ring of one page is `ring-ref`, the original protocol that every
 * backend understands. A ring of 2^N pages is announced by
 * `ring-page-order` (N) or the older `num-ring-pages` (2^N; blkif.h's note
 * 2 calls it deprecated, note 3 lets a frontend write both with the same
 * size), its pages by `ring-ref0` .. `ring-ref<2^N - 1>` (note 6). One
 * queue keeps its `ring-ref*` and `event-channel` at the top of the
 * frontend's directory; several are counted by `multi-queue-num-queues`
 * (at most the backend's `multi-queue-max-queues`) and each has its own
 * under `queue-<N>/`, sharing the top-level ring size.
 */
import { XsError } from './errors.js';
import { abiForProtocol, type BlkifAbi } from './blkif.js';

export const RING_REF = 'ring-ref';
export const RING_PAGE_ORDER = 'ring-page-order';
/** Deprecated (blkif.h note 2), still written by older frontends. */
export const NUM_RING_PAGES = 'num-ring-pages';
export const MAX_RING_PAGE_ORDER = 'max-ring-page-order';
/** Deprecated (blkif.h note 2), still read by older frontends. */
export const MAX_RING_PAGES = 'max-ring-pages';
export const EVENT_CHANNEL = 'event-channel';
export const PROTOCOL = 'protocol';
export const MULTI_QUEUE_NUM_QUEUES = 'multi-queue-num-queues';
export const MULTI_QUEUE_MAX_QUEUES = 'multi-queue-max-queues';
export const FEATURE_PERSISTENT = 'feature-persistent';

/** Which keys announce a multi-page ring's size: `ring-page-order`, `num-ring-pages`, or both (blkif.h note 3). */
export type RingSizeScheme = 'order' | 'pages' | 'both';

/** One queue's ring as a frontend publishes it. */
export interface PublishedQueue {
  readonly grefs: readonly number[];
  readonly port: number;
}

/** The directory of queue `q` of `count`: the top level for a single queue (as before multi-queue existed). */
export function queueDir(q: number, count: number): string {
  return count === 1 ? '' : `queue-${q}/`;
}

/** `ring-ref<i>`: page `i` of a multi-page ring. */
export function ringRefKey(i: number): string {
  return `${RING_REF}${i}`;
}

// ---- writers: what a frontend publishes -------------------------------------

/**
 * The keys that publish one queue's ring pages (under `prefix`, `queue-N/`
 * when there are several): `ring-ref` for a single page, else
 * `ring-ref0..N`.
 */
export function ringRefKeys(grefs: readonly number[], prefix = ''): Record<string, number> {
  if (grefs.length === 1) return { [`${prefix}${RING_REF}`]: grefs[0]! };
  const keys: Record<string, number> = {};
  grefs.forEach((gref, i) => (keys[`${prefix}${ringRefKey(i)}`] = gref));
  return keys;
}

/** The top-level keys that announce a ring of `pages` pages, in the scheme(s) chosen; none for one page. */
export function ringSizeKeys(pages: number, scheme: RingSizeScheme): Record<string, number> {
  const order = Math.log2(pages);
  if (!Number.isInteger(order)) throw new RangeError(`a ring of ${pages} pages is not a power of two`);
  if (order === 0) return {};
  const keys: Record<string, number> = {};
  if (scheme !== 'pages') keys[RING_PAGE_ORDER] = order;
  if (scheme !== 'order') keys[NUM_RING_PAGES] = pages;
  return keys;
}

/** One ring at the top level: its size (by `ring-page-order`) and its pages. */
export function ringKeys(grefs: readonly number[], scheme: RingSizeScheme = 'order'): Record<string, number> {
  return { ...ringSizeKeys(grefs.length, scheme), ...ringRefKeys(grefs) };
}

/** Every queue's ring and event channel, the ring size and the queue count (one queue: none). */
export function transportKeys(queues: readonly PublishedQueue[], scheme: RingSizeScheme): Record<string, number> {
  const pages = queues[0]?.grefs.length ?? 1;
  if (queues.some((q) => q.grefs.length !== pages)) throw new RangeError('every queue has a ring of the same size');
  const keys: Record<string, number> = { ...ringSizeKeys(pages, scheme) };
  if (queues.length > 1) keys[MULTI_QUEUE_NUM_QUEUES] = queues.length;
  queues.forEach((queue, q) => {
    const dir = queueDir(q, queues.length);
    Object.assign(keys, ringRefKeys(queue.grefs, dir), { [`${dir}${EVENT_CHANNEL}`]: queue.port });
  });
  return keys;
}

/** Every ring key a single ring of up to 2^maxOrder pages may have left at the top level from an earlier connection. */
export function ringKeyNames(maxOrder: number): string[] {
  return [RING_REF, RING_PAGE_ORDER, ...Array.from({ length: 1 << maxOrder }, (_, i) => ringRefKey(i))];
}

/**
 * Every transport key an earlier connection of up to `maxQueues` queues of
 * up to 2^maxOrder pages may have left (a `queue-N` directory goes whole).
 */
export function transportKeyNames(maxOrder: number, maxQueues: number): string[] {
  return [
    ...ringKeyNames(maxOrder),
    EVENT_CHANNEL,
    NUM_RING_PAGES,
    MULTI_QUEUE_NUM_QUEUES,
    ...Array.from({ length: maxQueues }, (_, q) => `queue-${q}`),
  ];
}

// ---- readers: what a backend reads and checks --------------------------------

/** Where the other end's keys are read from (a XenbusDevice is one). */
export interface OtherendKeys {
  /** The other end's directory, for messages. */
  readonly otherendPath: string;
  /** One of its keys, or undefined if it is missing or not readable. */
  readOtherend(key: string): Promise<string | undefined>;
}

/** What a backend offered, which bounds what it accepts. */
export interface TransportLimits {
  /** The largest ring, as a page order (0: one page). */
  readonly maxRingPageOrder: number;
  readonly maxQueues: number;
}

/** One queue's ring as a backend reads it. */
export interface ReadQueue {
  readonly refs: number[];
  readonly port: number;
}

/** A frontend's transport as a backend reads it. */
export interface ReadTransport {
  readonly abi: BlkifAbi;
  /** Pages of each ring. */
  readonly pages: number;
  readonly queues: ReadQueue[];
}

/** An integer key; `fallback` if absent (else ENOENT), EINVAL if it is not an integer. */
export async function readInt(from: OtherendKeys, key: string, fallback?: number): Promise<number> {
  const text = await from.readOtherend(key);
  const path = `${from.otherendPath}/${key}`;
  if (text === undefined) {
    if (fallback === undefined) throw new XsError('ENOENT', `${path} is missing`);
    return fallback;
  }
  if (!/^\s*[+-]?\d+\s*$/.test(text)) throw new XsError('EINVAL', `${path} is not an integer: '${text}'`);
  return Number(text);
}

/** An integer key, or undefined if absent (every value it may hold stays distinct from absence); EINVAL if it is not an integer. */
async function readOptionalInt(from: OtherendKeys, key: string): Promise<number | undefined> {
  return (await from.readOtherend(key)) === undefined ? undefined : readInt(from, key);
}

/** The ABI `protocol` names; the native one if absent, EINVAL for one not spoken. */
export async function readProtocol(from: OtherendKeys): Promise<BlkifAbi> {
  const protocol = await from.readOtherend(PROTOCOL);
  const abi = abiForProtocol(protocol);
  if (!abi) throw new XsError('EINVAL', `protocol '${protocol}' is not one this backend speaks`);
  return abi;
}

/**
 * Pages of each ring: 2^`ring-page-order`, else `num-ring-pages`, else 1.
 * Either beyond 2^maxOrder, a page count that is not a power of two, or
 * the two keys disagreeing is EINVAL.
 */
export async function readRingPages(from: OtherendKeys, maxOrder: number): Promise<number> {
  const maxPages = 1 << maxOrder;
  const order = await readOptionalInt(from, RING_PAGE_ORDER);
  const numPages = await readOptionalInt(from, NUM_RING_PAGES);
  if (order !== undefined) {
    if (order < 0 || order > maxOrder) throw new XsError('EINVAL', `${RING_PAGE_ORDER} ${order} is not in 0..${maxOrder}`);
    if (numPages !== undefined && numPages !== 1 << order) {
      throw new XsError('EINVAL', `${NUM_RING_PAGES} ${numPages} disagrees with ${RING_PAGE_ORDER} ${order}`);
    }
    return 1 << order;
  }
  if (numPages === undefined) return 1;
  if (numPages < 1 || numPages > maxPages || (numPages & (numPages - 1)) !== 0) {
    throw new XsError('EINVAL', `${NUM_RING_PAGES} ${numPages} is not a power of two up to ${maxPages}`);
  }
  return numPages;
}

/** Queues: `multi-queue-num-queues`, 1 if absent; EINVAL outside 1..maxQueues. */
export async function readQueueCount(from: OtherendKeys, maxQueues: number): Promise<number> {
  const count = await readInt(from, MULTI_QUEUE_NUM_QUEUES, 1);
  if (count < 1 || count > maxQueues) throw new XsError('EINVAL', `${MULTI_QUEUE_NUM_QUEUES} ${count} is not in 1..${maxQueues}`);
  return count;
}

/**
 * The grant references of a ring of `pages` pages under `dir`: `ring-ref`
 * for one page (or `ring-ref0`, as a frontend that wrote
 * `ring-page-order` 0 may), else `ring-ref0..N`. A missing one is ENOENT.
 */
export async function readRingRefs(from: OtherendKeys, pages: number, dir = ''): Promise<number[]> {
  if (pages === 1) {
    const key = (await from.readOtherend(`${dir}${RING_REF}`)) === undefined && (await from.readOtherend(`${dir}${ringRefKey(0)}`)) !== undefined ? ringRefKey(0) : RING_REF;
    return [await readInt(from, `${dir}${key}`)];
  }
  const refs: number[] = [];
  for (let i = 0; i < pages; i++) refs.push(await readInt(from, `${dir}${ringRefKey(i)}`));
  return refs;
}

/** Queue `q` of `count`: its ring's references and its event channel; a missing `queue-N` directory is ENOENT. */
export async function readQueue(from: OtherendKeys, q: number, count: number, pages: number): Promise<ReadQueue> {
  const dir = queueDir(q, count);
  if (dir && (await from.readOtherend(`queue-${q}`)) === undefined) {
    throw new XsError('ENOENT', `${from.otherendPath}/queue-${q} is missing (${MULTI_QUEUE_NUM_QUEUES} is ${count})`);
  }
  const refs = await readRingRefs(from, pages, dir);
  return { refs, port: await readInt(from, `${dir}${EVENT_CHANNEL}`) };
}

/** A single ring at the top level: its size and references (what the echo device uses). */
export async function readRing(from: OtherendKeys, maxOrder: number): Promise<number[]> {
  return readRingRefs(from, await readRingPages(from, maxOrder));
}

/** The whole transport a frontend published: protocol, ring size, and each queue's ring and event channel. */
export async function readTransport(from: OtherendKeys, limits: TransportLimits): Promise<ReadTransport> {
  const abi = await readProtocol(from);
  const pages = await readRingPages(from, limits.maxRingPageOrder);
  const count = await readQueueCount(from, limits.maxQueues);
  const queues: ReadQueue[] = [];
  for (let q = 0; q < count; q++) queues.push(await readQueue(from, q, count, pages));
  return { abi, pages, queues };
}
