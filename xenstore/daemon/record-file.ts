import { crc32 } from 'node:zlib';

/**
 * The framing of the journal and snapshot files: each record is its length
 * and a CRC-32 of its bytes (both 32-bit little-endian), then the bytes. A
 * daemon killed in the middle of an append leaves a record whose length runs
 * past the end of the file or whose checksum does not match; reading stops
 * there, so that a torn record is dropped whole and never half-applied.
 */
export const FRAME_HEADER_BYTES = 8;

/** A record larger than this is taken for a corrupted length (a commit is a few KiB; a snapshot of a full store some MiB). */
export const FRAME_MAX_BYTES = 1 << 30;

export function frame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(crc32(payload), 4);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

export interface Frames {
  readonly payloads: Buffer[];
  /** Bytes of the file made of whole, intact records. */
  readonly validBytes: number;
  /** Why reading stopped before the end of the file, if it did. */
  readonly damage: string | undefined;
}

/** The intact records at the start of `bytes`, up to the first torn or corrupted one. */
export function readFrames(bytes: Buffer): Frames {
  const payloads: Buffer[] = [];
  let offset = 0;
  let damage: string | undefined;
  while (offset < bytes.length) {
    if (bytes.length - offset < FRAME_HEADER_BYTES) {
      damage = `a ${bytes.length - offset}-byte partial record header at offset ${offset}`;
      break;
    }
    const length = bytes.readUInt32LE(offset);
    const sum = bytes.readUInt32LE(offset + 4);
    if (length > FRAME_MAX_BYTES || offset + FRAME_HEADER_BYTES + length > bytes.length) {
      damage = `a record at offset ${offset} claims ${length} bytes, ${bytes.length - offset - FRAME_HEADER_BYTES} remain`;
      break;
    }
    const payload = bytes.subarray(offset + FRAME_HEADER_BYTES, offset + FRAME_HEADER_BYTES + length);
    if (crc32(payload) !== sum) {
      damage = `the record at offset ${offset} fails its checksum`;
      break;
    }
    payloads.push(payload);
    offset += FRAME_HEADER_BYTES + length;
  }
  return { payloads, validBytes: offset, damage };
}
