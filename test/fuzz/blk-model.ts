/**
 * What blkif.h makes of a request, as the block fuzzer's oracle: the status
 * its response must carry and the operation it must name, and which
 * sectors of which pages a READ may fill. It is written from blkif.h and
 * Linux's blkback (xen-blkback/blkback.c: dispatch_rw_block_io,
 * dispatch_discard_io, xen_blkbk_parse_indirect), not from our backend:
 *
 * - an operation blkif.h does not define: BLKIF_RSP_EOPNOTSUPP;
 * - READ and WRITE with nr_segments 0 or over BLKIF_MAX_SEGMENTS_PER_REQUEST,
 *   a segment whose first_sect > last_sect or last_sect past the page, a
 *   range past the disk's end (or wrapping 2^64), a grant the backend may
 *   not use that way (a READ needs a writable one), a write to a read-only
 *   disk: BLKIF_RSP_ERROR;
 * - WRITE_BARRIER and FLUSH_DISKCACHE: a flush without segments, a write
 *   made durable with them (checked as a write);
 * - DISCARD: refused on a read-only disk, EOPNOTSUPP where not offered,
 *   ERROR past the end, nothing to do for no sectors;
 * - INDIRECT: its indirect_op must be READ or WRITE, nr_segments within
 *   1..feature-max-indirect-segments, the indirect pages granted, and then
 *   the segments they hold are checked as a direct request's; the
 *   response names the indirect_op.
 */
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_SEGMENT_BYTES,
  BlkifOp,
  BlkifStatus,
  SECTORS_PER_PAGE,
  decodeSegments,
  indirectPagesFor,
  type BlkifRequest,
  type BlkifSegment,
} from '../../shared/blkif.js';
import { PAGE_SIZE } from '../../shared/platform.js';
import type { GrantClass } from './blk-pages.js';

/** What the backend offers, from the keys it published. */
export interface DiskPolicy {
  readonly sectors: bigint;
  readonly readOnly: boolean;
  readonly discard: boolean;
  readonly flush: boolean;
  readonly barrier: boolean;
  readonly maxIndirectSegments: number;
}

/** What the model needs to know of the frontend's pages. */
export interface PageKnowledge {
  classOf(gref: number): GrantClass;
  /** The bytes of a page the backend may map read-only, as they are now; undefined for other pages (their contents may change). */
  stableBytes(gref: number): Uint8Array | undefined;
}

export interface Verdict {
  /** The status the response must carry; undefined where the model cannot tell. */
  readonly status: number | undefined;
  /** The operation the response must name. */
  readonly operation: number;
  /** Sectors of pages a READ may fill: [gref, first, last]; undefined when the model cannot tell which. */
  readonly fills: readonly (readonly [number, number, number])[] | undefined;
  /** Why, for reports. */
  readonly why: string;
}

const { OKAY, ERROR, EOPNOTSUPP } = BlkifStatus;

export function verdict(request: BlkifRequest, disk: DiskPolicy, pages: PageKnowledge): Verdict {
  const operation = request.kind === 'indirect' ? request.indirectOp : request.operation;
  const answer = (status: number | undefined, why: string, fills: Verdict['fills'] = []): Verdict => ({ status, operation, fills, why });
  switch (request.kind) {
    case 'discard': {
      if (disk.readOnly) return answer(ERROR, 'a discard on a read-only disk');
      if (!disk.discard) return answer(EOPNOTSUPP, 'discard not offered');
      const end = request.sectorNumber + request.nrSectors;
      if (end > disk.sectors) return answer(ERROR, `discard of sectors ${request.sectorNumber}..${end} past the end`);
      return answer(OKAY, 'a discard within the disk');
    }
    case 'indirect': {
      if (request.indirectOp !== BlkifOp.READ && request.indirectOp !== BlkifOp.WRITE) return answer(ERROR, `indirect_op ${request.indirectOp}`);
      if (disk.maxIndirectSegments === 0) return answer(EOPNOTSUPP, 'indirect requests not offered');
      if (request.nrSegments < 1 || request.nrSegments > disk.maxIndirectSegments) return answer(ERROR, `${request.nrSegments} indirect segments`);
      const grefs = request.indirectGrefs.slice(0, indirectPagesFor(request.nrSegments));
      if (grefs.some((gref) => pages.classOf(gref) === 'bad')) return answer(ERROR, 'an indirect page not granted to the backend');
      const { segments, complete } = knownIndirectSegments(request, pages);
      // A writable page may change under the backend: what it reads there is unknowable.
      if (!complete) return { status: undefined, operation, fills: undefined, why: 'segments in a page whose contents may change' };
      return dataIo(request.indirectOp === BlkifOp.READ ? 'read' : 'write', request.sectorNumber, segments, disk, pages, answer);
    }
    case 'rw':
      switch (request.operation) {
        case BlkifOp.READ:
        case BlkifOp.WRITE:
          if (request.nrSegments < 1 || request.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return answer(ERROR, `nr_segments ${request.nrSegments}`);
          return dataIo(request.operation === BlkifOp.READ ? 'read' : 'write', request.sectorNumber, request.segments, disk, pages, answer);
        case BlkifOp.WRITE_BARRIER:
        case BlkifOp.FLUSH_DISKCACHE: {
          const offered = request.operation === BlkifOp.WRITE_BARRIER ? disk.barrier : disk.flush;
          if (!offered) return answer(EOPNOTSUPP, 'not offered');
          if (request.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return answer(ERROR, `nr_segments ${request.nrSegments}`);
          if (request.nrSegments === 0) return answer(OKAY, 'a flush');
          return dataIo('write', request.sectorNumber, request.segments, disk, pages, answer);
        }
        default:
          return answer(EOPNOTSUPP, `operation ${request.operation}`);
      }
  }
}

/**
 * The segments an indirect request's pages hold, where the model knows
 * their contents (pages the backend may only read), each page counting its
 * share of nr_segments; `complete` when it knows every page's.
 */
export function knownIndirectSegments(request: BlkifRequest & { kind: 'indirect' }, pages: PageKnowledge): { segments: BlkifSegment[]; complete: boolean } {
  const segments: BlkifSegment[] = [];
  let complete = true;
  let left = request.nrSegments;
  for (const gref of request.indirectGrefs.slice(0, indirectPagesFor(request.nrSegments))) {
    const here = Math.min(left, PAGE_SIZE / BLKIF_SEGMENT_BYTES);
    const bytes = pages.stableBytes(gref);
    if (bytes) decodeSegments(bytes, here, segments);
    else complete = false;
    left -= here;
  }
  return { segments, complete };
}

function dataIo(
  kind: 'read' | 'write',
  sector: bigint,
  segments: readonly BlkifSegment[],
  disk: DiskPolicy,
  pages: PageKnowledge,
  answer: (status: number | undefined, why: string, fills?: Verdict['fills']) => Verdict,
): Verdict {
  // What a READ may fill is noted whatever its outcome: a failed request may have moved part of its data.
  const fills = kind === 'read' ? segments.filter((s) => s.firstSect <= s.lastSect && s.lastSect < SECTORS_PER_PAGE).map((s) => [s.gref, s.firstSect, s.lastSect] as const) : [];
  if (kind === 'write' && disk.readOnly) return answer(ERROR, 'a write to a read-only disk', fills);
  let count = 0n;
  for (const s of segments) {
    if (s.firstSect > s.lastSect || s.lastSect >= SECTORS_PER_PAGE) return answer(ERROR, `segment sectors ${s.firstSect}..${s.lastSect}`, fills);
    count += BigInt(s.lastSect - s.firstSect + 1);
  }
  if (sector + count > disk.sectors) return answer(ERROR, `sectors ${sector}..${sector + count} past the end`, fills);
  // The frontend never has the backend READ into its ring (HostileFrontend
  // leaves such requests out): what would follow is not the backend's doing.
  const needed: GrantClass[] = kind === 'read' ? ['rw'] : ['rw', 'ro', 'ring'];
  const unusable = segments.find((s) => !needed.includes(pages.classOf(s.gref)));
  if (unusable) return answer(ERROR, `gref ${unusable.gref} is not granted for a ${kind}`, fills);
  return answer(OKAY, `a ${kind} of ${count} sectors`, fills);
}
