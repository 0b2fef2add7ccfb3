/**
 * The block protocol of xen/include/public/io/blkif.h: operation and status
 * codes, limits, and the requests and responses that travel on a block
 * device's shared ring (shared/ring.ts), as an x86_64 and an x86_32 compiler
 * lay the C structs out. A backend serves frontends of either ABI: the
 * frontend names its own in the `protocol` key (xen/io/protocols.h), and the
 * native one is meant when the key is missing.
 *
 * Where the two ABIs differ is alignment: uint64_t is 8-byte aligned on
 * x86_64 and 4-byte aligned inside i386 structs, so `id` sits at offset 8 or
 * 4 and everything after it moves; struct blkif_response is 16 or 12 bytes;
 * struct blkif_request_indirect has an extra `uint64_t pad` on i386 that
 * makes it 64 bytes in both. test/blkif-conformance.test.ts checks every
 * offset and size here against the C headers built natively and with -m32.
 *
 * Every request shares its first byte, the operation, which picks the struct
 * the rest of the entry is read as: blkif_request_discard for DISCARD,
 * blkif_request_indirect for INDIRECT, blkif_request for everything else.
 * Decoding reports what the frontend wrote, however hostile; checking it
 * (segment counts, sector ranges, grant references) is the backend's job.
 *
 * All fields are little endian. Entries are copied out of the ring before
 * they are decoded (RING_COPY_REQUEST), so a frontend cannot change a
 * request after it was checked.
 */
import { PAGE_SIZE } from './platform.js';

/** Request operation codes (BLKIF_OP_*). */
export const BlkifOp = {
  /** BLKIF_OP_READ */
  READ: 0,
  /** BLKIF_OP_WRITE */
  WRITE: 1,
  /** BLKIF_OP_WRITE_BARRIER: writes before it complete before it, writes after it wait for it ("feature-barrier"). */
  WRITE_BARRIER: 2,
  /** BLKIF_OP_FLUSH_DISKCACHE: commit the backing device's volatile cache ("feature-flush-cache"). */
  FLUSH_DISKCACHE: 3,
  /* 4 is BLKIF_OP_RESERVED_1, kept for a SLES device-specific command packet. */
  /** BLKIF_OP_DISCARD: a struct blkif_request_discard ("feature-discard"). */
  DISCARD: 5,
  /** BLKIF_OP_INDIRECT: a struct blkif_request_indirect ("feature-max-indirect-segments"). */
  INDIRECT: 6,
} as const;

/** Response status codes (BLKIF_RSP_*). */
export const BlkifStatus = {
  /** BLKIF_RSP_OKAY */
  OKAY: 0,
  /** BLKIF_RSP_ERROR: failed for some unspecified reason (-EIO). */
  ERROR: -1,
  /** BLKIF_RSP_EOPNOTSUPP: operation not supported. */
  EOPNOTSUPP: -2,
} as const;

/** Bits of the backend's `info` key (VDISK_*). */
export const VDisk = {
  /** VDISK_CDROM */
  CDROM: 0x1,
  /** VDISK_REMOVABLE */
  REMOVABLE: 0x2,
  /** VDISK_READONLY */
  READONLY: 0x4,
} as const;

/** Segments a direct request carries (BLKIF_MAX_SEGMENTS_PER_REQUEST). */
export const BLKIF_MAX_SEGMENTS_PER_REQUEST = 11;
/** Indirect pages one indirect request may name (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST). */
export const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8;
/** sizeof(struct blkif_request_segment), the same in every ABI. */
export const BLKIF_SEGMENT_BYTES = 8;
/**
 * Segments in one indirect page: PAGE_SIZE / sizeof(struct blkif_request_segment),
 * as blkif.h's description of BLKIF_OP_INDIRECT computes it (512).
 */
export const BLKIF_SEGS_PER_INDIRECT_FRAME = PAGE_SIZE / BLKIF_SEGMENT_BYTES;
/** The `flag` of a discard that must leave the data unrecoverable (BLKIF_DISCARD_SECURE). */
export const BLKIF_DISCARD_SECURE = 1;
/**
 * Sector-based quantities on the ring (sector_number, nr_sectors,
 * first_sect, last_sect) count 512-byte sectors unless the frontend
 * advertises "feature-large-sector-size" (blkif.h's note before struct
 * blkif_request_segment).
 */
export const SECTOR_SHIFT = 9;
/** 1 << SECTOR_SHIFT. */
export const SECTOR_SIZE = 512;
/** 512-byte sectors in a page: the range first_sect..last_sect must stay within. */
export const SECTORS_PER_PAGE = PAGE_SIZE / SECTOR_SIZE;

/** The machine ABIs whose struct layouts a backend understands. */
export type BlkifAbi = 'x86_64' | 'x86_32';

/** The layout this host's compiler gives the structs (XEN_IO_PROTO_ABI_NATIVE on x86_64). */
export const NATIVE_ABI: BlkifAbi = 'x86_64';

/** The frontend's `protocol` key for a 32-bit x86 guest (XEN_IO_PROTO_ABI_X86_32). */
export const XEN_IO_PROTO_ABI_X86_32 = 'x86_32-abi';
/** The frontend's `protocol` key for a 64-bit x86 guest (XEN_IO_PROTO_ABI_X86_64). */
export const XEN_IO_PROTO_ABI_X86_64 = 'x86_64-abi';

/**
 * The ABI a frontend's `protocol` key asks for, or undefined for one we do
 * not speak (the backend reports that as an error). A missing key means the
 * native ABI, blkif.h's default; so does an empty one, since Linux's and
 * FreeBSD's backends read the key with `%63s` and find no word in it.
 */
export function abiForProtocol(protocol: string | undefined): BlkifAbi | undefined {
  if (protocol === undefined || protocol === '') return NATIVE_ABI;
  if (protocol === XEN_IO_PROTO_ABI_X86_64) return 'x86_64';
  if (protocol === XEN_IO_PROTO_ABI_X86_32) return 'x86_32';
  return undefined;
}

/** `struct blkif_request_segment`: one page of a request's data. */
export interface BlkifSegment {
  /** Grant reference of the data page. */
  gref: number;
  /** First 512-byte sector of the page to transfer (inclusive). */
  firstSect: number;
  /** Last sector of the page to transfer (inclusive). */
  lastSect: number;
}

/**
 * `struct blkif_request`: READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE and
 * any operation code the decoder does not know.
 */
export interface BlkifRwRequest {
  kind: 'rw';
  operation: number;
  /** The raw byte the frontend wrote, unchecked (it may exceed BLKIF_MAX_SEGMENTS_PER_REQUEST). */
  nrSegments: number;
  handle: number;
  id: bigint;
  sectorNumber: bigint;
  /** min(nrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST) entries. */
  segments: BlkifSegment[];
}

/** `struct blkif_request_discard`. */
export interface BlkifDiscardRequest {
  kind: 'discard';
  operation: number;
  /** BLKIF_DISCARD_SECURE or zero (other bits as the frontend wrote them). */
  flag: number;
  handle: number;
  id: bigint;
  sectorNumber: bigint;
  nrSectors: bigint;
}

/** `struct blkif_request_indirect`. */
export interface BlkifIndirectRequest {
  kind: 'indirect';
  operation: number;
  /** The operation the segments are for (BLKIF_OP_READ or BLKIF_OP_WRITE, unchecked). */
  indirectOp: number;
  /** The raw uint16, unchecked. */
  nrSegments: number;
  handle: number;
  id: bigint;
  sectorNumber: bigint;
  /** All BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST entries as read; only the first ceil(nrSegments / 512) mean anything. */
  indirectGrefs: number[];
}

export type BlkifRequest = BlkifRwRequest | BlkifDiscardRequest | BlkifIndirectRequest;

/** `struct blkif_response`. */
export interface BlkifResponse {
  /** Copied from the request. */
  id: bigint;
  /** Copied from the request. */
  operation: number;
  /** A BlkifStatus code (int16). */
  status: number;
}

/** What one ABI's structs take on the ring. */
export interface BlkifLayout {
  /** sizeof(struct blkif_request), the largest request. */
  requestBytes: number;
  /** sizeof(struct blkif_response). */
  responseBytes: number;
  /** sizeof(union blkif_sring_entry): one ring slot. */
  entryBytes: number;
}

/** offsetof of each field of struct blkif_request, and its sizeof as `bytes`. */
export interface BlkifRequestOffsets {
  operation: number;
  nrSegments: number;
  handle: number;
  id: number;
  sectorNumber: number;
  /** The first of the seg[] array. */
  seg: number;
  bytes: number;
}

/** offsetof of each field of struct blkif_request_discard, and its sizeof. */
export interface BlkifDiscardOffsets {
  operation: number;
  flag: number;
  handle: number;
  id: number;
  sectorNumber: number;
  nrSectors: number;
  bytes: number;
}

/** offsetof of each field of struct blkif_request_indirect, and its sizeof. */
export interface BlkifIndirectOffsets {
  operation: number;
  indirectOp: number;
  nrSegments: number;
  id: number;
  sectorNumber: number;
  handle: number;
  indirectGrefs: number;
  /** The i386-only `uint64_t pad`; null where the struct has none. Never read, written as zero. */
  pad: number | null;
  bytes: number;
}

/** offsetof of each field of struct blkif_response, and its sizeof. */
export interface BlkifResponseOffsets {
  id: number;
  operation: number;
  status: number;
  bytes: number;
}

/** Every struct of one ABI as the codec reads and writes it. */
export interface BlkifStructOffsets {
  request: BlkifRequestOffsets;
  discard: BlkifDiscardOffsets;
  indirect: BlkifIndirectOffsets;
  response: BlkifResponseOffsets;
  /** sizeof(union blkif_sring_entry). */
  entryBytes: number;
}

/** struct blkif_request_segment, the same in both ABIs (uint32_t gref; uint8_t first_sect, last_sect; 2 bytes of padding). */
export const BLKIF_SEGMENT_OFFSETS = { gref: 0, firstSect: 4, lastSect: 5, bytes: BLKIF_SEGMENT_BYTES } as const;

/**
 * The offsets the codec uses, per ABI: what gcc gives blkif.h's structs
 * with and without -m32 (test/blkif-conformance.test.ts compares them with
 * offsetof and sizeof from both builds). Exported for that test and for
 * anyone who needs to look at a field in place.
 */
export const BLKIF_STRUCT_OFFSETS: Readonly<Record<BlkifAbi, Readonly<BlkifStructOffsets>>> = {
  x86_64: {
    request: { operation: 0, nrSegments: 1, handle: 2, id: 8, sectorNumber: 16, seg: 24, bytes: 112 },
    discard: { operation: 0, flag: 1, handle: 2, id: 8, sectorNumber: 16, nrSectors: 24, bytes: 32 },
    indirect: { operation: 0, indirectOp: 1, nrSegments: 2, id: 8, sectorNumber: 16, handle: 24, indirectGrefs: 28, pad: null, bytes: 64 },
    response: { id: 0, operation: 8, status: 10, bytes: 16 },
    entryBytes: 112,
  },
  x86_32: {
    request: { operation: 0, nrSegments: 1, handle: 2, id: 4, sectorNumber: 12, seg: 20, bytes: 108 },
    discard: { operation: 0, flag: 1, handle: 2, id: 4, sectorNumber: 12, nrSectors: 20, bytes: 28 },
    indirect: { operation: 0, indirectOp: 1, nrSegments: 2, id: 4, sectorNumber: 12, handle: 20, indirectGrefs: 24, pad: 56, bytes: 64 },
    response: { id: 0, operation: 8, status: 10, bytes: 12 },
    entryBytes: 108,
  },
};

const SEG_FIRST_SECT = BLKIF_SEGMENT_OFFSETS.firstSect;
const SEG_LAST_SECT = BLKIF_SEGMENT_OFFSETS.lastSect;

const LAYOUTS: Readonly<Record<BlkifAbi, Readonly<BlkifLayout>>> = {
  x86_64: layoutFrom(BLKIF_STRUCT_OFFSETS.x86_64),
  x86_32: layoutFrom(BLKIF_STRUCT_OFFSETS.x86_32),
};

function layoutFrom(offsets: BlkifStructOffsets): Readonly<BlkifLayout> {
  return Object.freeze({ requestBytes: offsets.request.bytes, responseBytes: offsets.response.bytes, entryBytes: offsets.entryBytes });
}

/** The sizes a ring of this ABI is built from (its entry size decides RING_SIZE). */
export function layoutOf(abi: BlkifAbi): BlkifLayout {
  return LAYOUTS[abi];
}

/** Indirect pages an indirect request of `nrSegments` segments needs (ceil(n / BLKIF_SEGS_PER_INDIRECT_FRAME)). */
export function indirectPagesFor(nrSegments: number): number {
  return Math.ceil(nrSegments / BLKIF_SEGS_PER_INDIRECT_FRAME);
}

/**
 * One DataView per buffer, made once: the codec runs for every request and
 * response, and a view per call would be an allocation per call. Weak, so
 * that a view never keeps an unmapped page's memory alive.
 */
const views = new WeakMap<ArrayBufferLike, DataView>();

function viewOf(bytes: Uint8Array): DataView {
  const buffer = bytes.buffer;
  let view = views.get(buffer);
  if (view === undefined) {
    view = new DataView(buffer);
    views.set(buffer, view);
  }
  return view;
}

function need(bytes: Uint8Array, length: number, what: string): void {
  if (bytes.length < length) throw new RangeError(`${what} needs ${length} bytes, got ${bytes.length}`);
}

/**
 * Reads a request copied out of a ring slot. It never throws on what the
 * bytes say: a backend must answer a hostile request with an error response,
 * so it needs to see the request, nonsense included, rather than an
 * exception. `from` must hold at least layoutOf(abi).requestBytes.
 */
export function decodeRequest(abi: BlkifAbi, from: Uint8Array): BlkifRequest {
  const o = BLKIF_STRUCT_OFFSETS[abi];
  need(from, o.request.bytes, `a ${abi} blkif request`);
  const view = viewOf(from);
  const base = from.byteOffset;
  const operation = from[o.request.operation]!;
  if (operation === BlkifOp.DISCARD) {
    const d = o.discard;
    return {
      kind: 'discard',
      operation,
      flag: from[d.flag]!,
      handle: view.getUint16(base + d.handle, true),
      id: view.getBigUint64(base + d.id, true),
      sectorNumber: view.getBigUint64(base + d.sectorNumber, true),
      nrSectors: view.getBigUint64(base + d.nrSectors, true),
    };
  }
  if (operation === BlkifOp.INDIRECT) {
    const x = o.indirect;
    const indirectGrefs: number[] = [];
    for (let i = 0, at = base + x.indirectGrefs; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++, at += 4) {
      indirectGrefs.push(view.getUint32(at, true));
    }
    return {
      kind: 'indirect',
      operation,
      indirectOp: from[x.indirectOp]!,
      nrSegments: view.getUint16(base + x.nrSegments, true),
      handle: view.getUint16(base + x.handle, true),
      id: view.getBigUint64(base + x.id, true),
      sectorNumber: view.getBigUint64(base + x.sectorNumber, true),
      indirectGrefs,
    };
  }
  const r = o.request;
  const nrSegments = from[r.nrSegments]!;
  const count = Math.min(nrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST);
  const segments: BlkifSegment[] = [];
  for (let i = 0, at = r.seg; i < count; i++, at += BLKIF_SEGMENT_BYTES) {
    segments.push({ gref: view.getUint32(base + at, true), firstSect: from[at + SEG_FIRST_SECT]!, lastSect: from[at + SEG_LAST_SECT]! });
  }
  return {
    kind: 'rw',
    operation,
    nrSegments,
    handle: view.getUint16(base + r.handle, true),
    id: view.getBigUint64(base + r.id, true),
    sectorNumber: view.getBigUint64(base + r.sectorNumber, true),
    segments,
  };
}

/** Zeroes what a slot held before, so that nothing of an earlier entry leaks to the other end. */
function clearEntry(into: Uint8Array, entryBytes: number): void {
  into.fill(0, 0, Math.min(into.length, entryBytes));
}

/**
 * Writes a request into a ring entry as a frontend of `abi` would, zeroing
 * the rest of the entry. Fields are written as given, modulo their width
 * (nrSegments need not match segments, so that tests can play a hostile
 * frontend); only what cannot fit the struct throws.
 */
export function encodeRequest(abi: BlkifAbi, request: BlkifRequest, into: Uint8Array): void {
  const o = BLKIF_STRUCT_OFFSETS[abi];
  need(into, o.request.bytes, `a ${abi} blkif request`);
  clearEntry(into, o.entryBytes);
  const view = viewOf(into);
  const base = into.byteOffset;
  switch (request.kind) {
    case 'rw': {
      const r = o.request;
      const segments = request.segments;
      if (segments.length > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
        throw new RangeError(`${segments.length} segments in a request of at most ${BLKIF_MAX_SEGMENTS_PER_REQUEST}`);
      }
      into[r.operation] = request.operation;
      into[r.nrSegments] = request.nrSegments;
      view.setUint16(base + r.handle, request.handle, true);
      view.setBigUint64(base + r.id, request.id, true);
      view.setBigUint64(base + r.sectorNumber, request.sectorNumber, true);
      for (let i = 0, at = r.seg; i < segments.length; i++, at += BLKIF_SEGMENT_BYTES) {
        const segment = segments[i]!;
        view.setUint32(base + at, segment.gref, true);
        into[at + SEG_FIRST_SECT] = segment.firstSect;
        into[at + SEG_LAST_SECT] = segment.lastSect;
      }
      return;
    }
    case 'discard': {
      const d = o.discard;
      into[d.operation] = request.operation;
      into[d.flag] = request.flag;
      view.setUint16(base + d.handle, request.handle, true);
      view.setBigUint64(base + d.id, request.id, true);
      view.setBigUint64(base + d.sectorNumber, request.sectorNumber, true);
      view.setBigUint64(base + d.nrSectors, request.nrSectors, true);
      return;
    }
    case 'indirect': {
      const x = o.indirect;
      const grefs = request.indirectGrefs;
      if (grefs.length > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) {
        throw new RangeError(`${grefs.length} indirect pages in a request of at most ${BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}`);
      }
      into[x.operation] = request.operation;
      into[x.indirectOp] = request.indirectOp;
      view.setUint16(base + x.nrSegments, request.nrSegments, true);
      view.setBigUint64(base + x.id, request.id, true);
      view.setBigUint64(base + x.sectorNumber, request.sectorNumber, true);
      view.setUint16(base + x.handle, request.handle, true);
      for (let i = 0, at = base + x.indirectGrefs; i < grefs.length; i++, at += 4) view.setUint32(at, grefs[i]!, true);
      return;
    }
  }
}

/**
 * Reads a response copied out of a ring slot; like requests, whatever the
 * backend wrote is reported, not judged. `from` must hold at least
 * layoutOf(abi).responseBytes.
 */
export function decodeResponse(abi: BlkifAbi, from: Uint8Array): BlkifResponse {
  const r = BLKIF_STRUCT_OFFSETS[abi].response;
  need(from, r.bytes, `a ${abi} blkif response`);
  const view = viewOf(from);
  const base = from.byteOffset;
  return { id: view.getBigUint64(base + r.id, true), operation: from[r.operation]!, status: view.getInt16(base + r.status, true) };
}

/** Writes a response into a ring entry as a backend of `abi` would, zeroing the rest of the entry (padding included). */
export function encodeResponse(abi: BlkifAbi, response: BlkifResponse, into: Uint8Array): void {
  const o = BLKIF_STRUCT_OFFSETS[abi];
  const r = o.response;
  need(into, r.bytes, `a ${abi} blkif response`);
  clearEntry(into, o.entryBytes);
  const view = viewOf(into);
  const base = into.byteOffset;
  view.setBigUint64(base + r.id, response.id, true);
  into[r.operation] = response.operation;
  view.setInt16(base + r.status, response.status, true);
}

/**
 * Reads `count` segments of an indirect page (struct blkif_request_segment
 * packed one after another, the same in every ABI) and appends them to
 * `into`, so that the segments of all of a request's indirect pages gather
 * in one array. The caller checks `count` against the request's limits
 * first; more than `page` holds throws.
 */
export function decodeSegments(page: Uint8Array, count: number, into: BlkifSegment[] = []): BlkifSegment[] {
  if (!Number.isInteger(count) || count < 0 || count * BLKIF_SEGMENT_BYTES > page.length) {
    throw new RangeError(`${count} segments do not fit ${page.length} bytes`);
  }
  const view = viewOf(page);
  const base = page.byteOffset;
  for (let i = 0, at = 0; i < count; i++, at += BLKIF_SEGMENT_BYTES) {
    into.push({ gref: view.getUint32(base + at, true), firstSect: page[at + SEG_FIRST_SECT]!, lastSect: page[at + SEG_LAST_SECT]! });
  }
  return into;
}

/**
 * Writes segments into an indirect page from its start, as a frontend fills
 * the pages its indirect grefs name; the padding of each entry is zeroed,
 * the rest of the page is left alone.
 */
export function encodeSegments(segments: readonly BlkifSegment[], page: Uint8Array): void {
  if (segments.length * BLKIF_SEGMENT_BYTES > page.length) {
    throw new RangeError(`${segments.length} segments do not fit ${page.length} bytes`);
  }
  const view = viewOf(page);
  const base = page.byteOffset;
  for (let i = 0, at = 0; i < segments.length; i++, at += BLKIF_SEGMENT_BYTES) {
    const segment = segments[i]!;
    view.setUint32(base + at, segment.gref, true);
    page[at + SEG_FIRST_SECT] = segment.firstSect;
    page[at + SEG_LAST_SECT] = segment.lastSect;
    page[at + SEG_LAST_SECT + 1] = 0;
    page[at + SEG_LAST_SECT + 2] = 0;
  }
}

// ---- The hot path: numbers in and out, nothing allocated per request --------
//
// The object codec above is what tests and tools use. What follows writes
// and reads the same bytes field by field from plain numbers, in place (a
// ring slot, or a slot copied out of the ring), so that a request costs no
// object, no array and no BigInt. 64-bit fields travel as JS numbers where
// a number is exact (below 2^53: sector numbers, the frontend's small ids)
// and as two 32-bit words where every bit matters (an id echoed back).

/** 2^32: a 64-bit field's high word counts these. */
const TWO_POW_32 = 0x1_0000_0000;

/**
 * The largest sector number the number-based codec carries: a JS number is
 * exact up to 2^53 - 1, far past any disk (2^53 sectors are 4 EiB), so a
 * sector at or above 2^53 is refused when writing and, when reading, is
 * past the end of any disk however it rounds.
 */
export const BLKIF_MAX_EXACT_SECTOR = Number.MAX_SAFE_INTEGER;

function putU16(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value;
  bytes[at + 1] = value >>> 8;
}

function putU32(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value;
  bytes[at + 1] = value >>> 8;
  bytes[at + 2] = value >>> 16;
  bytes[at + 3] = value >>> 24;
}

function getU16(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8);
}

function getU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** Writes a uint64 field from a number; only exact non-negative integers (below 2^53) are taken. */
function putU64(bytes: Uint8Array, at: number, value: number, field: string): void {
  if (!(value >= 0 && value <= Number.MAX_SAFE_INTEGER && Number.isInteger(value))) {
    throw new RangeError(`${field} ${value} is not an integer in 0..2^53-1`);
  }
  putU32(bytes, at, value >>> 0);
  putU32(bytes, at + 4, Math.floor(value / TWO_POW_32));
}

/** Reads a uint64 field as a number: exact below 2^53, the nearest double (so still ≥ 2^53) above. */
function getU64(bytes: Uint8Array, at: number): number {
  return getU32(bytes, at + 4) * TWO_POW_32 + getU32(bytes, at);
}

function needSlot(bytes: Uint8Array, at: number, length: number, what: string): void {
  if (!(at >= 0 && at + length <= bytes.length)) throw new RangeError(`${what} needs ${length} bytes at ${at} of ${bytes.length}`);
}

/**
 * Writes requests of one ABI into a ring slot (or any entry-sized place) at
 * `at` of `into`, from numbers. Each request starts with rw(), indirect()
 * or discard(), which zero the whole entry first so that nothing of an
 * earlier request leaks to the other end; segment() and indirectPage() then
 * fill in the arrays. Like encodeRequest, fields are written modulo their
 * width, except the 64-bit ones (id, sector_number, nr_sectors), which must
 * be exact integers below 2^53 (RangeError otherwise).
 */
export class BlkifRequestWriter {
  private readonly o: Readonly<BlkifStructOffsets>;

  constructor(readonly abi: BlkifAbi) {
    this.o = BLKIF_STRUCT_OFFSETS[abi];
  }

  /** struct blkif_request: READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE. */
  rw(into: Uint8Array, at: number, operation: number, nrSegments: number, handle: number, id: number, sector: number): void {
    const r = this.o.request;
    this.start(into, at);
    into[at + r.operation] = operation;
    into[at + r.nrSegments] = nrSegments;
    putU16(into, at + r.handle, handle);
    putU64(into, at + r.id, id, 'id');
    putU64(into, at + r.sectorNumber, sector, 'sector_number');
  }

  /** seg[index] of a struct blkif_request (index below BLKIF_MAX_SEGMENTS_PER_REQUEST). */
  segment(into: Uint8Array, at: number, index: number, gref: number, firstSect: number, lastSect: number): void {
    if (!(index >= 0 && index < BLKIF_MAX_SEGMENTS_PER_REQUEST)) {
      throw new RangeError(`segment ${index} of a request of at most ${BLKIF_MAX_SEGMENTS_PER_REQUEST}`);
    }
    const s = at + this.o.request.seg + index * BLKIF_SEGMENT_BYTES;
    putU32(into, s, gref);
    into[s + SEG_FIRST_SECT] = firstSect;
    into[s + SEG_LAST_SECT] = lastSect;
  }

  /** struct blkif_request_indirect; its pages follow with indirectPage(). */
  indirect(into: Uint8Array, at: number, indirectOp: number, nrSegments: number, handle: number, id: number, sector: number): void {
    const x = this.o.indirect;
    this.start(into, at);
    into[at + x.operation] = BlkifOp.INDIRECT;
    into[at + x.indirectOp] = indirectOp;
    putU16(into, at + x.nrSegments, nrSegments);
    putU64(into, at + x.id, id, 'id');
    putU64(into, at + x.sectorNumber, sector, 'sector_number');
    putU16(into, at + x.handle, handle);
  }

  /** indirect_grefs[index] (index below BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST). */
  indirectPage(into: Uint8Array, at: number, index: number, gref: number): void {
    if (!(index >= 0 && index < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)) {
      throw new RangeError(`indirect page ${index} of a request of at most ${BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}`);
    }
    putU32(into, at + this.o.indirect.indirectGrefs + index * 4, gref);
  }

  /** struct blkif_request_discard. */
  discard(into: Uint8Array, at: number, flag: number, handle: number, id: number, sector: number, nrSectors: number): void {
    const d = this.o.discard;
    this.start(into, at);
    into[at + d.operation] = BlkifOp.DISCARD;
    into[at + d.flag] = flag;
    putU16(into, at + d.handle, handle);
    putU64(into, at + d.id, id, 'id');
    putU64(into, at + d.sectorNumber, sector, 'sector_number');
    putU64(into, at + d.nrSectors, nrSectors, 'nr_sectors');
  }

  private start(into: Uint8Array, at: number): void {
    needSlot(into, at, this.o.entryBytes, `a ${this.abi} blkif request`);
    into.fill(0, at, at + this.o.entryBytes);
  }
}

/**
 * Writes segment `index` of an indirect page (struct blkif_request_segment,
 * the same in every ABI), its padding zeroed; the rest of the page is left
 * alone.
 */
export function writeIndirectSegment(page: Uint8Array, index: number, gref: number, firstSect: number, lastSect: number): void {
  const at = index * BLKIF_SEGMENT_BYTES;
  if (!(index >= 0 && at + BLKIF_SEGMENT_BYTES <= page.length)) throw new RangeError(`segment ${index} does not fit ${page.length} bytes`);
  putU32(page, at, gref);
  page[at + SEG_FIRST_SECT] = firstSect;
  page[at + SEG_LAST_SECT] = lastSect;
  page[at + SEG_LAST_SECT + 1] = 0;
  page[at + SEG_LAST_SECT + 2] = 0;
}

/**
 * A response read in place, into fields reused from one response to the
 * next. The id stays two 32-bit words, as the backend wrote them.
 */
export class BlkifResponseView {
  idLow = 0;
  idHigh = 0;
  operation = 0;
  /** A BlkifStatus code (int16). */
  status = 0;
  private readonly r: Readonly<BlkifResponseOffsets>;

  constructor(readonly abi: BlkifAbi) {
    this.r = BLKIF_STRUCT_OFFSETS[abi].response;
  }

  /** Reads the response at `at` of `from`; whatever the backend wrote is reported, not judged. */
  read(from: Uint8Array, at = 0): this {
    const r = this.r;
    needSlot(from, at, r.bytes, `a ${this.abi} blkif response`);
    this.idLow = getU32(from, at + r.id);
    this.idHigh = getU32(from, at + r.id + 4);
    this.operation = from[at + r.operation]!;
    this.status = (getU16(from, at + r.status) << 16) >> 16;
    return this;
  }

  /** The id as a number: exact below 2^53, which every id a frontend of ours makes is. */
  get id(): number {
    return this.idHigh * TWO_POW_32 + this.idLow;
  }
}

/** Writes a response at `at` of `into`, zeroing the rest of the entry; the id is echoed as the two words the request had. */
export function writeResponse(abi: BlkifAbi, into: Uint8Array, at: number, idLow: number, idHigh: number, operation: number, status: number): void {
  const o = BLKIF_STRUCT_OFFSETS[abi];
  needSlot(into, at, o.response.bytes, `a ${abi} blkif response`);
  into.fill(0, at, at + Math.min(o.entryBytes, into.length - at));
  putU32(into, at + o.response.id, idLow);
  putU32(into, at + o.response.id + 4, idHigh);
  into[at + o.response.operation] = operation;
  putU16(into, at + o.response.status, status);
}

/**
 * A request read into fields reused from one request to the next: what a
 * backend decodes each slot copy with instead of decodeRequest's objects.
 * Like decodeRequest it reports what the frontend wrote, however hostile,
 * and never throws on the bytes; checking is the backend's job.
 *
 * - `sector` (and a discard's `nrSectors`) is a number: exact below 2^53;
 *   a larger value reads as the nearest double, which is still at least
 *   2^53 and so past the end of any disk.
 * - the id stays two 32-bit words (`idLow`, `idHigh`), echoed exactly in
 *   the response (writeResponse).
 * - segments go into preallocated arrays (`grefs`, `firstSects`,
 *   `lastSects`, `segmentCount` of them): a direct request's
 *   min(nr_segments, 11) on read(), an indirect request's from its pages
 *   with readIndirectSegments(), up to the capacity given at construction.
 */
export class BlkifRequestView {
  kind: BlkifRequest['kind'] = 'rw';
  operation = 0;
  /** The raw nr_segments: uint8 for a direct request, uint16 for an indirect one, 0 for a discard. */
  nrSegments = 0;
  handle = 0;
  idLow = 0;
  idHigh = 0;
  sector = 0;
  /** A discard's nr_sectors (0 otherwise). */
  nrSectors = 0;
  /** A discard's flag (0 otherwise). */
  flag = 0;
  /** An indirect request's indirect_op (0 otherwise). */
  indirectOp = 0;
  /** An indirect request's indirect_grefs, all of them as read; only the first ceil(nrSegments / 512) mean anything. */
  readonly indirectGrefs = new Uint32Array(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
  segmentCount = 0;
  readonly grefs: Uint32Array;
  readonly firstSects: Uint8Array;
  readonly lastSects: Uint8Array;
  private readonly o: Readonly<BlkifStructOffsets>;

  constructor(
    readonly abi: BlkifAbi,
    /** Segments the arrays hold: at least a direct request's 11; a backend gives its feature-max-indirect-segments. */
    readonly segmentCapacity: number = BLKIF_MAX_SEGMENTS_PER_REQUEST,
  ) {
    if (!Number.isInteger(segmentCapacity) || segmentCapacity < BLKIF_MAX_SEGMENTS_PER_REQUEST) {
      throw new RangeError(`a request view needs room for at least ${BLKIF_MAX_SEGMENTS_PER_REQUEST} segments, not ${segmentCapacity}`);
    }
    this.o = BLKIF_STRUCT_OFFSETS[abi];
    this.grefs = new Uint32Array(segmentCapacity);
    this.firstSects = new Uint8Array(segmentCapacity);
    this.lastSects = new Uint8Array(segmentCapacity);
  }

  /** Reads the request at `at` of `from` (a copy of the slot: RING_COPY_REQUEST). */
  read(from: Uint8Array, at = 0): this {
    const o = this.o;
    needSlot(from, at, o.request.bytes, `a ${this.abi} blkif request`);
    const operation = from[at]!;
    this.operation = operation;
    this.segmentCount = 0;
    this.nrSectors = 0;
    this.flag = 0;
    this.indirectOp = 0;
    if (operation === BlkifOp.DISCARD) {
      const d = o.discard;
      this.kind = 'discard';
      this.nrSegments = 0;
      this.flag = from[at + d.flag]!;
      this.handle = getU16(from, at + d.handle);
      this.readId(from, at + d.id);
      this.sector = getU64(from, at + d.sectorNumber);
      this.nrSectors = getU64(from, at + d.nrSectors);
      this.indirectGrefs.fill(0);
      return this;
    }
    if (operation === BlkifOp.INDIRECT) {
      const x = o.indirect;
      this.kind = 'indirect';
      this.indirectOp = from[at + x.indirectOp]!;
      this.nrSegments = getU16(from, at + x.nrSegments);
      this.handle = getU16(from, at + x.handle);
      this.readId(from, at + x.id);
      this.sector = getU64(from, at + x.sectorNumber);
      for (let i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++) this.indirectGrefs[i] = getU32(from, at + x.indirectGrefs + i * 4);
      return this;
    }
    const r = o.request;
    this.kind = 'rw';
    this.nrSegments = from[at + r.nrSegments]!;
    this.handle = getU16(from, at + r.handle);
    this.readId(from, at + r.id);
    this.sector = getU64(from, at + r.sectorNumber);
    this.indirectGrefs.fill(0);
    const count = Math.min(this.nrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST);
    for (let i = 0, s = at + r.seg; i < count; i++, s += BLKIF_SEGMENT_BYTES) {
      this.grefs[i] = getU32(from, s);
      this.firstSects[i] = from[s + SEG_FIRST_SECT]!;
      this.lastSects[i] = from[s + SEG_LAST_SECT]!;
    }
    this.segmentCount = count;
    return this;
  }

  /**
   * Appends `count` segments of an indirect page to the segment arrays, so
   * that those of all of a request's pages gather in order. The caller
   * checks nr_segments against its limits first; more than the page holds,
   * or than the view has room for, throws.
   */
  readIndirectSegments(page: Uint8Array, count: number): void {
    if (!Number.isInteger(count) || count < 0 || count * BLKIF_SEGMENT_BYTES > page.length) {
      throw new RangeError(`${count} segments do not fit ${page.length} bytes`);
    }
    if (this.segmentCount + count > this.segmentCapacity) {
      throw new RangeError(`${this.segmentCount + count} segments exceed the view's ${this.segmentCapacity}`);
    }
    let n = this.segmentCount;
    for (let i = 0, s = 0; i < count; i++, s += BLKIF_SEGMENT_BYTES, n++) {
      this.grefs[n] = getU32(page, s);
      this.firstSects[n] = page[s + SEG_FIRST_SECT]!;
      this.lastSects[n] = page[s + SEG_LAST_SECT]!;
    }
    this.segmentCount = n;
  }

  /** The id as a bigint, for logs and tests (allocates). */
  get id(): bigint {
    return (BigInt(this.idHigh) << 32n) | BigInt(this.idLow);
  }

  private readId(from: Uint8Array, at: number): void {
    this.idLow = getU32(from, at);
    this.idHigh = getU32(from, at + 4);
  }
}
