/**
 * The xenstore migration stream of Xen's docs/designs/xenstore-migration.md
 * (the layout of tools/xenstore/include/xenstore_state.h), which C xenstored
 * writes for live update: a preamble (the ident "xenstore", the version,
 * big-endian, and a flags word whose low bit says the byte order of the rest),
 * then records of a type and a length, each padded to 8 bytes, ending with
 * END. A stream is read whole and checked before anything is taken from it.
 *
 * What the stream has no record for, and this daemon keeps, travels in
 * records of its own, of types outside the range the document allocates
 * (XENMESH_*): each domain's record (ring page, features, quotas, the store
 * generation it appeared at) and the generation of every node.
 */
import { DOMID_INVALID } from '../../shared/domid.js';
import type { Perm } from '../store/permissions.js';
import type { SavedNode, SavedTree } from '../store/store.js';
import type { QuotaSet } from '../store/quota.js';
import type { SavedDomain } from './domains.js';

/** XS_STATE_IDENT, without its NUL. */
export const XS_STATE_IDENT = 'xenstore';
/** XS_STATE_VERSION: the version of the document this daemon reads and writes. */
export const XS_STATE_VERSION = 1;
/** The low bit of the preamble's flags: the records are big-endian (0: little-endian). */
const XS_STATE_FLAG_BIG_ENDIAN = 1;
const PREAMBLE_BYTES = 16;
const RECORD_HEADER_BYTES = 8;
const RECORD_ALIGN = 8;

/** Record types of the document (XS_STATE_TYPE_*). */
export const RecordType = { END: 0, GLOBAL: 1, CONN: 2, WATCH: 3, TA: 4, NODE: 5 } as const;
/** Records of this daemon's own ('xm' in the high half), outside the range the document uses. */
export const XENMESH_DOMAIN = 0x786d0001;
export const XENMESH_GENERATIONS = 0x786d0002;
export const XENMESH_GLOBAL = 0x786d0003;

/** XS_STATE_CONN_TYPE_RING. */
const CONN_TYPE_RING = 0;
/** XS_STATE_NODE_PERM_IGNORE: a stale entry, kept but granting nothing (XSA-322). */
const PERM_IGNORE = 0x01;
const ACCESS_LETTERS = ['n', 'r', 'w', 'b'] as const;

/** What a live update hands over: the store and the domains with their rings. */
export interface MigrationState {
  readonly tree: SavedTree;
  readonly domains: readonly SavedDomain[];
  /**
   * State of this daemon's own that a journal snapshot also needs: the
   * global quotas and the last journal record the snapshot holds.
   */
  readonly global?: { readonly globalQuotas: QuotaSet; readonly journalSeq: number };
}

export class MigrationStreamError extends Error {
  constructor(message: string) {
    super(`xenstore migration stream: ${message}`);
    this.name = 'MigrationStreamError';
  }
}

// ---- writing ----------------------------------------------------------------------

export function encodeMigrationStream(state: MigrationState): Buffer {
  const records: Buffer[] = [];
  const add = (type: number, body: Buffer) => {
    const padded = Math.ceil(body.length / RECORD_ALIGN) * RECORD_ALIGN;
    const out = Buffer.alloc(RECORD_HEADER_BYTES + padded);
    out.writeUInt32LE(type, 0);
    out.writeUInt32LE(body.length, 4);
    body.copy(out, RECORD_HEADER_BYTES);
    records.push(out);
  };
  const preamble = Buffer.alloc(PREAMBLE_BYTES);
  preamble.write(XS_STATE_IDENT, 0, 'latin1');
  preamble.writeUInt32BE(XS_STATE_VERSION, 8);
  preamble.writeUInt32BE(0, 12); // little-endian records
  records.push(preamble);

  // GLOBAL: no descriptors are handed over; the successor opens its own socket.
  const global = Buffer.alloc(8);
  global.writeInt32LE(-1, 0);
  global.writeInt32LE(-1, 4);
  add(RecordType.GLOBAL, global);

  let connId = 0;
  for (const domain of state.domains) {
    if (!domain.introduced || !domain.ring) continue;
    const conn = Buffer.alloc(20);
    conn.writeUInt32LE(++connId, 0);
    conn.writeUInt16LE(CONN_TYPE_RING, 4);
    conn.writeUInt16LE(domain.domid, 8);
    conn.writeUInt16LE(domain.target ?? DOMID_INVALID, 10);
    conn.writeUInt32LE(domain.ring.port, 12);
    // No pending input or output: connections start over after the update.
    add(RecordType.CONN, conn);
  }
  if (state.global) add(XENMESH_GLOBAL, Buffer.from(JSON.stringify(state.global), 'utf8'));
  for (const domain of state.domains) add(XENMESH_DOMAIN, Buffer.from(JSON.stringify(domain), 'utf8'));

  const generations: number[] = [];
  const visit = (path: string, node: SavedNode) => {
    add(RecordType.NODE, nodeRecord(path, node));
    generations.push(node.generation);
    for (const [name, child] of node.children) visit(path === '/' ? `/${name}` : `${path}/${name}`, child);
  };
  for (const [root, node] of state.tree.roots) visit(root, node);
  const gens = Buffer.alloc(8 + 8 * generations.length);
  gens.writeUInt32LE(generations.length, 0);
  gens.writeUInt32LE(0, 4);
  generations.forEach((g, i) => gens.writeDoubleLE(g, 8 + 8 * i));
  // The counter last, after the nodes it outruns.
  const counter = Buffer.alloc(8);
  counter.writeDoubleLE(state.tree.generation, 0);
  add(XENMESH_GENERATIONS, Buffer.concat([counter, gens]));
  add(RecordType.END, Buffer.alloc(0));
  return Buffer.concat(records);
}

function nodeRecord(path: string, node: SavedNode): Buffer {
  const pathBytes = Buffer.from(`${path}\0`, 'latin1');
  const head = Buffer.alloc(16 + 4 * node.perms.length);
  head.writeUInt32LE(0, 0); // conn_id: a committed node
  head.writeUInt32LE(0, 4); // ta_id
  head.writeUInt16LE(pathBytes.length, 8);
  head.writeUInt16LE(node.value.length, 10);
  head.writeUInt16LE(0, 12); // ta_access: not in a transaction
  head.writeUInt16LE(node.perms.length, 14);
  node.perms.forEach((perm, i) => {
    head.write(ACCESS_LETTERS[perm.access & 3]!, 16 + 4 * i, 'latin1');
    head.writeUInt8(perm.ignored ? PERM_IGNORE : 0, 17 + 4 * i);
    head.writeUInt16LE(perm.domid, 18 + 4 * i);
  });
  return Buffer.concat([head, pathBytes, node.value]);
}

// ---- reading ----------------------------------------------------------------------

interface ParsedNode {
  path: string;
  value: Buffer;
  perms: Perm[];
}

/**
 * Reads a whole stream. A bad ident, an unknown version or flags, a record
 * running past the end, a malformed record or a missing END is refused with
 * the reason, before any of it is used.
 */
export function decodeMigrationStream(bytes: Buffer): MigrationState {
  if (bytes.length < PREAMBLE_BYTES || bytes.toString('latin1', 0, 8) !== XS_STATE_IDENT) {
    throw new MigrationStreamError(`not a xenstore stream (no '${XS_STATE_IDENT}' ident)`);
  }
  const version = bytes.readUInt32BE(8);
  if (version !== XS_STATE_VERSION) throw new MigrationStreamError(`version ${version} is not supported (this xenstored reads version ${XS_STATE_VERSION})`);
  const flags = bytes.readUInt32BE(12);
  if ((flags & ~XS_STATE_FLAG_BIG_ENDIAN) !== 0) throw new MigrationStreamError(`unknown flags 0x${flags.toString(16)}`);
  const big = (flags & XS_STATE_FLAG_BIG_ENDIAN) !== 0;
  const u16 = (b: Buffer, o: number) => (big ? b.readUInt16BE(o) : b.readUInt16LE(o));
  const u32 = (b: Buffer, o: number) => (big ? b.readUInt32BE(o) : b.readUInt32LE(o));
  const f64 = (b: Buffer, o: number) => (big ? b.readDoubleBE(o) : b.readDoubleLE(o));

  const nodes: ParsedNode[] = [];
  const domains: SavedDomain[] = [];
  let generations: number[] | undefined;
  let global: MigrationState['global'];
  let counter = 0;
  let ended = false;
  let offset = PREAMBLE_BYTES;
  while (offset < bytes.length && !ended) {
    if (bytes.length - offset < RECORD_HEADER_BYTES) throw new MigrationStreamError(`a partial record header at offset ${offset}`);
    const type = u32(bytes, offset);
    const length = u32(bytes, offset + 4);
    const start = offset + RECORD_HEADER_BYTES;
    if (start + length > bytes.length) throw new MigrationStreamError(`the record at offset ${offset} runs past the end of the stream`);
    const body = bytes.subarray(start, start + length);
    offset = start + Math.ceil(length / RECORD_ALIGN) * RECORD_ALIGN;
    switch (type) {
      case RecordType.END:
        ended = true;
        break;
      case RecordType.NODE:
        nodes.push(parseNode(body, u16, u32, offset));
        break;
      case XENMESH_DOMAIN:
        domains.push(parseDomain(body));
        break;
      case XENMESH_GLOBAL:
        global = parseGlobal(body);
        break;
      case XENMESH_GENERATIONS: {
        if (body.length < 16) throw new MigrationStreamError('a short generations record');
        counter = f64(body, 0);
        const count = u32(body, 8);
        if (body.length !== 16 + 8 * count) throw new MigrationStreamError('a generations record of the wrong length');
        generations = Array.from({ length: count }, (_, i) => f64(body, 16 + 8 * i));
        break;
      }
      case RecordType.GLOBAL:
      case RecordType.CONN:
      case RecordType.WATCH:
      case RecordType.TA:
        // Descriptors, connections, their watches and transactions are not
        // carried over: connections start over (rings with their error
        // indicator set), and rings are taken from the domain records.
        break;
      default:
        throw new MigrationStreamError(`unknown record type 0x${type.toString(16)} at offset ${start - RECORD_HEADER_BYTES}`);
    }
  }
  if (!ended) throw new MigrationStreamError('no END record: the stream is truncated');
  if (generations && generations.length !== nodes.length) throw new MigrationStreamError(`${generations.length} generations for ${nodes.length} nodes`);
  return { tree: buildTree(nodes, generations, counter), domains, ...(global ? { global } : {}) };
}

function parseGlobal(body: Buffer): NonNullable<MigrationState['global']> {
  let global: NonNullable<MigrationState['global']>;
  try {
    global = JSON.parse(body.toString('utf8')) as NonNullable<MigrationState['global']>;
  } catch {
    throw new MigrationStreamError('a global record that does not parse');
  }
  if (typeof global?.journalSeq !== 'number' || typeof global.globalQuotas !== 'object') {
    throw new MigrationStreamError('a global record without its quotas or journal position');
  }
  return global;
}

function parseNode(body: Buffer, u16: (b: Buffer, o: number) => number, u32: (b: Buffer, o: number) => number, at: number): ParsedNode {
  if (body.length < 16) throw new MigrationStreamError(`a short node record before offset ${at}`);
  if (u32(body, 0) !== 0) throw new MigrationStreamError('a node of a pending transaction: transactions are not carried over');
  const pathLen = u16(body, 8);
  const valueLen = u16(body, 10);
  const permCount = u16(body, 14);
  const pathAt = 16 + 4 * permCount;
  if (permCount === 0 || pathLen === 0 || body.length !== pathAt + pathLen + valueLen) {
    throw new MigrationStreamError(`a malformed node record before offset ${at}`);
  }
  const perms: Perm[] = [];
  for (let i = 0; i < permCount; i++) {
    const letter = body.toString('latin1', 16 + 4 * i, 17 + 4 * i);
    const access = ACCESS_LETTERS.indexOf(letter as (typeof ACCESS_LETTERS)[number]);
    if (access < 0) throw new MigrationStreamError(`a permission '${letter}' that is none of n, r, w, b`);
    perms.push({ access, ignored: (body.readUInt8(17 + 4 * i) & PERM_IGNORE) !== 0, domid: u16(body, 18 + 4 * i) });
  }
  if (body[pathAt + pathLen - 1] !== 0) throw new MigrationStreamError('a node path without its NUL');
  return {
    path: body.toString('latin1', pathAt, pathAt + pathLen - 1),
    value: Buffer.from(body.subarray(pathAt + pathLen, pathAt + pathLen + valueLen)),
    perms,
  };
}

function parseDomain(body: Buffer): SavedDomain {
  let domain: SavedDomain;
  try {
    domain = JSON.parse(body.toString('utf8')) as SavedDomain;
  } catch {
    throw new MigrationStreamError('a domain record that does not parse');
  }
  if (typeof domain?.domid !== 'number' || typeof domain.generation !== 'number' || typeof domain.quotas !== 'object') {
    throw new MigrationStreamError('a domain record without its domid, generation or quotas');
  }
  return domain;
}

/** The tree from its nodes, each of which comes after its parent (the document's rule for dependent records). */
function buildTree(nodes: readonly ParsedNode[], generations: readonly number[] | undefined, counter: number): SavedTree {
  interface Building {
    value: Uint8Array;
    perms: Perm[];
    generation: number;
    children: [string, Building][];
  }
  const byPath = new Map<string, Building>();
  const roots: [string, Building][] = [];
  nodes.forEach((node, i) => {
    const built: Building = { value: node.value, perms: node.perms, generation: generations?.[i] ?? 0, children: [] };
    if (byPath.has(node.path)) throw new MigrationStreamError(`node ${node.path} appears twice`);
    byPath.set(node.path, built);
    if (node.path === '/' || node.path.startsWith('@')) {
      roots.push([node.path, built]);
      return;
    }
    const slash = node.path.lastIndexOf('/');
    const parentPath = slash === 0 ? '/' : node.path.slice(0, slash);
    const parent = byPath.get(parentPath);
    if (!node.path.startsWith('/') || !parent) throw new MigrationStreamError(`node ${node.path} comes before its parent`);
    parent.children.push([node.path.slice(slash + 1), built]);
  });
  if (!byPath.has('/')) throw new MigrationStreamError('no root node');
  let maxGeneration = 0;
  for (const node of byPath.values()) maxGeneration = Math.max(maxGeneration, node.generation);
  return { generation: Math.max(counter, maxGeneration), roots };
}
