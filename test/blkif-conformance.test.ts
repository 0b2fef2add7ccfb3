/**
 * The blkif wire formats (shared/blkif.ts) and the ring arithmetic
 * (shared/ring.ts) against Xen's own C headers: test/native/blkif-peer.c
 * is a block frontend or backend written with nothing but <xen/io/ring.h>
 * and <xen/io/blkif.h>, built natively (the x86_64 ABI) and with -m32 (the
 * x86_32 ABI). It shares a ring with us through a file of ring pages, and
 * for each ABI the two exchange requests and responses in both directions,
 * compared field by field and byte by byte:
 *
 * - its front ring writes every kind of request (READ and WRITE with 1 and
 *   11 segments, WRITE_BARRIER, FLUSH_DISKCACHE with none, DISCARD with and
 *   without BLKIF_DISCARD_SECURE, INDIRECT READ and WRITE) and our BackRing
 *   reads them; our responses go back and its RING_GET_RESPONSE checks them;
 * - our FrontRing writes them, its back ring reads them and responds;
 * - on rings of 1, 2 and 4 pages whose free-running indexes start at 0,
 *   just below 2^31 and just below 2^32, with several rings' worth pushed
 *   through so that they wrap;
 * - sizeof and offsetof of every struct and field, the constants, and
 *   __CONST_RING_SIZE against layoutOf and ringSize;
 * - indirect segment pages written by either side and read by the other;
 * - the number-based codec of the hot path (BlkifRequestWriter,
 *   BlkifRequestView, BlkifResponseView, writeResponse,
 *   writeIndirectSegment): what the writer puts on our front ring is what
 *   C's back ring reads, byte for byte the same as encodeRequest; the views
 *   read every entry C wrote, and every random entry, as decodeRequest
 *   does.
 *
 * Where -m32 does not build (no gcc-multilib), the x86_32 exchanges are
 * skipped and BLKIF_STRUCT_OFFSETS.x86_32 is checked against the documented
 * i386 table below instead; XENMESH_BLKIF_NO_M32=1 forces that path.
 *
 * Bad inputs tried here: operation codes blkif.h does not define (4, the
 * reserved one, 7, 128, 255), nr_segments above 11 (12, 200, 255) as a
 * hostile frontend writes it, an indirect request with 65535 segments and
 * an unknown indirect operation, discard flags other than 0 and 1, response
 * statuses at the ends of int16, entries of random bytes (read by C and by
 * decodeRequest, which must agree), request and response producer indexes
 * more than a ring ahead or behind the consumer (RING_*_PROD_OVERFLOW
 * against our -1), and a few thousand random entries per ABI that
 * decodeRequest must read without throwing. For the number-based codec:
 * sector numbers and ids of 2^53 and above (refused when writing, read as
 * at least 2^53), negative and fractional ones, nr_segments 0 and 255,
 * indirect nr_segments 0, 257 and 65535, more indirect segments than the
 * view holds, ids with the high word set, statuses at the ends of int16.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import {
  abiForProtocol,
  BLKIF_DISCARD_SECURE,
  BLKIF_MAX_EXACT_SECTOR,
  BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_SEGMENT_BYTES,
  BLKIF_SEGMENT_OFFSETS,
  BLKIF_SEGS_PER_INDIRECT_FRAME,
  BLKIF_STRUCT_OFFSETS,
  BlkifOp,
  BlkifRequestView,
  BlkifRequestWriter,
  BlkifResponseView,
  BlkifStatus,
  decodeRequest,
  decodeResponse,
  decodeSegments,
  encodeRequest,
  encodeResponse,
  encodeSegments,
  indirectPagesFor,
  layoutOf,
  NATIVE_ABI,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  SECTORS_PER_PAGE,
  VDisk,
  writeIndirectSegment,
  writeResponse,
  XEN_IO_PROTO_ABI_X86_32,
  XEN_IO_PROTO_ABI_X86_64,
  type BlkifAbi,
  type BlkifRequest,
  type BlkifResponse,
  type BlkifSegment,
} from '../shared/blkif.js';
import { PAGE_SIZE } from '../shared/platform.js';
import { BackRing, FrontRing, SharedRing, SRING_HEADER_BYTES, ringSize } from '../shared/ring.js';
import { run } from './helpers/daemon.js';

const PEER_SOURCE = fileURLToPath(new URL('../../test/native/blkif-peer.c', import.meta.url));
const CFLAGS = ['-std=gnu99', '-O2', '-Wall'];
const ABIS: BlkifAbi[] = ['x86_64', 'x86_32'];
const RING_PAGES = [1, 2, 4];
/** Where the free-running indexes start: at zero, below the int32 sign bit, and just below 2^32. */
const STARTS = [0, 0x7ffffff0, 0xfffffff0];

const u32 = (n: number) => n >>> 0;
const hex = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('hex');

/*
 * The x86_32 layout as the i386 System V ABI gives it (uint64_t aligned to
 * 4 inside structs, so no hole after `handle`; the struct aligned to 4), in
 * the form blkif-peer prints it. Checked against the -m32 build, and the
 * only check of BLKIF_STRUCT_OFFSETS.x86_32 on a machine that cannot build
 * one.
 */
const X86_32_DOCUMENTED: CLayout = {
  blkif_request_segment: { sizeof: 8, fields: { gref: [0, 4], first_sect: [4, 1], last_sect: [5, 1] } },
  blkif_request: {
    sizeof: 108,
    fields: { operation: [0, 1], nr_segments: [1, 1], handle: [2, 2], id: [4, 8], sector_number: [12, 8], seg: [20, 88] },
  },
  blkif_request_discard: {
    sizeof: 28,
    fields: { operation: [0, 1], flag: [1, 1], handle: [2, 2], id: [4, 8], sector_number: [12, 8], nr_sectors: [20, 8] },
  },
  blkif_request_indirect: {
    sizeof: 64,
    fields: {
      operation: [0, 1],
      indirect_op: [1, 1],
      nr_segments: [2, 2],
      id: [4, 8],
      sector_number: [12, 8],
      handle: [20, 2],
      indirect_grefs: [24, 32],
      pad: [56, 8],
    },
  },
  blkif_response: { sizeof: 12, fields: { id: [0, 8], operation: [8, 1], status: [10, 2] } },
  blkif_sring: {
    sizeof: 172,
    fields: { req_prod: [0, 4], req_event: [4, 4], rsp_prod: [8, 4], rsp_event: [12, 4], pvt: [16, 4], __pad: [20, 44], ring: [64, 108] },
  },
  blkif_sring_entry: { sizeof: 108, fields: {} },
};

/** sizeof and [offsetof, sizeof] of each field, per struct, as blkif-peer prints them. */
type CLayout = Record<string, { sizeof: number; fields: Record<string, [number, number]> }>;

/**
 * What the codec assumes, in blkif-peer's form: BLKIF_STRUCT_OFFSETS with
 * the width each field is read and written with (uint8 1, uint16 2,
 * grant_ref_t 4, uint64 8).
 */
function ourLayout(abi: BlkifAbi): CLayout {
  const o = BLKIF_STRUCT_OFFSETS[abi];
  const s = BLKIF_SEGMENT_OFFSETS;
  const indirect: Record<string, [number, number]> = {
    operation: [o.indirect.operation, 1],
    indirect_op: [o.indirect.indirectOp, 1],
    nr_segments: [o.indirect.nrSegments, 2],
    id: [o.indirect.id, 8],
    sector_number: [o.indirect.sectorNumber, 8],
    handle: [o.indirect.handle, 2],
    indirect_grefs: [o.indirect.indirectGrefs, 4 * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
  };
  if (o.indirect.pad !== null) indirect.pad = [o.indirect.pad, 8];
  return {
    blkif_request_segment: { sizeof: s.bytes, fields: { gref: [s.gref, 4], first_sect: [s.firstSect, 1], last_sect: [s.lastSect, 1] } },
    blkif_request: {
      sizeof: o.request.bytes,
      fields: {
        operation: [o.request.operation, 1],
        nr_segments: [o.request.nrSegments, 1],
        handle: [o.request.handle, 2],
        id: [o.request.id, 8],
        sector_number: [o.request.sectorNumber, 8],
        seg: [o.request.seg, BLKIF_SEGMENT_BYTES * BLKIF_MAX_SEGMENTS_PER_REQUEST],
      },
    },
    blkif_request_discard: {
      sizeof: o.discard.bytes,
      fields: {
        operation: [o.discard.operation, 1],
        flag: [o.discard.flag, 1],
        handle: [o.discard.handle, 2],
        id: [o.discard.id, 8],
        sector_number: [o.discard.sectorNumber, 8],
        nr_sectors: [o.discard.nrSectors, 8],
      },
    },
    blkif_request_indirect: { sizeof: o.indirect.bytes, fields: indirect },
    blkif_response: {
      sizeof: o.response.bytes,
      fields: { id: [o.response.id, 8], operation: [o.response.operation, 1], status: [o.response.status, 2] },
    },
    blkif_sring: {
      sizeof: SRING_HEADER_BYTES + o.entryBytes,
      fields: {
        req_prod: [0, 4],
        req_event: [4, 4],
        rsp_prod: [8, 4],
        rsp_event: [12, 4],
        pvt: [16, 4],
        __pad: [20, 44],
        ring: [SRING_HEADER_BYTES, o.entryBytes],
      },
    },
    blkif_sring_entry: { sizeof: o.entryBytes, fields: {} },
  };
}

/** mulberry32: the same values on every run. */
class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let x = this.state;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return (x ^ (x >>> 14)) >>> 0;
  }
  u16(): number {
    return this.u32() & 0xffff;
  }
  u8(): number {
    return this.u32() & 0xff;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  below(n: number): number {
    return this.u32() % n;
  }
  fill(bytes: Uint8Array): Uint8Array {
    for (let i = 0; i < bytes.length; i++) bytes[i] = this.u8();
    return bytes;
  }
  segments(count: number): BlkifSegment[] {
    return Array.from({ length: count }, () => ({ gref: this.u32(), firstSect: this.u8(), lastSect: this.u8() }));
  }
}

/** The n-th request of a run: every kind in turn, hostile ones included, with random field values. */
function makeRequest(random: Random, n: number): BlkifRequest {
  const handle = random.u16();
  const id = random.u64();
  const sectorNumber = random.u64();
  const rw = (operation: number, nrSegments: number): BlkifRequest => ({
    kind: 'rw',
    operation,
    nrSegments,
    handle,
    id,
    sectorNumber,
    segments: random.segments(Math.min(nrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST)),
  });
  const discard = (flag: number): BlkifRequest => ({
    kind: 'discard',
    operation: BlkifOp.DISCARD,
    flag,
    handle,
    id,
    sectorNumber,
    nrSectors: random.u64(),
  });
  const indirect = (indirectOp: number, nrSegments: number): BlkifRequest => {
    const pages = Math.min(indirectPagesFor(nrSegments), BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    const indirectGrefs = Array.from({ length: BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST }, (_, i) => (i < pages ? random.u32() : 0));
    return { kind: 'indirect', operation: BlkifOp.INDIRECT, indirectOp, nrSegments, handle, id, sectorNumber, indirectGrefs };
  };
  const round = Math.floor(n / 14);
  switch (n % 14) {
    case 0: return rw(BlkifOp.READ, 1);
    case 1: return rw(BlkifOp.WRITE, 1);
    case 2: return rw(BlkifOp.READ, BLKIF_MAX_SEGMENTS_PER_REQUEST);
    case 3: return rw(BlkifOp.WRITE, BLKIF_MAX_SEGMENTS_PER_REQUEST);
    case 4: return rw(BlkifOp.WRITE_BARRIER, 4);
    case 5: return rw(BlkifOp.FLUSH_DISKCACHE, 0);
    case 6: return discard(0);
    case 7: return discard(BLKIF_DISCARD_SECURE);
    case 8: return indirect(BlkifOp.READ, 1100);
    case 9: return indirect(BlkifOp.WRITE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME);
    case 10: return rw([4, 7, 128, 255][round % 4]!, 2);
    case 11: return rw(BlkifOp.READ, [12, 200, 255][round % 3]!);
    case 12: return discard([0xfe, 0xff, 2][round % 3]!);
    default: return indirect([BlkifOp.WRITE_BARRIER, 9][round % 2]!, 0xffff);
  }
}

/** Response statuses in turn: the three blkif.h defines, and the ends of int16 a hostile backend may write. */
const STATUSES = [BlkifStatus.OKAY, BlkifStatus.ERROR, BlkifStatus.EOPNOTSUPP, 0x7fff, -0x8000];

function requestCommand(r: BlkifRequest): string {
  switch (r.kind) {
    case 'rw':
      return `rw ${r.operation} ${r.nrSegments} ${r.handle} ${r.id} ${r.sectorNumber} ${r.segments.length}${r.segments
        .map((s) => ` ${s.gref} ${s.firstSect} ${s.lastSect}`)
        .join('')}`;
    case 'discard':
      return `discard ${r.operation} ${r.flag} ${r.handle} ${r.id} ${r.sectorNumber} ${r.nrSectors}`;
    case 'indirect':
      return `indirect ${r.operation} ${r.indirectOp} ${r.nrSegments} ${r.handle} ${r.id} ${r.sectorNumber} ${r.indirectGrefs.join(' ')}`;
  }
}

type Json = Record<string, unknown>;

/** A request as blkif-peer prints it, with its 64-bit strings made bigints again. */
function requestFromC(json: unknown): BlkifRequest {
  const fields = json as Json;
  const request: Json = { ...fields, id: BigInt(fields.id as string), sectorNumber: BigInt(fields.sectorNumber as string) };
  if (fields.kind === 'discard') request.nrSectors = BigInt(fields.nrSectors as string);
  return request as unknown as BlkifRequest;
}

function responseFromC(json: unknown): BlkifResponse {
  const fields = json as Json;
  return { id: BigInt(fields.id as string), operation: fields.operation as number, status: fields.status as number };
}

interface Reply {
  json: Json[];
  error: string | undefined;
}

/** A running blkif-peer, driven one command line at a time. */
class Peer {
  private stderr = '';
  private readonly lines: AsyncIterator<string>;
  private readonly exited: Promise<number>;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stderr.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code ?? -1)));
  }

  /** Starts the peer and reads its greeting (the front and back modes print their ring size). */
  static async start(t: Test, binary: string, args: (string | number)[]): Promise<{ peer: Peer; hello: Reply }> {
    const peer = new Peer(spawn(binary, args.map(String)));
    t.teardown(() => {
      if (peer.child.exitCode === null) peer.child.kill('SIGKILL');
    });
    return { peer, hello: await peer.reply() };
  }

  private async reply(): Promise<Reply> {
    const json: Json[] = [];
    for (;;) {
      const next = await this.lines.next();
      if (next.done) throw new Error(`blkif-peer ended mid-reply: ${this.stderr}`);
      const line = next.value;
      if (line === 'ok') return { json, error: undefined };
      if (line.startsWith('error ')) return { json, error: line.slice(6) };
      json.push(JSON.parse(line) as Json);
    }
  }

  /** Sends the commands at once and collects one reply for each. */
  async send(commands: string[]): Promise<Reply[]> {
    this.child.stdin.write(commands.map((command) => `${command}\n`).join(''));
    const replies: Reply[] = [];
    for (let i = 0; i < commands.length; i++) replies.push(await this.reply());
    return replies;
  }

  /** One command whose reply must be a success with one JSON line. */
  async one(command: string): Promise<Json> {
    const [reply] = await this.send([command]);
    if (reply!.error !== undefined || reply!.json.length !== 1) throw new Error(`${command}: ${JSON.stringify(reply)}`);
    return reply!.json[0]!;
  }

  /** Exit status: 0 unless one of the peer's own checks failed. */
  async quit(): Promise<number> {
    this.child.stdin.end('quit\n');
    return this.exited;
  }
}

/** The ring pages as a file the peer maps; we copy it in at the start of our turn and out at the end. */
class RingFile {
  readonly bytes: Uint8Array;
  readonly pages: Uint8Array[];
  private readonly fd: number;

  constructor(t: Test, readonly path: string, pageCount: number) {
    this.bytes = new Uint8Array(pageCount * PAGE_SIZE);
    this.pages = Array.from({ length: pageCount }, (_, i) => this.bytes.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    writeFileSync(path, this.bytes);
    this.fd = openSync(path, 'r+');
    t.teardown(() => closeSync(this.fd));
  }

  load(): void {
    readSync(this.fd, this.bytes, 0, this.bytes.length, 0);
  }

  /** Written in place, never truncated: the peer has the file mapped. */
  store(): void {
    writeSync(this.fd, this.bytes, 0, this.bytes.length, 0);
  }
}

/** A ring's worth and more, in batches of several sizes (a full ring among them), so that the indexes wrap. */
const batchesFor = (size: number) => [size, 5, size - 1, 17, size, 3];

const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blkif-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The peer for each ABI, or why there is none. */
const peers = new Map<BlkifAbi, string>();
const missing = new Map<BlkifAbi, string>();
for (const abi of ABIS) {
  const binary = join(dir, `blkif-peer-${abi}`);
  const flags = abi === 'x86_32' ? ['-m32'] : [];
  const forced = abi === 'x86_32' && process.env.XENMESH_BLKIF_NO_M32 === '1';
  const built = forced ? { code: 1, stderr: 'XENMESH_BLKIF_NO_M32=1' } : await run('cc', [...CFLAGS, ...flags, '-o', binary, PEER_SOURCE]);
  if (built.code === 0) peers.set(abi, binary);
  else missing.set(abi, `cc ${[...CFLAGS, ...flags].join(' ')} failed: ${built.stderr.trim()}`);
}

t.ok(peers.has(NATIVE_ABI), `the native peer builds (${missing.get(NATIVE_ABI) ?? 'ok'})`);

/** Runs `body` with the ABI's peer, or skips it (noting why) where the compiler cannot build one. */
function withPeer(t: Test, abi: BlkifAbi, name: string, body: (t: Test, binary: string) => Promise<void>): void {
  const binary = peers.get(abi);
  if (binary === undefined) {
    t.test(name, { skip: `no ${abi} build of blkif-peer: ${missing.get(abi)}` }, async () => {});
    return;
  }
  t.test(name, (t) => body(t, binary));
}

let fileCounter = 0;
const ringPath = () => join(dir, `ring-${++fileCounter}`);

for (const abi of ABIS) {
  t.test(`${abi}: struct sizes, offsets, constants and ring sizes`, async (t) => {
    const o = BLKIF_STRUCT_OFFSETS[abi];
    const layout = layoutOf(abi);
    t.strictSame(
      layout,
      { requestBytes: o.request.bytes, responseBytes: o.response.bytes, entryBytes: o.entryBytes },
      'layoutOf agrees with the offset table',
    );
    t.equal(
      o.entryBytes,
      Math.max(o.request.bytes, o.discard.bytes, o.indirect.bytes, o.response.bytes),
      'a slot is as big as its largest member',
    );
    if (abi === 'x86_32') t.strictSame(ourLayout(abi), X86_32_DOCUMENTED, 'the table is the documented i386 layout');

    const binary = peers.get(abi);
    if (binary === undefined) {
      t.comment(`no ${abi} build (${missing.get(abi)}): checked against the documented table only`);
      return;
    }
    const result = await run(binary, ['layout']);
    t.equal(result.code, 0, 'blkif-peer layout runs');
    const c = JSON.parse(result.stdout.split('\n')[0]!) as { abi: string; structs: CLayout; constants: Json; ringSizes: Record<string, number> };
    t.equal(c.abi, abi, 'the build is of this ABI');
    for (const [name, struct] of Object.entries(ourLayout(abi))) {
      t.strictSame(c.structs[name], struct, `sizeof and offsetof of struct ${name}`);
    }
    t.strictSame(Object.keys(c.structs).sort(), Object.keys(ourLayout(abi)).sort(), 'every struct compared');
    if (abi === 'x86_32') t.strictSame(c.structs, X86_32_DOCUMENTED, 'the documented i386 table is what -m32 gives');
    t.strictSame(
      c.constants,
      {
        BLKIF_OP_READ: BlkifOp.READ,
        BLKIF_OP_WRITE: BlkifOp.WRITE,
        BLKIF_OP_WRITE_BARRIER: BlkifOp.WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE: BlkifOp.FLUSH_DISKCACHE,
        BLKIF_OP_RESERVED_1: 4,
        BLKIF_OP_DISCARD: BlkifOp.DISCARD,
        BLKIF_OP_INDIRECT: BlkifOp.INDIRECT,
        BLKIF_RSP_OKAY: BlkifStatus.OKAY,
        BLKIF_RSP_ERROR: BlkifStatus.ERROR,
        BLKIF_RSP_EOPNOTSUPP: BlkifStatus.EOPNOTSUPP,
        BLKIF_MAX_SEGMENTS_PER_REQUEST,
        BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
        BLKIF_DISCARD_SECURE,
        VDISK_CDROM: VDisk.CDROM,
        VDISK_REMOVABLE: VDisk.REMOVABLE,
        VDISK_READONLY: VDisk.READONLY,
        SEGS_PER_INDIRECT_FRAME: BLKIF_SEGS_PER_INDIRECT_FRAME,
      },
      'the constants are blkif.h\'s',
    );
    t.notOk(Object.values(BlkifOp).includes(4 as never), 'BLKIF_OP_RESERVED_1 is not an operation of ours');
    for (const [pages, size] of Object.entries(c.ringSizes)) {
      t.equal(ringSize(Number(pages), layout.entryBytes), size, `__CONST_RING_SIZE(blkif, ${pages} pages) is ${size}`);
      const sring = new SharedRing(Array.from({ length: Number(pages) }, () => new Uint8Array(PAGE_SIZE)), layout.entryBytes);
      t.equal(sring.size, size, `SharedRing of ${pages} pages has ${size} slots`);
    }
  });
}

for (const abi of ABIS) {
  for (const pages of RING_PAGES) {
    for (const start of STARTS) {
      const where = `${abi}, ${pages} page${pages > 1 ? 's' : ''}, indexes from 0x${start.toString(16)}`;

      withPeer(t, abi, `C front ring, our back ring: ${where}`, async (t, binary) => {
        const { entryBytes, responseBytes } = layoutOf(abi);
        const file = new RingFile(t, ringPath(), pages);
        const { peer, hello } = await Peer.start(t, binary, ['front', file.path, pages, start]);
        const sring = new SharedRing(file.pages, entryBytes);
        t.strictSame(hello.json[0], { ring_size: sring.size, const_ring_size: ringSize(pages, entryBytes) }, 'RING_SIZE agrees');
        const back = new BackRing(sring);
        back.rspProdPvt = back.reqCons = start;
        const random = new Random(0xb10c + pages * 7 + start + (abi === 'x86_32' ? 1 : 0));
        const entry = new Uint8Array(entryBytes);
        let sent = 0;
        let total = start;
        for (const count of batchesFor(sring.size)) {
          const requests = Array.from({ length: count }, () => makeRequest(random, sent++));
          const written = await peer.send([...requests.map(requestCommand), 'push']);
          const errors = written.filter((r) => r.error !== undefined).map((r) => r.error);
          t.strictSame(errors, [], `C wrote ${count} requests`);
          const cWrote = written.slice(0, count).map((r) => r.json[0]!);
          t.strictSame(cWrote.map((w) => requestFromC(w.req)), requests, 'C read back the fields it was given');
          const encoded = requests.map((r) => {
            encodeRequest(abi, r, entry);
            return hex(entry);
          });
          t.strictSame(encoded, cWrote.map((w) => w.hex), 'encodeRequest writes the bytes C writes');
          t.strictSame(written[count]!.json, [{ notify: 1 }], 'RING_PUSH_REQUESTS_AND_CHECK_NOTIFY notifies');

          file.load();
          t.equal(back.unconsumedRequests(), count, 'our back ring sees every request');
          const decoded: BlkifRequest[] = [];
          const raw: string[] = [];
          while (back.unconsumedRequests() > 0) {
            back.takeRequest(entry);
            raw.push(hex(entry));
            decoded.push(decodeRequest(abi, entry));
          }
          t.equal(back.finalCheckForRequests(), 0, 'and nothing more');
          t.strictSame(raw, encoded, 'the slots hold what C wrote');
          t.strictSame(decoded, requests, 'decodeRequest reads what C wrote');
          const view = new BlkifRequestView(abi);
          t.strictSame(
            raw.map((h) => viewDisagrees(view.read(Buffer.from(h, 'hex')), decodeRequest(abi, Buffer.from(h, 'hex')))).filter((d) => d),
            [],
            'BlkifRequestView reads what C wrote as decodeRequest does',
          );

          const responses = requests.map((r, i) => ({ id: r.id, operation: r.operation, status: STATUSES[(sent + i) % STATUSES.length]! }));
          const responseHex = responses.map((r) => {
            encodeResponse(abi, r, entry);
            back.putResponse(entry);
            return hex(entry.subarray(0, responseBytes));
          });
          t.ok(back.pushResponsesAndCheckNotify(), 'our push notifies the front, which asked to be woken');
          file.store();

          total = u32(total + count);
          const [taken, state] = await peer.send([`responses ${responses.map((r) => `${r.id}:${r.operation}:${r.status}`).join(' ')}`, 'state']);
          t.equal(taken!.error, undefined, 'RING_GET_RESPONSE finds the responses expected');
          t.strictSame(taken!.json.map((j) => responseFromC(j.rsp)), responses, 'C reads the responses we wrote');
          t.strictSame(taken!.json.map((j) => j.hex), responseHex, 'byte for byte');
          t.strictSame(
            state!.json[0],
            {
              req_prod_pvt: total,
              rsp_cons: total,
              nr_ents: sring.size,
              req_prod: total,
              req_event: u32(total + 1),
              rsp_prod: total,
              rsp_event: u32(total + 1),
            },
            `indexes at 0x${total.toString(16)} on both sides`,
          );
        }
        t.ok(sent > sring.size * 2, `${sent} requests through a ring of ${sring.size}`);
        t.equal(await peer.quit(), 0, 'the C frontend found nothing wrong');
      });

      withPeer(t, abi, `our front ring, C back ring: ${where}`, async (t, binary) => {
        await ourFrontCBack(t, abi, binary, pages, start, (random, n) => makeRequest(random, n));
      });
    }
  }

  withPeer(t, abi, `${abi}: our number writer, C back ring`, async (t, binary) => {
    const writer = new BlkifRequestWriter(abi);
    const entry = new Uint8Array(layoutOf(abi).entryBytes);
    const viaObjects = new Uint8Array(entry.length);
    let differs = 0;
    await ourFrontCBack(t, abi, binary, 4, 0xfffffff0, (random, n) => {
      const request = exactRequest(makeRequest(random, n), random);
      writeWithWriter(writer, request, entry, 0);
      encodeRequest(abi, request, viaObjects);
      if (hex(entry) !== hex(viaObjects) && differs++ === 0) t.fail(`the writer and encodeRequest disagree on ${requestCommand(request)}`);
      return entry.slice();
    });
    t.equal(differs, 0, 'BlkifRequestWriter writes the bytes encodeRequest writes');
  });

  withPeer(t, abi, `${abi}: C reads entries of random bytes as decodeRequest does`, async (t, binary) => {
    const opcodes = [0, 1, 2, 3, 4, 5, 6, 7, 255];
    await ourFrontCBack(t, abi, binary, 2, 0xffffffe0, (random, n) => {
      const bytes = random.fill(new Uint8Array(layoutOf(abi).entryBytes));
      if (n % 2 === 0) bytes[0] = opcodes[(n / 2) % opcodes.length]!;
      return bytes;
    });
  });
}

/**
 * Our FrontRing pushes requests (encoded, or raw bytes as a hostile
 * frontend writes them), blkif-peer's back ring reads and answers them,
 * and our front takes the answers.
 */
async function ourFrontCBack(
  t: Test,
  abi: BlkifAbi,
  binary: string,
  pages: number,
  start: number,
  make: (random: Random, n: number) => BlkifRequest | Uint8Array,
): Promise<void> {
  const { entryBytes, responseBytes } = layoutOf(abi);
  const file = new RingFile(t, ringPath(), pages);
  const sring = new SharedRing(file.pages, entryBytes);
  const front = FrontRing.create(sring);
  sring.reqProd = sring.rspProd = start;
  sring.reqEvent = sring.rspEvent = u32(start + 1);
  front.reqProdPvt = front.rspCons = start;
  file.store();
  const { peer, hello } = await Peer.start(t, binary, ['back', file.path, pages, start]);
  t.strictSame(hello.json[0], { ring_size: sring.size, const_ring_size: ringSize(pages, entryBytes) }, 'RING_SIZE agrees');
  const random = new Random(0xf00d + pages * 13 + start + (abi === 'x86_32' ? 1 : 0));
  const entry = new Uint8Array(entryBytes);
  let sent = 0;
  let total = start;
  for (const count of batchesFor(sring.size)) {
    const expected: BlkifRequest[] = [];
    const bytes: string[] = [];
    for (let i = 0; i < count; i++) {
      const made = make(random, sent++);
      if (made instanceof Uint8Array) {
        entry.set(made);
        expected.push(decodeRequest(abi, made));
      } else {
        encodeRequest(abi, made, entry);
        expected.push(made);
      }
      bytes.push(hex(entry));
      front.putRequest(entry);
    }
    t.ok(front.pushRequestsAndCheckNotify(), 'our push notifies the back, which asked to be woken');
    file.store();

    total = u32(total + count);
    const [read, readState] = await peer.send(['requests', 'state']);
    t.equal(read!.error, undefined, 'RING_REQUEST_PROD_OVERFLOW finds nothing wrong');
    t.strictSame(read!.json.map((j) => requestFromC(j.req)), expected, `C's back ring reads the ${count} requests we wrote`);
    t.strictSame(read!.json.map((j) => j.hex), bytes, 'byte for byte');
    t.strictSame(
      readState!.json[0],
      {
        rsp_prod_pvt: u32(total - count),
        req_cons: total,
        nr_ents: sring.size,
        req_prod: total,
        req_event: u32(total + 1),
        rsp_prod: u32(total - count),
        rsp_event: u32(total - count + 1),
      },
      'RING_FINAL_CHECK_FOR_REQUESTS asks for the next one',
    );

    const responses = expected.map((r, i) => ({ id: r.id, operation: r.operation, status: STATUSES[(sent + i) % STATUSES.length]! }));
    const answered = await peer.send([...responses.map((r) => `respond ${r.id} ${r.operation} ${r.status}`), 'push']);
    t.strictSame(answered.slice(0, count).map((a) => responseFromC(a.json[0]!.rsp)), responses, 'C wrote the responses asked for');
    t.strictSame(answered[count]!.json, [{ notify: 1 }], 'RING_PUSH_RESPONSES_AND_CHECK_NOTIFY notifies');

    file.load();
    t.equal(front.unconsumedResponses(), count, 'our front ring sees every response');
    const decoded: BlkifResponse[] = [];
    const raw: string[] = [];
    const ours: string[] = [];
    while (front.unconsumedResponses() > 0) {
      front.takeResponse(entry);
      raw.push(hex(entry.subarray(0, responseBytes)));
      const response = decodeResponse(abi, entry);
      decoded.push(response);
      encodeResponse(abi, response, entry);
      ours.push(hex(entry.subarray(0, responseBytes)));
    }
    t.notOk(front.finalCheckForResponses(), 'and nothing more');
    t.strictSame(decoded, responses, 'decodeResponse reads what C wrote');
    t.strictSame(raw, answered.slice(0, count).map((a) => a.json[0]!.hex), 'the slots hold what C wrote');
    t.strictSame(ours, raw, 'encodeResponse writes the same bytes');
    file.store();
  }
  const state = await peer.one('state');
  t.strictSame(
    state,
    {
      rsp_prod_pvt: total,
      req_cons: total,
      nr_ents: sring.size,
      req_prod: total,
      req_event: u32(total + 1),
      rsp_prod: total,
      rsp_event: u32(total + 1),
    },
    `indexes at 0x${total.toString(16)} on both sides`,
  );
  t.ok(sent > sring.size * 2, `${sent} requests through a ring of ${sring.size}`);
  t.equal(await peer.quit(), 0, 'the C backend exits cleanly');
}

for (const abi of ABIS) {
  withPeer(t, abi, `${abi}: producer indexes more than a ring ahead (RING_*_PROD_OVERFLOW)`, async (t, binary) => {
    const { entryBytes } = layoutOf(abi);
    for (const pages of [1, 4]) {
      for (const start of STARTS) {
        const file = new RingFile(t, ringPath(), pages);
        const sring = new SharedRing(file.pages, entryBytes);
        FrontRing.create(sring);
        file.store();
        const size = sring.size;
        const distances = [0, 1, size - 1, size, size + 1, 2 * size, 0x7fffffff, 0x80000000, 0xffffffff];

        // The back end: a frontend's request producer against our responses.
        const { peer: cBack } = await Peer.start(t, binary, ['back', file.path, pages, start]);
        const back = new BackRing(sring);
        const theirs: Json[] = [];
        const ours: Json[] = [];
        for (const consumed of [0, 3, size]) {
          back.rspProdPvt = start;
          back.reqCons = u32(start + consumed);
          for (const distance of distances) {
            sring.reqProd = u32(start + distance);
            file.store();
            const [, check] = await cBack.send([`set ${back.rspProdPvt} ${back.reqCons}`, 'check']);
            const c = check!.json[0]!;
            const n = back.unconsumedRequests();
            const at = { consumed, distance };
            theirs.push({ ...at, overflow: c.overflow === 1, unconsumed: c.overflow === 1 ? null : c.unconsumed });
            ours.push({ ...at, overflow: n === -1, unconsumed: n === -1 ? null : n });
          }
        }
        t.strictSame(ours, theirs, `BackRing.unconsumedRequests() is -1 exactly where RING_REQUEST_PROD_OVERFLOW holds (${pages} pages, from 0x${start.toString(16)})`);
        t.ok(ours.some((o) => o.overflow) && ours.some((o) => !o.overflow), 'both outcomes were tried');
        t.equal(await cBack.quit(), 0);

        // The front end: a backend's response producer against our consumer.
        const { peer: cFront } = await Peer.start(t, binary, ['front', file.path, pages, start]);
        file.load();
        const front = new FrontRing(sring);
        const theirResponses: Json[] = [];
        const ourResponses: Json[] = [];
        for (const consumed of [0, 3, size]) {
          front.reqProdPvt = u32(start + size + consumed);
          front.rspCons = u32(start + consumed);
          for (const distance of distances) {
            sring.rspProd = u32(front.rspCons + distance);
            file.store();
            const [, check] = await cFront.send([`set ${front.reqProdPvt} ${front.rspCons}`, 'check']);
            const c = check!.json[0]!;
            const n = front.unconsumedResponses();
            const at = { consumed, distance };
            theirResponses.push({ ...at, overflow: c.overflow === 1, unconsumed: c.overflow === 1 ? null : c.unconsumed });
            ourResponses.push({ ...at, overflow: n === -1, unconsumed: n === -1 ? null : n });
          }
        }
        t.strictSame(ourResponses, theirResponses, `FrontRing.unconsumedResponses() is -1 exactly where RING_RESPONSE_PROD_OVERFLOW holds (${pages} pages, from 0x${start.toString(16)})`);
        t.equal(await cFront.quit(), 0);
      }
    }
  });

  withPeer(t, abi, `${abi}: indirect segment pages`, async (t, binary) => {
    const path = ringPath();
    const page = new Uint8Array(PAGE_SIZE);
    writeFileSync(path, page);

    const written = await run(binary, ['segments-write', path, String(BLKIF_SEGS_PER_INDIRECT_FRAME)]);
    t.equal(written.code, 0, 'C fills a page with struct blkif_request_segment');
    const theirs = JSON.parse(written.stdout.split('\n')[0]!) as BlkifSegment[];
    t.equal(theirs.length, BLKIF_SEGS_PER_INDIRECT_FRAME);
    const fd = openSync(path, 'r');
    readSync(fd, page, 0, PAGE_SIZE, 0);
    closeSync(fd);
    t.strictSame(decodeSegments(page, BLKIF_SEGS_PER_INDIRECT_FRAME), theirs, 'decodeSegments reads every entry (padding ignored)');
    const gathered = decodeSegments(page, 3);
    t.equal(decodeSegments(page.subarray(100 * BLKIF_SEGMENT_BYTES), 50, gathered), gathered, 'appends to the array given');
    t.strictSame(gathered, [...theirs.slice(0, 3), ...theirs.slice(100, 150)], 'from a page seen at an offset too');

    const random = new Random(0x5e6 + (abi === 'x86_32' ? 1 : 0));
    for (const count of [BLKIF_SEGS_PER_INDIRECT_FRAME, 37, 1]) {
      const segments = random.segments(count);
      page.fill(0xff);
      encodeSegments(segments, page);
      t.ok(page.subarray(count * BLKIF_SEGMENT_BYTES).every((b) => b === 0xff), `encodeSegments leaves the page after ${count} entries alone`);
      writeFileSync(path, page);
      const read = await run(binary, ['segments-read', path, String(count)]);
      t.equal(read.code, 0);
      t.strictSame(JSON.parse(read.stdout.split('\n')[0]!), segments, `C reads the ${count} segments we wrote`);
      for (let i = 0; i < count; i++) {
        const pad = page.subarray(i * BLKIF_SEGMENT_BYTES + 6, (i + 1) * BLKIF_SEGMENT_BYTES);
        if (pad.some((b) => b !== 0)) {
          t.fail(`segment ${i}: padding not zeroed`);
          break;
        }
      }
    }
  });
}

t.test('abiForProtocol', async (t) => {
  t.equal(NATIVE_ABI, 'x86_64');
  t.equal(XEN_IO_PROTO_ABI_X86_32, 'x86_32-abi');
  t.equal(XEN_IO_PROTO_ABI_X86_64, 'x86_64-abi');
  t.equal(abiForProtocol(undefined), NATIVE_ABI, 'no protocol key: the native ABI');
  t.equal(abiForProtocol(''), NATIVE_ABI, 'an empty one too, as backends reading it with %63s find');
  t.equal(abiForProtocol('x86_64-abi'), 'x86_64');
  t.equal(abiForProtocol('x86_32-abi'), 'x86_32');
  for (const bad of ['arm-abi', 'x86_64', 'X86_64-ABI', 'x86_32-abi ', ' x86_64-abi', 'x86_64-abi\0', 'x86_16-abi']) {
    t.equal(abiForProtocol(bad), undefined, `${JSON.stringify(bad)} is not spoken`);
  }
});

t.test('constants', async (t) => {
  t.equal(BLKIF_SEGS_PER_INDIRECT_FRAME, 512);
  t.equal(SECTOR_SIZE, 1 << SECTOR_SHIFT);
  t.equal(SECTORS_PER_PAGE, 8);
  t.equal(indirectPagesFor(0), 0);
  t.equal(indirectPagesFor(1), 1);
  t.equal(indirectPagesFor(512), 1);
  t.equal(indirectPagesFor(513), 2);
  t.equal(indirectPagesFor(4096), BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
});

for (const abi of ABIS) {
  t.test(`${abi}: decodeRequest never throws on random bytes`, async (t) => {
    const { requestBytes, responseBytes, entryBytes } = layoutOf(abi);
    const random = new Random(0xdec0de + (abi === 'x86_32' ? 1 : 0));
    // Entries at every alignment, in shared memory as the ring pages are.
    const memory = new Uint8Array(new SharedArrayBuffer(64 * 1024));
    const scratch = new Uint8Array(entryBytes);
    const entries = 4000;
    let thrown = 0;
    let wrong = 0;
    let viewWrong = 0;
    const view = new BlkifRequestView(abi);
    const responseView = new BlkifResponseView(abi);
    const kinds = { rw: 0, discard: 0, indirect: 0 };
    for (let i = 0; i < entries; i++) {
      const at = random.below(memory.length - entryBytes);
      const slot = random.fill(memory.subarray(at, at + entryBytes));
      if (i % 3 === 0) slot[0] = random.below(8);
      try {
        const request = decodeRequest(abi, slot);
        const response = decodeResponse(abi, slot);
        kinds[request.kind]++;
        const op = slot[0]!;
        const kindOk = request.kind === (op === BlkifOp.DISCARD ? 'discard' : op === BlkifOp.INDIRECT ? 'indirect' : 'rw');
        const shapeOk =
          request.kind === 'rw'
            ? request.nrSegments === slot[1] && request.segments.length === Math.min(slot[1]!, BLKIF_MAX_SEGMENTS_PER_REQUEST)
            : request.kind === 'indirect'
              ? request.indirectGrefs.length === BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST && request.nrSegments <= 0xffff
              : request.flag === slot[1];
        // Only the bytes of the struct matter, wherever they sit.
        scratch.fill(0).set(slot.subarray(0, requestBytes));
        const again = decodeRequest(abi, scratch);
        encodeRequest(abi, request, scratch);
        const roundTrip = decodeRequest(abi, scratch);
        const inPlace = viewDisagrees(view.read(memory, at), request);
        const answer = responseView.read(memory, at);
        const responseOk =
          answer.status === response.status && answer.operation === response.operation && ((BigInt(answer.idHigh) << 32n) | BigInt(answer.idLow)) === response.id;
        if (inPlace !== undefined && viewWrong++ === 0) t.fail(`entry ${hex(slot)}: BlkifRequestView ${inPlace}`);
        if (!responseOk && viewWrong++ === 0) t.fail(`entry ${hex(slot)}: BlkifResponseView read ${JSON.stringify(answer)}`);
        if (
          !kindOk ||
          !shapeOk ||
          request.operation !== op ||
          response.status < -0x8000 ||
          response.status > 0x7fff ||
          JSON.stringify(again, big) !== JSON.stringify(request, big) ||
          JSON.stringify(roundTrip, big) !== JSON.stringify(request, big)
        ) {
          if (wrong++ === 0) t.fail(`entry ${hex(slot)}: decoded as ${JSON.stringify(request, big)}`);
        }
      } catch (err) {
        if (thrown++ === 0) t.fail(`entry ${hex(slot)} threw ${String(err)}`);
      }
    }
    t.equal(thrown, 0, `none of ${entries} random entries throws`);
    t.equal(wrong, 0, 'each reads as its operation byte says, and encodes back to the same');
    t.equal(viewWrong, 0, 'the views, reading in place, agree with decodeRequest and decodeResponse');
    t.ok(kinds.rw > 0 && kinds.discard > 0 && kinds.indirect > 0, `every kind met: ${JSON.stringify(kinds)}`);
    t.throws(() => decodeRequest(abi, new Uint8Array(requestBytes - 1)), RangeError, 'a buffer shorter than a request is a caller error');
    t.throws(() => decodeResponse(abi, new Uint8Array(responseBytes - 1)), RangeError);
  });

  t.test(`${abi}: encoding`, async (t) => {
    const { entryBytes } = layoutOf(abi);
    const entry = new Uint8Array(entryBytes).fill(0xee);
    const discard: BlkifRequest = { kind: 'discard', operation: BlkifOp.DISCARD, flag: BLKIF_DISCARD_SECURE, handle: 1, id: 2n, sectorNumber: 3n, nrSectors: 4n };
    encodeRequest(abi, discard, entry);
    t.ok(entry.subarray(BLKIF_STRUCT_OFFSETS[abi].discard.bytes).every((b) => b === 0), 'the rest of the entry is zeroed');
    t.strictSame(decodeRequest(abi, entry), discard);
    encodeResponse(abi, { id: 0xffffffffffffffffn, operation: 255, status: BlkifStatus.ERROR }, entry.fill(0xee));
    t.strictSame(decodeResponse(abi, entry), { id: 0xffffffffffffffffn, operation: 255, status: -1 });
    t.ok(entry.subarray(BLKIF_STRUCT_OFFSETS[abi].response.status + 2).every((b) => b === 0), 'so is the rest after a response');
    t.equal(entry[BLKIF_STRUCT_OFFSETS[abi].response.operation + 1], 0, 'and the padding byte before status');
    const segments = Array.from({ length: BLKIF_MAX_SEGMENTS_PER_REQUEST + 1 }, () => ({ gref: 1, firstSect: 0, lastSect: 7 }));
    t.throws(
      () => encodeRequest(abi, { kind: 'rw', operation: BlkifOp.READ, nrSegments: 12, handle: 0, id: 0n, sectorNumber: 0n, segments }, entry),
      RangeError,
      'more segments than a request holds',
    );
    t.throws(
      () =>
        encodeRequest(
          abi,
          { kind: 'indirect', operation: BlkifOp.INDIRECT, indirectOp: 0, nrSegments: 1, handle: 0, id: 0n, sectorNumber: 0n, indirectGrefs: new Array(9).fill(1) },
          entry,
        ),
      RangeError,
      'more indirect pages than a request holds',
    );
    t.throws(() => decodeSegments(new Uint8Array(PAGE_SIZE), BLKIF_SEGS_PER_INDIRECT_FRAME + 1), RangeError, 'more segments than a page holds');
    t.throws(() => encodeSegments(segments, new Uint8Array(BLKIF_SEGMENT_BYTES * 11)), RangeError);
  });
}

/** JSON.stringify replacer for bigints. */
function big(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? `${value}n` : value;
}

const TWO_POW_53 = 2n ** 53n;

/** How a view's fields differ from what decodeRequest made of the same bytes; undefined if they agree. */
function viewDisagrees(view: BlkifRequestView, request: BlkifRequest): string | undefined {
  const sectorOk = (n: number, b: bigint) => (b < TWO_POW_53 ? BigInt(n) === b : n >= 2 ** 53);
  if (view.kind !== request.kind) return `kind ${view.kind}, not ${request.kind}`;
  if (view.operation !== request.operation || view.handle !== request.handle) return 'operation or handle';
  if (view.id !== request.id) return `id ${view.id}, not ${request.id}`;
  if (!sectorOk(view.sector, request.sectorNumber)) return `sector ${view.sector}, not ${request.sectorNumber}`;
  switch (request.kind) {
    case 'rw': {
      if (view.nrSegments !== request.nrSegments || view.segmentCount !== request.segments.length) return `${view.segmentCount} of ${view.nrSegments} segments`;
      const bad = request.segments.findIndex((g, i) => view.grefs[i] !== g.gref || view.firstSects[i] !== g.firstSect || view.lastSects[i] !== g.lastSect);
      return bad < 0 ? undefined : `segment ${bad}`;
    }
    case 'discard':
      if (view.flag !== request.flag) return `flag ${view.flag}`;
      return sectorOk(view.nrSectors, request.nrSectors) ? undefined : `nr_sectors ${view.nrSectors}, not ${request.nrSectors}`;
    case 'indirect':
      if (view.indirectOp !== request.indirectOp || view.nrSegments !== request.nrSegments || view.segmentCount !== 0) return 'indirect_op or nr_segments';
      return [...view.indirectGrefs].join() === request.indirectGrefs.join() ? undefined : 'indirect_grefs';
  }
}

/** The request with its 64-bit fields cut to 53 bits, as the number-based writer takes them. */
function exactRequest(request: BlkifRequest, random: Random): BlkifRequest {
  const cut = (n: bigint) => n & (TWO_POW_53 - 1n);
  // Now and then the largest exact values, not only random ones.
  const edge = random.below(8) === 0;
  const id = edge ? TWO_POW_53 - 1n : cut(request.id);
  const sectorNumber = edge ? TWO_POW_53 - 1n : cut(request.sectorNumber);
  if (request.kind === 'discard') return { ...request, id, sectorNumber, nrSectors: edge ? TWO_POW_53 - 1n : cut(request.nrSectors) };
  return { ...request, id, sectorNumber };
}

/** Writes a request (64-bit fields below 2^53) with the number-based writer. */
function writeWithWriter(writer: BlkifRequestWriter, request: BlkifRequest, into: Uint8Array, at: number): void {
  const id = Number(request.id);
  const sector = Number(request.sectorNumber);
  switch (request.kind) {
    case 'rw':
      writer.rw(into, at, request.operation, request.nrSegments, request.handle, id, sector);
      request.segments.forEach((g, i) => writer.segment(into, at, i, g.gref, g.firstSect, g.lastSect));
      return;
    case 'discard':
      writer.discard(into, at, request.flag, request.handle, id, sector, Number(request.nrSectors));
      return;
    case 'indirect':
      writer.indirect(into, at, request.indirectOp, request.nrSegments, request.handle, id, sector);
      request.indirectGrefs.forEach((gref, i) => writer.indirectPage(into, at, i, gref));
      return;
  }
}

for (const abi of ABIS) {
  t.test(`${abi}: the number-based codec with hostile values`, async (t) => {
    const { entryBytes } = layoutOf(abi);
    const writer = new BlkifRequestWriter(abi);
    const view = new BlkifRequestView(abi, 256);
    const entry = new Uint8Array(entryBytes);
    const objects = new Uint8Array(entryBytes);

    // Sector numbers and ids a number cannot hold exactly are refused, not rounded.
    for (const bad of [2 ** 53, 2 ** 64, -1, 1.5, NaN, Infinity]) {
      t.throws(() => writer.rw(entry, 0, BlkifOp.READ, 1, 0, 1, bad), RangeError, `sector_number ${bad} is refused`);
      t.throws(() => writer.indirect(entry, 0, BlkifOp.READ, 1, 0, 1, bad), RangeError, `an indirect sector_number ${bad} too`);
      t.throws(() => writer.discard(entry, 0, 0, 0, 1, 0, bad), RangeError, `nr_sectors ${bad} too`);
      t.throws(() => writer.rw(entry, 0, BlkifOp.READ, 1, 0, bad, 0), RangeError, `id ${bad} too`);
    }
    writer.rw(entry, 0, BlkifOp.WRITE, 1, 0xbeef, BLKIF_MAX_EXACT_SECTOR, BLKIF_MAX_EXACT_SECTOR);
    t.equal(view.read(entry).sector, BLKIF_MAX_EXACT_SECTOR, '2^53 - 1 goes and comes back exactly');
    t.equal(view.id, 2n ** 53n - 1n);
    t.equal(view.handle, 0xbeef);

    // Read: whatever the frontend wrote, 2^53 and above included.
    for (const sector of [2n ** 53n, 2n ** 53n + 1n, 2n ** 64n - 1n]) {
      encodeRequest(abi, { kind: 'rw', operation: BlkifOp.READ, nrSegments: 1, handle: 0, id: 2n ** 64n - 1n, sectorNumber: sector, segments: [{ gref: 9, firstSect: 0, lastSect: 7 }] }, entry);
      view.read(entry);
      t.ok(view.sector >= 2 ** 53, `sector ${sector} reads as at least 2^53 (${view.sector}): past the end of any disk`);
      t.same([view.idLow, view.idHigh], [0xffffffff, 0xffffffff], 'the id keeps all 64 bits as two words');
      encodeRequest(abi, { kind: 'discard', operation: BlkifOp.DISCARD, flag: 0xff, handle: 0, id: 1n, sectorNumber: 0n, nrSectors: sector }, entry);
      t.ok(view.read(entry).nrSectors >= 2 ** 53, `a discard of ${sector} sectors reads as at least 2^53`);
      t.equal(view.flag, 0xff, 'and its flag as written');
    }

    // nr_segments 0 and 255 on a direct request: the raw count, and only the 11 that exist read.
    for (const nrSegments of [0, 255]) {
      const segments = Array.from({ length: Math.min(nrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST) }, (_, i) => ({ gref: 100 + i, firstSect: i % 8, lastSect: 7 }));
      encodeRequest(abi, { kind: 'rw', operation: BlkifOp.WRITE, nrSegments, handle: 0, id: 5n, sectorNumber: 8n, segments }, objects);
      writer.rw(entry, 0, BlkifOp.WRITE, nrSegments, 0, 5, 8);
      segments.forEach((g, i) => writer.segment(entry, 0, i, g.gref, g.firstSect, g.lastSect));
      t.equal(hex(entry), hex(objects), `nr_segments ${nrSegments}: the writer's bytes are encodeRequest's`);
      view.read(entry);
      t.same([view.nrSegments, view.segmentCount, view.grefs[segments.length - 1] ?? 0], [nrSegments, segments.length, segments.at(-1)?.gref ?? 0], `nr_segments ${nrSegments} read raw, ${segments.length} segments read`);
    }
    t.throws(() => writer.segment(entry, 0, BLKIF_MAX_SEGMENTS_PER_REQUEST, 1, 0, 7), RangeError, 'a 12th direct segment does not fit');
    t.throws(() => writer.indirectPage(entry, 0, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, 1), RangeError, 'nor a 9th indirect page');

    // Indirect: nr_segments 0, past 256 and 65535 are read as written; the view takes no more than it holds.
    for (const nrSegments of [0, 256, 257, 0xffff]) {
      writer.indirect(entry, 0, BlkifOp.READ, nrSegments, 3, 7, 64);
      writer.indirectPage(entry, 0, 0, 0xabcd);
      const request = decodeRequest(abi, entry);
      t.same(
        request.kind === 'indirect' && [request.nrSegments, request.indirectOp, request.indirectGrefs[0]],
        [nrSegments, BlkifOp.READ, 0xabcd],
        `indirect nr_segments ${nrSegments}: decodeRequest reads the writer's request`,
      );
      t.equal(viewDisagrees(view.read(entry), request), undefined, 'and so does the view');
    }
    const page = new Uint8Array(PAGE_SIZE);
    for (let i = 0; i < BLKIF_SEGS_PER_INDIRECT_FRAME; i++) writeIndirectSegment(page, i, 1000 + i, 0, 7);
    t.strictSame(decodeSegments(page, BLKIF_SEGS_PER_INDIRECT_FRAME).slice(0, 2), [{ gref: 1000, firstSect: 0, lastSect: 7 }, { gref: 1001, firstSect: 0, lastSect: 7 }], 'writeIndirectSegment writes what decodeSegments reads');
    view.read(entry);
    view.readIndirectSegments(page, 0);
    t.equal(view.segmentCount, 0, 'no segments: none read');
    view.readIndirectSegments(page, 200);
    view.readIndirectSegments(page.subarray(200 * BLKIF_SEGMENT_BYTES), 56);
    t.same([view.segmentCount, view.grefs[0], view.grefs[255]], [256, 1000, 1255], 'segments of several pages gather in order, up to the 256 the view holds');
    t.throws(() => view.readIndirectSegments(page, 1), RangeError, 'a 257th is refused');
    t.throws(() => view.read(entry).readIndirectSegments(page, BLKIF_SEGS_PER_INDIRECT_FRAME + 1), RangeError, 'more than a page holds is refused');
    t.throws(() => writeIndirectSegment(page, BLKIF_SEGS_PER_INDIRECT_FRAME, 1, 0, 7), RangeError, 'and written past the page');
    t.throws(() => new BlkifRequestView(abi, 10), RangeError, 'a view too small for a direct request cannot be made');

    // Responses: the id echoed as two words, statuses at the ends of int16, the rest zeroed.
    const responses = new BlkifResponseView(abi);
    for (const [idLow, idHigh, status] of [[0, 0, BlkifStatus.OKAY], [0xffffffff, 0xffffffff, -0x8000], [7, 1, 0x7fff], [3, 0, BlkifStatus.EOPNOTSUPP]] as const) {
      entry.fill(0xee);
      writeResponse(abi, entry, 0, idLow, idHigh, 255, status);
      encodeResponse(abi, { id: (BigInt(idHigh) << 32n) | BigInt(idLow), operation: 255, status }, objects.fill(0x11));
      t.equal(hex(entry), hex(objects), `writeResponse writes encodeResponse's bytes (status ${status})`);
      responses.read(entry);
      t.same([responses.idLow, responses.idHigh, responses.operation, responses.status], [idLow, idHigh, 255, status], 'and BlkifResponseView reads them back');
    }
    t.throws(() => responses.read(entry, entryBytes - 2), RangeError, 'a response past the end of the buffer is a caller error');
    t.throws(() => writer.rw(entry, 1, BlkifOp.READ, 0, 0, 0, 0), RangeError, 'so is a request that does not fit');
  });
}
