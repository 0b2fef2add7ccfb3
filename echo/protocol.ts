/**
 * The echo device: the smallest split device that exercises everything a
 * bus carries for a real one. The frontend puts requests with a few bytes
 * of payload on a shared ring (ring.h layout, one or more pages) and the
 * backend answers each with the same bytes. Its xenstore keys follow
 * blkif.h's: the backend publishes `max-ring-page-order`, the frontend
 * answers with `ring-ref` (one page) or `ring-page-order` and
 * `ring-ref0..N`, and `event-channel`.
 */

/** The device class, as in `device/echo/<id>` and `backend/echo/<domid>/<id>`. */
export const ECHO_CLASS = 'echo';

/** Bytes of one ring entry: a request or a response. */
export const ECHO_ENTRY_BYTES = 64;
/** Payload bytes after the 8-byte header. */
export const ECHO_PAYLOAD_MAX = ECHO_ENTRY_BYTES - 8;

/** The largest ring the backend offers: 2^2 = 4 pages. */
export const ECHO_MAX_RING_PAGE_ORDER = 2;

export const EchoStatus = {
  OKAY: 0,
  /** The request was malformed (a length past the payload). */
  ERROR: -1,
} as const;

export interface EchoRequest {
  id: number;
  payload: Uint8Array;
}

export interface EchoResponse {
  id: number;
  status: number;
  payload: Uint8Array;
}

/** request: id u32 @0, length u16 @4, reserved u16 @6, payload @8. */
export function encodeRequest(request: EchoRequest, into: Uint8Array): void {
  if (request.payload.length > ECHO_PAYLOAD_MAX) throw new RangeError(`echo payload of ${request.payload.length} bytes (at most ${ECHO_PAYLOAD_MAX})`);
  const view = new DataView(into.buffer, into.byteOffset, ECHO_ENTRY_BYTES);
  into.fill(0, 0, ECHO_ENTRY_BYTES);
  view.setUint32(0, request.id, true);
  view.setUint16(4, request.payload.length, true);
  into.set(request.payload, 8);
}

/** A request as the backend reads it; the length is the frontend's claim, not yet checked. */
export function decodeRequest(from: Uint8Array): { id: number; length: number; payload: Uint8Array } {
  const view = new DataView(from.buffer, from.byteOffset, ECHO_ENTRY_BYTES);
  const length = view.getUint16(4, true);
  return { id: view.getUint32(0, true), length, payload: from.subarray(8, 8 + Math.min(length, ECHO_PAYLOAD_MAX)) };
}

/** response: id u32 @0, status i16 @4, length u16 @6, payload @8. */
export function encodeResponse(response: EchoResponse, into: Uint8Array): void {
  const view = new DataView(into.buffer, into.byteOffset, ECHO_ENTRY_BYTES);
  into.fill(0, 0, ECHO_ENTRY_BYTES);
  view.setUint32(0, response.id, true);
  view.setInt16(4, response.status, true);
  view.setUint16(6, response.payload.length, true);
  into.set(response.payload, 8);
}

export function decodeResponse(from: Uint8Array): EchoResponse {
  const view = new DataView(from.buffer, from.byteOffset, ECHO_ENTRY_BYTES);
  const length = Math.min(view.getUint16(6, true), ECHO_PAYLOAD_MAX);
  return { id: view.getUint32(0, true), status: view.getInt16(4, true), payload: from.slice(8, 8 + length) };
}
