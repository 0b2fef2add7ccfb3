/** blkif.h's transport keys: what a frontend writes reads back the same, and every malformed value is refused with its errno. */
import t from 'tap';
import {
  readRing,
  readTransport,
  ringKeyNames,
  ringKeys,
  ringRefKeys,
  ringSizeKeys,
  transportKeyNames,
  transportKeys,
  type OtherendKeys,
} from '../shared/blkif-keys.js';
import { XsError } from '../shared/errors.js';

const DIR = '/local/domain/2/device/vbd/51712';
const LIMITS = { maxRingPageOrder: 4, maxQueues: 4 };

/**
 * A frontend's directory as a backend reads it. Writing `queue-N/key`
 * creates `queue-N` too, as xenstored creates a node's missing parents.
 */
function frontend(keys: Record<string, string | number>): OtherendKeys {
  const nodes = new Map<string, string>();
  for (const [key, value] of Object.entries(keys)) {
    const slash = key.lastIndexOf('/');
    if (slash > 0 && !nodes.has(key.slice(0, slash))) nodes.set(key.slice(0, slash), '');
    nodes.set(key, String(value));
  }
  return { otherendPath: DIR, readOtherend: async (key) => nodes.get(key) };
}

async function refusal(work: Promise<unknown>): Promise<{ errno: string; message: string } | 'accepted'> {
  try {
    await work;
    return 'accepted';
  } catch (err) {
    if (!(err instanceof XsError)) throw err;
    return { errno: err.errno, message: err.message };
  }
}

t.test('writers: one page is ring-ref alone; a multi-page ring is announced in the scheme chosen', async (t) => {
  t.same(ringRefKeys([7]), { 'ring-ref': 7 });
  t.same(ringRefKeys([7, 8], 'queue-1/'), { 'queue-1/ring-ref0': 7, 'queue-1/ring-ref1': 8 });
  t.same(ringSizeKeys(1, 'both'), {}, 'one page announces nothing');
  t.same(ringSizeKeys(4, 'order'), { 'ring-page-order': 2 });
  t.same(ringSizeKeys(4, 'pages'), { 'num-ring-pages': 4 });
  t.same(ringSizeKeys(4, 'both'), { 'ring-page-order': 2, 'num-ring-pages': 4 });
  t.throws(() => ringSizeKeys(3, 'order'), RangeError, 'a ring is a power of two pages');
  t.same(ringKeys([5, 6]), { 'ring-page-order': 1, 'ring-ref0': 5, 'ring-ref1': 6 });
  t.same(transportKeys([{ grefs: [3], port: 9 }], 'both'), { 'ring-ref': 3, 'event-channel': 9 }, 'one queue keeps its keys at the top');
  t.same(
    transportKeys(
      [
        { grefs: [1, 2], port: 10 },
        { grefs: [3, 4], port: 11 },
      ],
      'order',
    ),
    {
      'ring-page-order': 1,
      'multi-queue-num-queues': 2,
      'queue-0/ring-ref0': 1,
      'queue-0/ring-ref1': 2,
      'queue-0/event-channel': 10,
      'queue-1/ring-ref0': 3,
      'queue-1/ring-ref1': 4,
      'queue-1/event-channel': 11,
    },
    "blkif.h's multi-queue example",
  );
  t.throws(() => transportKeys([{ grefs: [1], port: 1 }, { grefs: [2, 3], port: 2 }], 'order'), RangeError, 'queues share one ring size');
  t.same(ringKeyNames(1), ['ring-ref', 'ring-page-order', 'ring-ref0', 'ring-ref1']);
  const stale = transportKeyNames(2, 2);
  for (const key of ['ring-ref', 'ring-ref3', 'ring-page-order', 'num-ring-pages', 'event-channel', 'multi-queue-num-queues', 'queue-0', 'queue-1']) {
    t.ok(stale.includes(key), `${key} is removed before a new connection is published`);
  }
});

t.test('readers take back what the writers published, in every scheme', async (t) => {
  const cases: [string, { grefs: number[]; port: number }[], 'order' | 'pages' | 'both'][] = [
    ['one page', [{ grefs: [8], port: 3 }], 'both'],
    ['ring-page-order', [{ grefs: [8, 9, 10, 11], port: 3 }], 'order'],
    ['num-ring-pages', [{ grefs: [8, 9, 10, 11], port: 3 }], 'pages'],
    ['both', [{ grefs: [8, 9], port: 3 }], 'both'],
    ['four queues of one page', [0, 1, 2, 3].map((q) => ({ grefs: [20 + q], port: 30 + q })), 'order'],
    ['two queues of 16 pages', [0, 1].map((q) => ({ grefs: Array.from({ length: 16 }, (_, i) => 100 * q + i), port: q })), 'pages'],
  ];
  for (const [name, queues, scheme] of cases) {
    const read = await readTransport(frontend({ ...transportKeys(queues, scheme), protocol: 'x86_64-abi' }), LIMITS);
    t.same(read, { abi: 'x86_64', pages: queues[0]!.grefs.length, queues: queues.map((q) => ({ refs: q.grefs, port: q.port })) }, name);
  }
  t.equal((await readTransport(frontend({ 'ring-ref': 1, 'event-channel': 2, protocol: 'x86_32-abi' }), LIMITS)).abi, 'x86_32');
  t.equal((await readTransport(frontend({ 'ring-ref': 1, 'event-channel': 2 }), LIMITS)).abi, 'x86_64', 'no protocol is the native ABI');
  t.same(
    await readTransport(frontend({ 'ring-page-order': 0, 'ring-ref0': 4, 'event-channel': 2 }), LIMITS),
    { abi: 'x86_64', pages: 1, queues: [{ refs: [4], port: 2 }] },
    'ring-page-order 0 with ring-ref0',
  );
  t.same(await readRing(frontend(ringKeys([1, 2, 3, 4])), 2), [1, 2, 3, 4], 'a single ring (the echo device)');
  t.same(await readRing(frontend({ 'ring-ref': -1 }), 0), [-1], 'a reference is not judged here: mapping it is');
});

t.test('every malformed transport is refused, with its errno and a message naming the key', async (t) => {
  const x86 = { protocol: 'x86_64-abi' };
  const cases: [string, Record<string, string | number>, string, RegExp][] = [
    ['an unknown protocol', { protocol: 'sparc-abi', 'ring-ref': 1, 'event-channel': 2 }, 'EINVAL', /protocol 'sparc-abi' is not one this backend speaks/],
    ['no ring-ref', { ...x86, 'event-channel': 2 }, 'ENOENT', /vbd\/51712\/ring-ref is missing/],
    ['no event-channel', { ...x86, 'ring-ref': 1 }, 'ENOENT', /vbd\/51712\/event-channel is missing/],
    ['ring-ref not an integer', { ...x86, 'ring-ref': 'abc', 'event-channel': 2 }, 'EINVAL', /ring-ref is not an integer: 'abc'/],
    ['ring-ref empty', { ...x86, 'ring-ref': '', 'event-channel': 2 }, 'EINVAL', /ring-ref is not an integer: ''/],
    ['ring-ref a fraction', { ...x86, 'ring-ref': '1.5', 'event-channel': 2 }, 'EINVAL', /ring-ref is not an integer: '1.5'/],
    ['ring-ref in hex', { ...x86, 'ring-ref': '0x10', 'event-channel': 2 }, 'EINVAL', /ring-ref is not an integer/],
    ['event-channel not an integer', { ...x86, 'ring-ref': 1, 'event-channel': 'x' }, 'EINVAL', /event-channel is not an integer: 'x'/],
    ['ring-page-order not an integer', { ...x86, 'ring-page-order': 'two', 'ring-ref0': 1, 'event-channel': 2 }, 'EINVAL', /ring-page-order is not an integer: 'two'/],
    ['ring-page-order too large', { ...x86, 'ring-page-order': 5, 'ring-ref0': 1, 'event-channel': 2 }, 'EINVAL', /ring-page-order 5 is not in 0\.\.4/],
    ['ring-page-order negative', { ...x86, 'ring-page-order': -1, 'ring-ref0': 1, 'event-channel': 2 }, 'EINVAL', /ring-page-order -1 is not in 0\.\.4/],
    ['ring-page-order huge', { ...x86, 'ring-page-order': 64, 'ring-ref0': 1, 'event-channel': 2 }, 'EINVAL', /ring-page-order 64 is not in 0\.\.4/],
    ['ring-page-order 1 without ring-ref1', { ...x86, 'ring-page-order': 1, 'ring-ref0': 1, 'event-channel': 2 }, 'ENOENT', /ring-ref1 is missing/],
    ['num-ring-pages 3', { ...x86, 'num-ring-pages': 3, 'ring-ref0': 1, 'ring-ref1': 1, 'ring-ref2': 1, 'event-channel': 2 }, 'EINVAL', /num-ring-pages 3 is not a power of two up to 16/],
    ['num-ring-pages -1', { ...x86, 'num-ring-pages': -1, 'ring-ref': 1, 'event-channel': 2 }, 'EINVAL', /num-ring-pages -1 is not a power of two/],
    ['num-ring-pages 0', { ...x86, 'num-ring-pages': 0, 'ring-ref': 1, 'event-channel': 2 }, 'EINVAL', /num-ring-pages 0 is not a power of two/],
    ['num-ring-pages above the offer', { ...x86, 'num-ring-pages': 32, 'ring-ref0': 1, 'event-channel': 2 }, 'EINVAL', /num-ring-pages 32 is not a power of two up to 16/],
    ['num-ring-pages not an integer', { ...x86, 'num-ring-pages': '4k', 'ring-ref0': 1, 'event-channel': 2 }, 'EINVAL', /num-ring-pages is not an integer: '4k'/],
    [
      'ring-page-order and num-ring-pages disagreeing',
      { ...x86, 'ring-page-order': 1, 'num-ring-pages': 4, 'ring-ref0': 1, 'ring-ref1': 1, 'event-channel': 2 },
      'EINVAL',
      /num-ring-pages 4 disagrees with ring-page-order 1/,
    ],
    ['multi-queue-num-queues 0', { ...x86, 'multi-queue-num-queues': 0, 'ring-ref': 1, 'event-channel': 2 }, 'EINVAL', /multi-queue-num-queues 0 is not in 1\.\.4/],
    [
      'multi-queue-num-queues above the maximum',
      { ...x86, 'multi-queue-num-queues': 5, 'queue-0/ring-ref': 1, 'queue-0/event-channel': 2 },
      'EINVAL',
      /multi-queue-num-queues 5 is not in 1\.\.4/,
    ],
    ['multi-queue-num-queues negative', { ...x86, 'multi-queue-num-queues': -2, 'ring-ref': 1, 'event-channel': 2 }, 'EINVAL', /multi-queue-num-queues -2 is not in 1\.\.4/],
    ['multi-queue-num-queues not an integer', { ...x86, 'multi-queue-num-queues': 'all', 'ring-ref': 1, 'event-channel': 2 }, 'EINVAL', /multi-queue-num-queues is not an integer: 'all'/],
    [
      'queue-1 missing',
      { ...x86, 'multi-queue-num-queues': 2, 'queue-0/ring-ref': 1, 'queue-0/event-channel': 2 },
      'ENOENT',
      /queue-1 is missing \(multi-queue-num-queues is 2\)/,
    ],
    [
      'two queues with their keys at the top',
      { ...x86, 'multi-queue-num-queues': 2, 'ring-ref': 1, 'event-channel': 2 },
      'ENOENT',
      /queue-0 is missing/,
    ],
    [
      'queue-1 without its event-channel',
      { ...x86, 'multi-queue-num-queues': 2, 'queue-0/ring-ref': 1, 'queue-0/event-channel': 2, 'queue-1/ring-ref': 3 },
      'ENOENT',
      /queue-1\/event-channel is missing/,
    ],
    [
      'queue-1 short of a page',
      { ...x86, 'multi-queue-num-queues': 2, 'ring-page-order': 1, 'queue-0/ring-ref0': 1, 'queue-0/ring-ref1': 1, 'queue-0/event-channel': 2, 'queue-1/ring-ref0': 3, 'queue-1/event-channel': 4 },
      'ENOENT',
      /queue-1\/ring-ref1 is missing/,
    ],
  ];
  for (const [name, keys, errno, message] of cases) {
    const outcome = await refusal(readTransport(frontend(keys), LIMITS));
    t.equal(outcome === 'accepted' ? 'accepted' : outcome.errno, errno, `${name}: ${errno}`);
    if (outcome !== 'accepted') t.match(outcome.message, message, `${name}: says why`);
  }
});

t.test('a backend that offered one page takes no larger ring', async (t) => {
  const outcome = await refusal(readRing(frontend(ringKeys([1, 2])), 0));
  t.match(outcome, { errno: 'EINVAL', message: /ring-page-order 1 is not in 0\.\.0/ });
  const pages = await refusal(readTransport(frontend({ 'num-ring-pages': 2, 'ring-ref0': 1, 'ring-ref1': 2, 'event-channel': 3 }), { maxRingPageOrder: 0, maxQueues: 1 }));
  t.match(pages, { errno: 'EINVAL', message: /num-ring-pages 2 is not a power of two up to 1/ });
  const queues = await refusal(readTransport(frontend({ 'multi-queue-num-queues': 2, 'queue-0/ring-ref': 1 }), { maxRingPageOrder: 0, maxQueues: 1 }));
  t.match(queues, { errno: 'EINVAL', message: /multi-queue-num-queues 2 is not in 1\.\.1/ });
});
