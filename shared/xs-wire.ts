/**
 * The xenstore wire protocol: message types, error names, limits and the
 * 16-byte `struct xsd_sockmsg` header of xen/include/public/io/xs_wire.h.
 *
 * The same framing is used on the Unix socket and on a domain's shared ring
 * (docs/misc/xenstore.txt, docs/misc/xenstore-ring.txt).
 */

/** `enum xsd_sockmsg_type`, with the numbers newer Xen assigns (GET_FEATURE..SET_QUOTA). */
export const XsType = {
  CONTROL: 0,
  DIRECTORY: 1,
  READ: 2,
  GET_PERMS: 3,
  WATCH: 4,
  UNWATCH: 5,
  TRANSACTION_START: 6,
  TRANSACTION_END: 7,
  INTRODUCE: 8,
  RELEASE: 9,
  GET_DOMAIN_PATH: 10,
  WRITE: 11,
  MKDIR: 12,
  RM: 13,
  SET_PERMS: 14,
  WATCH_EVENT: 15,
  ERROR: 16,
  IS_DOMAIN_INTRODUCED: 17,
  RESUME: 18,
  SET_TARGET: 19,
  /* 20 was XS_RESTRICT, removed from the protocol. */
  RESET_WATCHES: 21,
  DIRECTORY_PART: 22,
  GET_FEATURE: 23,
  SET_FEATURE: 24,
  GET_QUOTA: 25,
  SET_QUOTA: 26,
} as const;

export type XsTypeName = keyof typeof XsType;
export type XsTypeNumber = (typeof XsType)[XsTypeName];

/** XS_TYPE_COUNT: one past the highest type number defined. */
export const XS_TYPE_COUNT = 27;
/** XS_INVALID: guaranteed never to be a valid type. */
export const XS_INVALID = 0xffff;

const typeNames = new Map<number, XsTypeName>(
  (Object.entries(XsType) as [XsTypeName, number][]).map(([name, value]) => [value, name]),
);

/** The name of a message type, or `UNKNOWN(<n>)` for numbers xs_wire.h does not define. */
export function xsTypeName(type: number): string {
  return typeNames.get(type) ?? `UNKNOWN(${type})`;
}

/**
 * The errno names of `xsd_errors[]`, in the order xs_wire.h lists them. Error
 * replies carry the name, never the number.
 */
export const XS_ERROR_NAMES = [
  'EINVAL',
  'EACCES',
  'EEXIST',
  'EISDIR',
  'ENOENT',
  'ENOMEM',
  'ENOSPC',
  'EIO',
  'ENOTEMPTY',
  'ENOSYS',
  'EROFS',
  'EBUSY',
  'EAGAIN',
  'EISCONN',
  'E2BIG',
  'EPERM',
] as const;

export type XsErrorName = (typeof XS_ERROR_NAMES)[number];

export function isXsErrorName(name: string): name is XsErrorName {
  return (XS_ERROR_NAMES as readonly string[]).includes(name);
}

/** XENSTORE_PAYLOAD_MAX: a longer payload in either direction is a protocol violation. */
export const XENSTORE_PAYLOAD_MAX = 4096;
/** XENSTORE_ABS_PATH_MAX: absolute paths longer than this are refused. */
export const XENSTORE_ABS_PATH_MAX = 3072;
/** XENSTORE_REL_PATH_MAX: the limit for a path relative to a domain's home. */
export const XENSTORE_REL_PATH_MAX = 2048;

/** `sizeof(struct xsd_sockmsg)`: four little-endian uint32 fields. */
export const XS_HEADER_SIZE = 16;

/** Server feature bits of the ring page (xs_wire.h XENSTORE_SERVER_FEATURE_*). */
export const XsServerFeature = {
  RECONNECTION: 1,
  ERROR: 2,
  WATCHDEPTH: 4,
  DOMID_ANY: 8,
} as const;

/** The `error` field values of the ring page (xs_wire.h XENSTORE_ERROR_*). */
export const XsRingError = {
  NONE: 0,
  COMM: 1,
  RINGIDX: 2,
  PROTO: 3,
} as const;

export interface XsHeader {
  type: number;
  reqId: number;
  txId: number;
  len: number;
}

export interface XsMessage extends XsHeader {
  payload: Buffer;
}

export function decodeHeader(buf: Buffer, offset = 0): XsHeader {
  return {
    type: buf.readUInt32LE(offset),
    reqId: buf.readUInt32LE(offset + 4),
    txId: buf.readUInt32LE(offset + 8),
    len: buf.readUInt32LE(offset + 12),
  };
}

/** Frames one message: header followed by payload. */
export function encodeMessage(type: number, reqId: number, txId: number, payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(XS_HEADER_SIZE + payload.length);
  out.writeUInt32LE(type >>> 0, 0);
  out.writeUInt32LE(reqId >>> 0, 4);
  out.writeUInt32LE(txId >>> 0, 8);
  out.writeUInt32LE(payload.length, 12);
  payload.copy(out, XS_HEADER_SIZE);
  return out;
}

/** A payload made of NUL-terminated strings, as most requests and replies are. */
export function nulStrings(...parts: (string | Buffer)[]): Buffer {
  const buffers: Buffer[] = [];
  for (const part of parts) {
    buffers.push(typeof part === 'string' ? Buffer.from(part, 'latin1') : part, NUL);
  }
  return Buffer.concat(buffers);
}

const NUL = Buffer.from([0]);

/**
 * Splits a payload at its NULs. Only NUL-terminated strings are returned;
 * bytes after the last NUL are reported in `trailing` (xenstored's
 * get_strings() ignores them the same way).
 */
export function splitNulStrings(payload: Buffer): { strings: string[]; trailing: number } {
  const strings: string[] = [];
  let start = 0;
  for (;;) {
    const nul = payload.indexOf(0, start);
    if (nul < 0) break;
    strings.push(payload.toString('latin1', start, nul));
    start = nul + 1;
  }
  return { strings, trailing: payload.length - start };
}

/**
 * Incremental decoder of a byte stream into messages. A header announcing more
 * than XENSTORE_PAYLOAD_MAX bytes is reported once through `onOversize` and
 * decoding stops: the spec says such a peer is disconnected.
 */
export class XsFrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private header: XsHeader | null = null;
  private broken = false;

  constructor(
    private readonly onMessage: (msg: XsMessage) => void,
    private readonly onOversize: (header: XsHeader) => void,
  ) {}

  /**
   * Bytes received but not yet part of a complete message, counting a
   * header already decoded while its payload is still to come: a peer that
   * stops after the header has left a message unfinished too.
   */
  get bufferedBytes(): number {
    return this.pendingBytes + (this.header === null ? 0 : XS_HEADER_SIZE);
  }

  push(chunk: Buffer): void {
    if (this.broken) return;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    for (;;) {
      if (this.header === null) {
        if (this.pendingBytes < XS_HEADER_SIZE) return;
        const header = decodeHeader(this.take(XS_HEADER_SIZE));
        if (header.len > XENSTORE_PAYLOAD_MAX) {
          this.broken = true;
          this.pending = [];
          this.pendingBytes = 0;
          this.onOversize(header);
          return;
        }
        this.header = header;
      }
      if (this.pendingBytes < this.header.len) return;
      const payload = this.take(this.header.len);
      const header = this.header;
      this.header = null;
      this.onMessage({ ...header, payload });
      if (this.broken) return;
    }
  }

  /** Stops decoding; later pushes are ignored. */
  stop(): void {
    this.broken = true;
    this.header = null;
    this.pending = [];
    this.pendingBytes = 0;
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.pending[0]!;
    if (first.length >= n) {
      this.pendingBytes -= n;
      if (first.length === n) this.pending.shift();
      else this.pending[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const head = this.pending[0]!;
      const used = Math.min(head.length, n - filled);
      head.copy(out, filled, 0, used);
      filled += used;
      if (used === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(used);
    }
    this.pendingBytes -= n;
    return out;
  }
}
