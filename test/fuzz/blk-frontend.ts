/**
 * The hostile frontend's side of a batch: it puts planned requests (and
 * slots it never wrote) on its ring, notifies as ring.h asks or not at all
 * or in storms, and checks every response against the model: one response
 * per request, with its id and the operation blkif.h says it names, and
 * the status the model expects.
 */
import { BlkifOp, BlkifStatus, decodeRequest, encodeRequest, type BlkifAbi, type BlkifRequest, type BlkifSegment } from '../../shared/blkif.js';
import { knownIndirectSegments, verdict, type DiskPolicy } from './blk-model.js';
import type { HostilePages } from './blk-pages.js';
import type { HostileRing, TakenResponse } from './blk-ring.js';
import type { PlannedRequest } from './blk-requests.js';
import type { Trail } from './violation.js';

/** A request on the ring whose response has not come yet. */
interface Awaited {
  readonly id: bigint;
  readonly operation: number;
  /** The status the response must have; undefined for any of blkif.h's. */
  readonly status: number | undefined;
  readonly why: string;
  readonly what: string;
  /** Indirect pages it names that the fuzzer may rewrite: not until this is answered. */
  readonly indirectGrefs: readonly number[];
}

const STATUS_NAMES = new Map<number, string>([
  [BlkifStatus.OKAY, 'OKAY'],
  [BlkifStatus.ERROR, 'ERROR'],
  [BlkifStatus.EOPNOTSUPP, 'EOPNOTSUPP'],
]);

/** Responses a report lists before the one it is about. */
const RECENT_RESPONSES = 12;

const statusName = (status: number | undefined) => (status === undefined ? 'any status' : (STATUS_NAMES.get(status) ?? `status ${status}`));

export type Notification = 'needed' | 'always' | 'storm' | 'later';

export class HostileFrontend {
  private readonly awaited: Awaited[] = [];
  /** Requests published (stale slots included). */
  sent = 0;
  /** Requests (or stale slots) left out for having the backend read into the ring's own pages. */
  leftOut = 0;
  answered = 0;
  /** Published without a notification yet: waiting for their responses must notify first. */
  private unnotified = false;
  readonly statuses = new Map<string, number>();
  /** The last responses taken, with the index each was read at, for a report. */
  private readonly recentResponses: string[] = [];

  constructor(
    private readonly ring: HostileRing,
    private readonly pages: HostilePages,
    private readonly disk: DiskPolicy,
    private readonly abi: BlkifAbi,
    private readonly trail: Trail,
    private readonly responseTimeoutMs: number,
  ) {}

  get owed(): number {
    return this.awaited.length;
  }

  get freeSlots(): number {
    return this.ring.front.freeRequests;
  }

  /** Whether an outstanding request names this indirect page (its contents must not change under it). */
  inUse(gref: number): boolean {
    return this.awaited.some((a) => a.indirectGrefs.includes(gref));
  }

  /** Puts requests on the ring and publishes them, notifying as told. */
  send(planned: readonly PlannedRequest[], notification: Notification, stormSize: number): void {
    const entry = new Uint8Array(this.ring.entryBytes);
    const left = new Set<PlannedRequest>();
    for (const p of planned) {
      if (p.indirect) this.pages.writeIndirect(p.indirect.page, p.indirect.bytes);
      if (p.raw) entry.set(p.raw.subarray(0, entry.length));
      else encodeRequest(this.abi, p.request, entry);
      // The model judges what the backend will read, not what was meant: the slot decoded.
      const request = decodeRequest(this.abi, entry);
      if (this.fillsRing(request)) {
        left.add(p);
        this.leftOut++;
        continue;
      }
      this.ring.put(entry);
      this.expect(request, p.what);
    }
    const needed = this.ring.publish();
    const sent = planned.filter((p) => !left.has(p));
    this.trail.add(
      `${sent.length} requests (${sent.map((p) => p.what).join(', ')}), notify ${notification}${needed ? ' (needed)' : ''}` +
        (left.size > 0 ? `; left out for reading into the ring's own pages: ${[...left].map((p) => p.what).join(', ')}` : ''),
    );
    this.notify(notification, needed, stormSize);
  }

  /** Publishes `count` slots it never wrote; the backend must answer whatever they hold. */
  sendStale(count: number, notification: Notification, stormSize: number): void {
    const stale = this.ring.staleSlots(count).map((slot) => decodeRequest(this.abi, slot));
    // Up to the first that would have the backend read into the ring itself.
    const harmful = stale.findIndex((request) => this.fillsRing(request));
    const slots = harmful < 0 ? stale : stale.slice(0, harmful);
    this.leftOut += stale.length - slots.length;
    this.ring.publishStale(slots.length);
    for (const request of slots) this.expect(request, 'a stale slot');
    this.trail.add(`published ${slots.length} slots it never wrote (${slots.map((r) => `id ${r.id} ${describe(r)}`).join('; ')}), notify ${notification}`);
    this.notify(notification, true, stormSize);
  }

  /** Notifies with nothing new on the ring. */
  storm(times: number): void {
    this.trail.add(`${times} notifications with nothing new`);
    this.ring.notify(times);
  }

  /** Takes the responses that are there and checks them. */
  collect(): void {
    const responses = this.ring.takeResponses();
    if (!responses) throw this.trail.violation('the backend moved its response producer more than a ring ahead');
    for (const taken of responses) {
      this.match(taken);
      this.recentResponses.push(`${taken.index}: id ${taken.response.id} op ${taken.response.operation} status ${taken.response.status}`);
      if (this.recentResponses.length > RECENT_RESPONSES) this.recentResponses.shift();
    }
  }

  /** Waits until every request has its response, then checks what the backend wrote in the pages. */
  async settle(): Promise<void> {
    if (this.unnotified) this.notify('always', true, 0);
    const deadline = Date.now() + this.responseTimeoutMs;
    for (;;) {
      this.collect();
      if (this.awaited.length === 0) {
        try {
          this.pages.checkpoint();
        } catch (err) {
          throw this.trail.violation((err as Error).message);
        }
        return;
      }
      if (Date.now() > deadline) {
        const oldest = this.awaited[0]!;
        throw this.trail.violation(`no response within ${this.responseTimeoutMs} ms to ${this.awaited.length} requests, the oldest ${oldest.what} (id ${oldest.id})`);
      }
      await this.ring.waitForResponses(Math.max(1, deadline - Date.now()));
    }
  }

  private notify(notification: Notification, needed: boolean, stormSize: number): void {
    switch (notification) {
      case 'needed':
        if (needed || this.unnotified) this.ring.notify();
        this.unnotified = false;
        break;
      case 'always':
        this.ring.notify();
        this.unnotified = false;
        break;
      case 'storm':
        this.ring.notify(stormSize);
        this.unnotified = false;
        break;
      case 'later':
        this.unnotified = true;
        break;
    }
  }

  /**
   * Whether the request asks the backend to READ into the ring's own pages:
   * they are granted to it writable, as data pages are, so it would, and
   * what it then found on its ring would be the frontend's own undoing,
   * nothing the model can judge. Such requests are left out. An indirect
   * request's segments are looked at where their page's contents are known.
   */
  private fillsRing(request: BlkifRequest): boolean {
    const intoRing = (segments: readonly BlkifSegment[]) => segments.some((s) => this.pages.classOf(s.gref) === 'ring');
    if (request.kind === 'rw') return request.operation === BlkifOp.READ && intoRing(request.segments);
    if (request.kind !== 'indirect' || request.indirectOp !== BlkifOp.READ) return false;
    if (request.nrSegments < 1 || request.nrSegments > this.disk.maxIndirectSegments) return false;
    return intoRing(knownIndirectSegments(request, this.pages).segments);
  }

  private expect(request: BlkifRequest, what: string): void {
    const v = verdict(request, this.disk, this.pages);
    if (v.fills === undefined) this.pages.mayFillAnything();
    else for (const [gref, first, last] of v.fills) this.pages.mayFill(gref, first, last);
    const indirectGrefs = request.kind === 'indirect' ? request.indirectGrefs : [];
    this.awaited.push({ id: request.id, operation: v.operation, status: v.status, why: v.why, what: `${what} (${describe(request)})`, indirectGrefs });
    this.sent++;
  }

  /**
   * Matches a response to a request with its id. Several may share an id
   * (a hostile frontend reuses them): the response goes to the most
   * constrained one it fits.
   */
  private match({ response, index, raw }: TakenResponse): void {
    const name = statusName(response.status);
    const where = () =>
      `; read at index ${index} (slot ${index & (this.ring.size - 1)}: ${Buffer.from(raw.subarray(0, 24)).toString('hex')}...); ${this.ring.describeIndexes()}; ` +
      `${this.sent} sent, ${this.answered} answered; awaiting ids ${this.awaited.map((a) => a.id).join(',') || 'none'}; responses before: ${this.recentResponses.join(' | ') || 'none'}`;
    if (!STATUS_NAMES.has(response.status)) throw this.trail.violation(`a response with ${name}, which blkif.h does not define (id ${response.id})${where()}`);
    const sameId = this.awaited.filter((a) => a.id === response.id);
    if (sameId.length === 0) throw this.trail.violation(`a response (id ${response.id}, operation ${response.operation}, ${name}) to no request awaiting one${where()}`);
    const fits = sameId.filter((a) => a.operation === response.operation && (a.status === undefined || a.status === response.status));
    if (fits.length === 0) {
      const a = sameId[0]!;
      throw this.trail.violation(
        `${a.what}: the response says operation ${response.operation}, ${name}; expected operation ${a.operation}, ${statusName(a.status)} (${a.why})`,
      );
    }
    const chosen = fits.find((a) => a.status !== undefined) ?? fits[0]!;
    this.awaited.splice(this.awaited.indexOf(chosen), 1);
    this.answered++;
    this.statuses.set(name, (this.statuses.get(name) ?? 0) + 1);
  }
}

function describe(request: BlkifRequest): string {
  switch (request.kind) {
    case 'discard':
      return `discard sector ${request.sectorNumber} count ${request.nrSectors} flag ${request.flag}`;
    case 'indirect':
      return `indirect op ${request.indirectOp} nr_segments ${request.nrSegments} sector ${request.sectorNumber} pages ${request.indirectGrefs[0]}`;
    case 'rw':
      return `op ${request.operation === BlkifOp.READ ? 'READ' : request.operation} nr_segments ${request.nrSegments} sector ${request.sectorNumber} segments ${request.segments
        .map((s) => `${s.gref}:${s.firstSect}-${s.lastSect}`)
        .join(' ')}`;
  }
}
