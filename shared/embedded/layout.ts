/**
 * Where the embedded hypervisor keeps its state: a few SharedArrayBuffers
 * that every worker receives at start, so that any worker can act for any
 * domain. All fields are 32-bit words read and written with Atomics.
 */
import { optionalNativeCalls } from '../native.js';
import { PAGE_SIZE } from '../platform.js';

/** Domains that can exist at once. */
export const MAX_DOMAINS = 64;
/** Grant entries per domain: Xen's default of 32 grant frames of 512 v1 entries. */
export const GRANT_ENTRIES = 32 * 512;
/** Event channel ports per domain (the 2-level ABI allows 4096 on 64-bit; this is plenty). */
export const EVTCHN_PORTS = 1024;
/** Open event channel handles (xenevtchn_open) across all workers. */
export const MAX_EVTCHN_HANDLES = 512;
/**
 * Grant mappings that can be held at once across all workers (Xen's
 * maptrack, which it sizes per domain; one table is enough here). Each
 * mapped page takes an entry until it is unmapped, or its worker dies.
 */
export const MAX_MAPTRACK = 16384;
/** Domain ids available to guests (xen.h DOMID_FIRST_RESERVED). */
export const DOMID_LIMIT = 0x7ff0;
/** Bytes of a domain name kept by the hypervisor. */
export const NAME_BYTES = 64;

/** Words of one domain slot. */
export const DomainSlot = {
  STATE: 0,
  DOMID: 1,
  PAGES: 2,
  BASE_FRAME: 3,
  SHUTDOWN_REASON: 4,
  /** Bumped on every state change; waiters for `running` sleep on it. */
  STATE_SEQ: 5,
  /** Pages of this domain that others have mapped (or are copying through) now. */
  PINS: 6,
  UNIQUE_ID: 7,
  NAME: 8,
  WORDS: 8 + NAME_BYTES / 4,
} as const;

export const SlotState = {
  FREE: 0,
  RUNNING: 1,
  PAUSED: 2,
  SHUTDOWN: 3,
  /** Destroyed; kept until no other domain has its pages mapped. */
  DYING: 4,
} as const;

/** Words of one grant entry (the v1 entry plus the hypervisor's pin count). */
export const GrantEntry = {
  STATE: 0,
  GRANTEE: 1,
  PFN: 2,
  /** Mappings and copies in progress through this entry. */
  PINS: 3,
  WORDS: 4,
} as const;

export const GrantState = {
  FREE: 0,
  /** Being filled in by the granter; not yet usable. */
  RESERVED: 1,
  GRANTED_RW: 2,
  GRANTED_RO: 3,
  /** The granter is ending access; mappers retry. */
  ENDING: 4,
  /** The granter died: existing mappings stay, new ones are refused. */
  REVOKED: 5,
} as const;

/** Words of one event channel port. */
export const Port = {
  /** State in the low byte, remote domid (for unbound and interdomain ports) above it. */
  STATE: 0,
  REMOTE_PORT: 1,
  /** The handle the port is bound through, +1 (0: none). */
  HANDLE: 2,
  VIRQ: 3,
  WORDS: 4,
} as const;

export const PortState = {
  FREE: 0,
  RESERVED: 1,
  UNBOUND: 2,
  /** An unbound port being bound by its remote domain. */
  BINDING: 3,
  INTERDOMAIN: 4,
  VIRQ: 5,
} as const;

export const PENDING_WORDS = EVTCHN_PORTS / 32;

/** Words of one event channel handle. */
export const Handle = {
  /** Owning domid + 1, 0 when free. */
  OWNER: 0,
  /** Bumped at each wake-up; the handle's listener sleeps on it. */
  WAKE: 1,
  /** Bit w set: pending word w may hold events for this handle. */
  SELECTOR: 2,
  /** The worker that opened it (its thread id), so that a dead worker's handles can be reclaimed. */
  TAG: 3,
  WORDS: 4,
} as const;

/** Words of one maptrack entry: who holds a mapping of which grant entry. */
export const Maptrack = {
  /** The holding worker's tag + 1 (0: the entry is free). */
  HOLDER: 0,
  GRANTER_SLOT: 1,
  /** Word offset of the mapped grant entry. */
  ENTRY: 2,
  WORDS: 4,
} as const;

/** Words of the header. */
export const Header = {
  /** The last unique id handed to a domain. */
  LAST_UNIQUE_ID: 0,
} as const;

export interface Layout {
  readonly frames: number;
  readonly header: number;
  readonly domains: number;
  readonly domidMap: number;
  readonly frameBitmap: number;
  readonly pageBitmap: number;
  readonly grants: number;
  readonly ports: number;
  readonly pending: number;
  readonly masks: number;
  readonly handles: number;
  readonly maptrack: number;
  readonly words: number;
}

/** Offsets (in words) of each region of the control buffer, for a machine of `frames` pages. */
export function layoutFor(frames: number): Layout {
  let at = 0;
  const take = (words: number) => {
    const start = at;
    at += words;
    return start;
  };
  const bitmapWords = Math.ceil(frames / 32);
  return {
    frames,
    header: take(16),
    domains: take(MAX_DOMAINS * DomainSlot.WORDS),
    domidMap: take(DOMID_LIMIT),
    frameBitmap: take(bitmapWords),
    pageBitmap: take(bitmapWords),
    grants: take(MAX_DOMAINS * GRANT_ENTRIES * GrantEntry.WORDS),
    ports: take(MAX_DOMAINS * EVTCHN_PORTS * Port.WORDS),
    pending: take(MAX_DOMAINS * PENDING_WORDS),
    masks: take(MAX_DOMAINS * PENDING_WORDS),
    handles: take(MAX_EVTCHN_HANDLES * Handle.WORDS),
    maptrack: take(MAX_MAPTRACK * Maptrack.WORDS),
    words: at,
  };
}

/** What a worker needs to attach to the embedded hypervisor. */
export interface EmbeddedDescriptor {
  readonly frames: number;
  readonly control: SharedArrayBuffer;
  readonly memory: SharedArrayBuffer;
  /** Where frame 0 starts in `memory`: frames sit on real page boundaries, as on a machine. */
  readonly memoryOffset: number;
}

export function allocateDescriptor(frames: number): EmbeddedDescriptor {
  const layout = layoutFor(frames);
  // A page more than the frames, so that they can start on a page boundary
  // of real memory: the allocator aligns buffers to far less, and I/O with
  // O_DIRECT straight into a guest's pages needs them aligned.
  const memory = new SharedArrayBuffer(frames * PAGE_SIZE + PAGE_SIZE);
  const address = optionalNativeCalls()?.addressOf(new Uint8Array(memory, 0, 1));
  const memoryOffset = address === undefined ? 0 : (PAGE_SIZE - (address % PAGE_SIZE)) % PAGE_SIZE;
  return { frames, control: new SharedArrayBuffer(layout.words * 4), memory, memoryOffset };
}
