/**
 * Where the embedded hypervisor keeps its state: a few SharedArrayBuffers
 * that every worker receives at start, so that any worker can act for any
 * domain. All fields are 32-bit words read and written with Atomics.
 */
import { optionalNativeCalls } from '../native.js';
import { PAGE_SIZE } from '../platform.js';

/** Domain ids available to guests (xen.h DOMID_FIRST_RESERVED). */
export const DOMID_LIMIT = 0x7ff0;
/**
 * Domains that can exist at once: one per domid, as on Xen. A slot is a
 * few words; what a domain needs beyond them (its grant frames and event
 * channel groups) comes from shared pools as it uses them.
 */
export const MAX_DOMAINS = DOMID_LIMIT;

/** v1 grant entries in one grant frame (a 4 KiB page of 8-byte entries). */
export const GRANT_FRAME_ENTRIES = 512;
/** Grant frames per domain: libxl's default max_grant_frames (32). */
export const MAX_GRANT_FRAMES = 32;
/** Grant entries per domain. */
export const GRANT_ENTRIES = MAX_GRANT_FRAMES * GRANT_FRAME_ENTRIES;
/**
 * Grant frames on the machine, shared by all domains; a domain gets its
 * first at creation and more as it fills them, as Xen grows a grant table
 * (gnttab_grow_table). Two per possible domain on average.
 */
export const GRANT_FRAME_POOL = 2 * MAX_DOMAINS;

/** The FIFO event channel ABI's port width (xen/include/public/event_channel.h EVTCHN_FIFO_NBITS). */
export const EVTCHN_FIFO_NBITS = 17;
/** Event channel ports per domain. */
export const EVTCHN_PORTS = 1 << EVTCHN_FIFO_NBITS;
/**
 * Ports come in groups, allocated to a domain as it binds ports, as Xen
 * allocates event channel buckets: a domain with a handful of ports holds
 * one group, not a table of 2^17.
 */
export const PORTS_PER_GROUP = 1024;
export const PORT_GROUPS_PER_DOMAIN = EVTCHN_PORTS / PORTS_PER_GROUP;
/** Port groups on the machine, shared by all domains: two per possible domain on average. */
export const PORT_GROUP_POOL = 2 * MAX_DOMAINS;

/**
 * Open event channel handles (xenevtchn_open) across all workers. Xen has
 * no such table (each open /dev/xen/evtchn is the kernel's); here it is
 * shared memory, sized for two open handles per possible domain.
 */
export const MAX_EVTCHN_HANDLES = 2 * MAX_DOMAINS;

/**
 * Maptrack frames a domain may use unless its toolstack says otherwise:
 * libxl leaves max_maptrack_frames to the hypervisor unless xl.cfg or
 * xl.conf set it, and Xen's default for gnttab_max_maptrack_frames is
 * DEFAULT_MAX_MAPTRACK_FRAMES, 1024 (xen/common/grant_table.c).
 */
export const DEFAULT_MAX_MAPTRACK_FRAMES = 1024;
/** Maptrack entries per frame: a 4 KiB page of 16-byte struct grant_mapping. */
export const MAPTRACK_PER_FRAME = 256;
/**
 * Grant mappings that can be held at once on the machine, by all domains
 * together (each is also held to its own max_maptrack_frames). Entries are
 * used lowest first, so the table's memory follows the most ever held.
 */
export const MAX_MAPTRACK = 1 << 20;
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
  /** Grant frames the domain holds (its grant entries are 0 .. GRANT_FRAMES * GRANT_FRAME_ENTRIES - 1). */
  GRANT_FRAMES: 8,
  /** The most grant mappings the domain may hold (its max_maptrack_frames in entries). */
  MAPTRACK_LIMIT: 9,
  /** Grant mappings it holds now. */
  MAPTRACK_USED: 10,
  NAME: 11,
  WORDS: 11 + NAME_BYTES / 4,
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

/** Words of one port group: its ports, then their pending bits, then their mask bits. */
export const PortGroup = {
  PORTS: 0,
  PENDING: PORTS_PER_GROUP * Port.WORDS,
  MASKS: PORTS_PER_GROUP * Port.WORDS + PORTS_PER_GROUP / 32,
  WORDS: PORTS_PER_GROUP * Port.WORDS + (2 * PORTS_PER_GROUP) / 32,
} as const;

/** Words of pending (or mask) bits of one port group. */
export const GROUP_BITMAP_WORDS = PORTS_PER_GROUP / 32;

/** Words of one event channel handle. */
export const Handle = {
  /** Owning domid + 1, 0 when free. */
  OWNER: 0,
  /** Bumped at each wake-up; the handle's listener sleeps on it. */
  WAKE: 1,
  /** Bit g set: port groups g, g + 32, g + 64, ... may hold events for this handle. */
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
  /** The mapping domain's slot and unique id, whose maptrack use the entry counts in. */
  GRANTEE_SLOT: 3,
  GRANTEE_UNIQUE_ID: 4,
  WORDS: 5,
} as const;

/** Words of the header. */
export const Header = {
  /** The last unique id handed to a domain. */
  LAST_UNIQUE_ID: 0,
  /**
   * One past the highest domain slot, event channel handle and maptrack
   * entry ever used: each is taken lowest first, so scans stop here rather
   * than at the table's capacity.
   */
  SLOT_HIGH: 1,
  HANDLE_HIGH: 2,
  MAPTRACK_HIGH: 3,
} as const;

export interface Layout {
  readonly frames: number;
  readonly header: number;
  readonly domains: number;
  readonly domidMap: number;
  readonly frameBitmap: number;
  readonly pageBitmap: number;
  readonly grantDirs: number;
  readonly grantFrameBitmap: number;
  readonly grantFrames: number;
  readonly portDirs: number;
  readonly portGroupBitmap: number;
  readonly portGroups: number;
  readonly handles: number;
  readonly maptrack: number;
  readonly words: number;
}

/**
 * Offsets (in words) of each region of the control buffer, for a machine of
 * `frames` pages. The buffer is sized for every domain Xen could have, about
 * 1.7 GiB, but it is one anonymous mapping that Linux backs with memory only
 * where it is written: the directories and pools are used lowest first and
 * their entries reused, so what a machine costs follows what it holds.
 */
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
    grantDirs: take(MAX_DOMAINS * MAX_GRANT_FRAMES),
    grantFrameBitmap: take(Math.ceil(GRANT_FRAME_POOL / 32)),
    grantFrames: take(GRANT_FRAME_POOL * GRANT_FRAME_ENTRIES * GrantEntry.WORDS),
    portDirs: take(MAX_DOMAINS * PORT_GROUPS_PER_DOMAIN),
    portGroupBitmap: take(Math.ceil(PORT_GROUP_POOL / 32)),
    portGroups: take(PORT_GROUP_POOL * PortGroup.WORDS),
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
