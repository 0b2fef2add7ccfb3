/**
 * How a byte stream splits into xenstore messages (xs_wire.h: a 16-byte
 * header whose last field is the payload length, then the payload; a
 * length over XENSTORE_PAYLOAD_MAX ends the stream). The fuzzer's oracle
 * frames what a client sent with this, independently of the daemon's own
 * decoder, to know which requests the daemon must answer, and frames what
 * comes back to check the replies.
 */
import { XENSTORE_PAYLOAD_MAX, XS_HEADER_SIZE } from '../../shared/xs-wire.js';

export interface Frame {
  readonly type: number;
  readonly reqId: number;
  readonly txId: number;
  readonly payload: Buffer;
  /** Where the frame starts in the buffer it was framed from. */
  readonly offset: number;
}

export interface Framing {
  /** The complete messages, in order. */
  readonly frames: Frame[];
  /** Bytes the complete messages take; the rest is an unfinished message. */
  readonly consumed: number;
  /** Set when a header announces an oversized payload: nothing after it counts. */
  readonly oversize?: { readonly offset: number; readonly length: number };
}

/** Frames `bytes` from their start. */
export function frameStream(bytes: Buffer): Framing {
  const frames: Frame[] = [];
  let at = 0;
  while (bytes.length - at >= XS_HEADER_SIZE) {
    const length = bytes.readUInt32LE(at + 12);
    if (length > XENSTORE_PAYLOAD_MAX) return { frames, consumed: at, oversize: { offset: at, length } };
    if (bytes.length - at - XS_HEADER_SIZE < length) break;
    frames.push({
      type: bytes.readUInt32LE(at),
      reqId: bytes.readUInt32LE(at + 4),
      txId: bytes.readUInt32LE(at + 8),
      payload: bytes.subarray(at + XS_HEADER_SIZE, at + XS_HEADER_SIZE + length),
      offset: at,
    });
    at += XS_HEADER_SIZE + length;
  }
  return { frames, consumed: at };
}

/** Frames a stream that arrives in pieces (the replies a link receives). */
export class FrameReader {
  private pending = Buffer.alloc(0);
  private brokenFlag = false;

  /** Set once the peer announced an oversized payload. */
  get broken(): boolean {
    return this.brokenFlag;
  }

  push(chunk: Buffer): Frame[] {
    if (this.brokenFlag) return [];
    const bytes = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const framing = frameStream(bytes);
    if (framing.oversize) {
      this.brokenFlag = true;
      this.pending = Buffer.alloc(0);
      return framing.frames;
    }
    // Copies, so that frames and leftovers never alias a buffer that is reused.
    this.pending = Buffer.from(bytes.subarray(framing.consumed));
    return framing.frames.map((f) => ({ ...f, payload: Buffer.from(f.payload) }));
  }

  reset(): void {
    this.pending = Buffer.alloc(0);
    this.brokenFlag = false;
  }
}
