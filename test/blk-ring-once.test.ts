/**
 * blkback answers each request it takes off the ring once, even if what
 * it handed the request to completes it twice: a second response would
 * answer an id the frontend may already have reused (Linux's blkfront
 * stops the disk when such a response comes). The request queue is
 * replaced here by one that completes every request twice; the frontend
 * must see one response, and the backend must say what happened.
 */
import t from 'tap';
import { BlkifOp, BlkifStatus, decodeResponse, encodeRequest, layoutOf, type BlkifRequest, type BlkifResponse } from '../shared/blkif.js';
import { FrontRing, SharedRing } from '../shared/ring.js';
import type { GrantTable } from '../shared/platform.js';
import type { Logger } from '../shared/log.js';
import { BlkbackRing, type RingHost } from '../blkback/ring.js';
import { RING_COUNTERS_BYTES, RingCounterWriter } from '../blkback/ring-counters.js';
import type { BlockIo, RequestQueue } from '../blkback/queue.js';

const ABI = 'x86_64';
const PAGE_SIZE = 4096;

t.test('a request completed twice is answered once', async (t) => {
  const page = new Uint8Array(new SharedArrayBuffer(PAGE_SIZE));
  const entryBytes = layoutOf(ABI).entryBytes;
  const front = FrontRing.create(new SharedRing([page], entryBytes));
  const errors: string[] = [];
  const log: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: (message) => errors.push(message) };
  let service: () => void = () => {};
  const host: RingHost = {
    name: 'vbd 1/51712',
    log,
    grants: {} as GrantTable,
    frontend: 1,
    bind: (_remotePort, handler) => {
      service = handler;
      return 1;
    },
    unbind: () => {},
    notify: () => {},
  };
  const submitted: BlockIo[] = [];
  const twice = {
    submit(io: BlockIo, done: (status: number) => void) {
      submitted.push(io);
      done(BlkifStatus.OKAY);
      done(BlkifStatus.ERROR);
    },
  } as unknown as RequestQueue;
  const ring = new BlkbackRing(
    host,
    { pages: [page], writable: true, unmap: () => {} },
    1,
    twice,
    { abi: ABI, store: { description: 'test', sectors: 2048, readOnly: false, discard: undefined }, maxIndirectSegments: 0, flush: true, barrier: false },
    (why) => t.fail(`the ring was declared broken: ${why}`),
    new RingCounterWriter(new SharedArrayBuffer(RING_COUNTERS_BYTES)),
  );

  const entry = new Uint8Array(entryBytes);
  const requests: BlkifRequest[] = [
    { kind: 'rw', operation: BlkifOp.READ, nrSegments: 1, handle: 0, id: 7n, sectorNumber: 0n, segments: [{ gref: 8, firstSect: 0, lastSect: 7 }] },
    // Refused at once (past the end of the disk): never reaches the queue.
    { kind: 'rw', operation: BlkifOp.WRITE, nrSegments: 1, handle: 0, id: 8n, sectorNumber: 4096n, segments: [{ gref: 8, firstSect: 0, lastSect: 7 }] },
    { kind: 'rw', operation: BlkifOp.FLUSH_DISKCACHE, nrSegments: 0, handle: 0, id: 9n, sectorNumber: 0n, segments: [] },
  ];
  for (const request of requests) {
    encodeRequest(ABI, request, entry);
    front.putRequest(entry);
  }
  front.pushRequestsAndCheckNotify();
  service();
  // Responses are pushed in a microtask after they are written.
  await new Promise((resolve) => setImmediate(resolve));

  const responses: BlkifResponse[] = [];
  while (front.unconsumedResponses() > 0) {
    front.takeResponse(entry);
    responses.push(decodeResponse(ABI, entry));
  }
  t.equal(submitted.length, 2, 'the read and the flush went to the queue');
  t.same(
    responses.map((r) => [r.id, r.operation, r.status]),
    [
      [7n, BlkifOp.READ, BlkifStatus.OKAY],
      [8n, BlkifOp.WRITE, BlkifStatus.ERROR],
      [9n, BlkifOp.FLUSH_DISKCACHE, BlkifStatus.OKAY],
    ],
    'one response per request, with the first completion\'s status',
  );
  t.equal(errors.length, 2, 'each second completion is reported');
  t.match(errors[0], /request 7 \(operation 0\) completed a second time \(status -1\): not answered again/);
  await ring.stop();
});
