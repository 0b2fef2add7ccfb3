/**
 * Notification suppression of shared/ring.ts at every ring index: a front
 * and a back ring run a random schedule of batches, each end going to
 * sleep only after its final check (RING_FINAL_CHECK_FOR_*) found nothing,
 * and waking only when the other end's push said to notify
 * (RING_PUSH_*_AND_CHECK_NOTIFY). Rings of the sizes blkif's 1, 2, 4 and
 * 16 pages give start at every index from just below 2^32 to the wrap, so
 * that every slot and the wrap-around of the free-running indexes are met
 * at every step of the protocol.
 *
 * What must hold: no lost wake-up (whenever both ends sleep with nothing
 * pending, every request is answered and nothing waits on either side),
 * and no needless one (a push notifies only when the other end asked to
 * be woken within what it published, ring.h's event window).
 */
import t from 'tap';
import { BackRing, FrontRing, SharedRing, ringSize } from '../shared/ring.js';
import { PAGE_SIZE } from '../shared/platform.js';
import { Prng } from './fuzz/prng.js';

/** Entries as big as blkif's (x86_64): rings of 32, 64, 128 and 512 slots over 1, 2, 4 and 16 pages. */
const ENTRY_BYTES = 112;
const RING_PAGES = [1, 2, 4, 16];
/** Schedules tried from each start index. */
const SCHEDULES = 2;
const u32 = (n: number) => n >>> 0;

/**
 * A view of the shared ring that lets the other end act just before an
 * event index is stored: the moment between a final check's first look and
 * its request to be woken, where a push that reads the old event index does
 * not notify and only the second look finds its entries.
 */
class InterleavedRing extends SharedRing {
  beforeEventStore: (() => void) | undefined;

  override set reqEvent(value: number) {
    this.beforeEventStore?.();
    super.reqEvent = value;
  }
  override get reqEvent(): number {
    return super.reqEvent;
  }
  override set rspEvent(value: number) {
    this.beforeEventStore?.();
    super.rspEvent = value;
  }
  override get rspEvent(): number {
    return super.rspEvent;
  }
}

function ring(pages: number, start: number): { front: FrontRing; back: BackRing; frontView: InterleavedRing; backView: InterleavedRing } {
  const memory = Array.from({ length: pages }, () => new Uint8Array(new SharedArrayBuffer(PAGE_SIZE)));
  const frontView = new InterleavedRing(memory, ENTRY_BYTES);
  const front = FrontRing.create(frontView, start);
  const backView = new InterleavedRing(memory, ENTRY_BYTES);
  return { front, back: BackRing.attach(backView), frontView, backView };
}

/** Whether `event` lies in (old, now], the window in which ring.h's push notifies. */
const inWindow = (event: number, old: number, now: number) => u32(now - event) < u32(now - old);

/** One schedule from `start`: returns what went wrong, if anything. */
function run(pages: number, start: number, prng: Prng, requests: number): string | undefined {
  const { front, back, frontView, backView } = ring(pages, start);
  const entry = new Uint8Array(ENTRY_BYTES);
  let frontAwake = false;
  let backAwake = false;
  let frontEvent = false;
  let backEvent = false;
  let issued = 0;
  let answered = 0;
  /** Requests the backend took and has not answered. */
  let taken = 0;
  /** What went wrong in a push made in the middle of the other end's final check. */
  let interleaved: string | undefined;
  for (let step = 0; step < requests * 20; step++) {
    const choices: [number, () => string | undefined][] = [];
    if (issued < requests && front.freeRequests > 0) choices.push([4, issue]);
    if (backAwake || backEvent) choices.push([4, serve]);
    if (frontAwake || frontEvent) choices.push([4, collect]);
    if (choices.length === 0) break;
    const problem = prng.weighted(choices)() ?? interleaved;
    if (problem) return `step ${step}: ${problem}`;
  }
  if (answered !== requests) {
    return `stopped with ${requests - answered} of ${requests} unanswered (issued ${issued}, backend holds ${taken}); ` +
      `req_prod ${front.sring.reqProd} req_event ${front.sring.reqEvent} rsp_prod ${front.sring.rspProd} rsp_event ${front.sring.rspEvent}, ` +
      `rsp_cons ${front.rspCons} req_cons ${back.reqCons}`;
  }
  return undefined;

  function issue(): string | undefined {
    const k = prng.int(1, Math.min(front.freeRequests, requests - issued, 8));
    for (let i = 0; i < k; i++) {
      entry.fill((issued + i) & 0xff);
      front.putRequest(entry);
    }
    issued += k;
    const old = front.sring.reqProd;
    const event = front.sring.reqEvent;
    const notify = front.pushRequestsAndCheckNotify();
    if (notify !== inWindow(event, old, front.reqProdPvt)) return `push of requests to ${front.reqProdPvt}: notify ${notify} with req_event ${event}`;
    if (!backAwake && !backEvent && !notify) return `the backend sleeps and the push of requests ${old}..${front.reqProdPvt} (req_event ${event}) did not notify`;
    if (notify) backEvent = true;
    return undefined;
  }
  function serve(): string | undefined {
    backEvent = false;
    backAwake = true;
    // Take some, answer some of those taken, push, and perhaps sleep.
    const waiting = back.unconsumedRequests();
    if (waiting < 0) return 'the backend saw an overflowed request producer';
    const take = prng.int(0, waiting);
    for (let i = 0; i < take; i++) back.takeRequest(entry);
    taken += take;
    return answer(prng.int(0, taken)) ?? sleepBack();
  }
  function answer(count: number): string | undefined {
    for (let i = 0; i < count; i++) back.putResponse(entry);
    taken -= count;
    if (count > 0) {
      const old = back.sring.rspProd;
      const event = back.sring.rspEvent;
      const notify = back.pushResponsesAndCheckNotify();
      if (notify !== inWindow(event, old, back.rspProdPvt)) return `push of responses to ${back.rspProdPvt}: notify ${notify} with rsp_event ${event}`;
      if (!frontAwake && !frontEvent && !notify) return `the frontend sleeps and the push of responses ${old}..${back.rspProdPvt} (rsp_event ${event}) did not notify`;
      if (notify) frontEvent = true;
    }
    return undefined;
  }
  function sleepBack(): string | undefined {
    // A backend with requests in hand stays awake to answer them (as one waiting for I/O would be woken by it).
    if (taken === 0 && prng.chance(0.7) && final(backView, () => back.finalCheckForRequests() === 0, issue)) backAwake = false;
    return undefined;
  }
  function collect(): string | undefined {
    frontEvent = false;
    frontAwake = true;
    const waiting = front.unconsumedResponses();
    if (waiting < 0) return 'the frontend saw an overflowed response producer';
    const take = prng.int(0, waiting);
    for (let i = 0; i < take; i++) front.takeResponse(entry);
    answered += take;
    if (take === waiting && prng.chance(0.7) && final(frontView, () => !front.finalCheckForResponses(), () => (taken > 0 ? answer(prng.int(1, taken)) : undefined))) frontAwake = false;
    return undefined;
  }
  /** A final check during which, half the time, the other end pushes just before the event index is stored. */
  function final(view: InterleavedRing, check: () => boolean, other: () => string | undefined): boolean {
    if (prng.chance(0.5)) {
      view.beforeEventStore = () => {
        view.beforeEventStore = undefined;
        if (other !== issue || (issued < requests && front.freeRequests > 0)) interleaved ??= other();
      };
    }
    try {
      return check();
    } finally {
      view.beforeEventStore = undefined;
    }
  }
}

for (const pages of RING_PAGES) {
  t.test(`rings of ${pages} page(s): every start index up to the wrap`, async (t) => {
    const size = ringSize(pages, ENTRY_BYTES);
    const prng = new Prng(0x5eed0000 + pages);
    const problems: string[] = [];
    // Each start in the last `size` values below 2^32, then through it: every slot, and the wrap, from every phase.
    for (let offset = size; offset > -2; offset--) {
      const start = u32(2 ** 32 - offset);
      for (let s = 0; s < SCHEDULES; s++) {
        const problem = run(pages, start, prng, size + 3);
        if (problem && problems.length < 5) problems.push(`start ${start}: ${problem}`);
      }
    }
    t.same(problems, [], `${size} slots: no lost and no needless notification from ${size + 2} starts`);
  });
}
