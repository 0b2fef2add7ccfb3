/**
 * The compatibility matrix: frontends and backends of each generation
 * connect and move data. Ring sizes announced with neither key (the
 * original single page), with `ring-page-order` (Linux), with
 * `num-ring-pages` / `max-ring-pages` (the older scheme) or with both;
 * indirect requests offered or not; persistent grants or not; one queue or
 * several; the 32-bit x86 ABI. Each end must settle on the lesser of what
 * both published and fall back to the original protocol for what one of
 * them did not.
 */
import t from 'tap';
import { BLKIF_MAX_SEGMENTS_PER_REQUEST } from '../shared/blkif.js';
import type { BlkbackOptions } from '../blkback/driver.js';
import type { FrontendLimits } from '../blkfront/negotiate.js';
import { randomBytes, startBlkTestbed } from './helpers/blk.js';

interface Case {
  name: string;
  front: Partial<FrontendLimits>;
  back: BlkbackOptions;
  expect: { ringPages: number; queues: number; segments: number; persistent: boolean; abi?: 'x86_64' | 'x86_32' };
}

const ringStyles: { name: string; front: Partial<FrontendLimits>; back: BlkbackOptions; max: number }[] = [
  { name: 'single page', front: { maxRingPageOrder: 0 }, back: { maxRingPageOrder: 0 }, max: 1 },
  { name: 'ring-page-order', front: { maxRingPageOrder: 2, ringKeys: 'order' }, back: { maxRingPageOrder: 3, ringKeys: 'order' }, max: 0 },
  { name: 'num-ring-pages', front: { maxRingPageOrder: 2, ringKeys: 'pages' }, back: { maxRingPageOrder: 3, ringKeys: 'pages' }, max: 0 },
  { name: 'both keys', front: { maxRingPageOrder: 2, ringKeys: 'both' }, back: { maxRingPageOrder: 3, ringKeys: 'both' }, max: 0 },
];

const ringCases: Case[] = ringStyles.flatMap((f) =>
  ringStyles.map((b) => ({
    name: `front ${f.name}, back ${b.name}`,
    front: { ...f.front, maxQueues: 1, maxIndirectSegments: 0 },
    back: { ...b.back, maxQueues: 1, maxIndirectSegments: 0 },
    // The frontend wants 4 pages, the backend allows 8: 4, unless either is single-page.
    expect: { ringPages: f.max === 1 || b.max === 1 ? 1 : 4, queues: 1, segments: BLKIF_MAX_SEGMENTS_PER_REQUEST, persistent: true },
  })),
);

const featureCases: Case[] = [
  {
    name: 'indirect offered by the backend only',
    front: { maxIndirectSegments: 0 },
    back: { maxIndirectSegments: 256 },
    expect: { ringPages: 4, queues: 4, segments: 11, persistent: true },
  },
  {
    name: 'indirect wanted by the frontend only',
    front: { maxIndirectSegments: 32 },
    back: { maxIndirectSegments: 0 },
    expect: { ringPages: 4, queues: 4, segments: 11, persistent: true },
  },
  {
    name: 'indirect on both: the lesser limit',
    front: { maxIndirectSegments: 64 },
    back: { maxIndirectSegments: 40 },
    expect: { ringPages: 4, queues: 4, segments: 40, persistent: true },
  },
  { name: 'persistent grants on the frontend only', front: { persistent: true }, back: { persistent: false }, expect: { ringPages: 4, queues: 4, segments: 256, persistent: false } },
  { name: 'persistent grants on the backend only', front: { persistent: false }, back: { persistent: true }, expect: { ringPages: 4, queues: 4, segments: 256, persistent: false } },
  { name: 'one queue wanted, four offered', front: { maxQueues: 1 }, back: { maxQueues: 4 }, expect: { ringPages: 4, queues: 1, segments: 256, persistent: true } },
  { name: 'four queues wanted, two offered', front: { maxQueues: 4 }, back: { maxQueues: 2 }, expect: { ringPages: 4, queues: 2, segments: 256, persistent: true } },
  { name: 'four queues wanted, a backend without multi-queue', front: { maxQueues: 4 }, back: { maxQueues: 1 }, expect: { ringPages: 4, queues: 1, segments: 256, persistent: true } },
  { name: 'the 32-bit x86 ABI', front: { abi: 'x86_32' }, back: {}, expect: { ringPages: 4, queues: 4, segments: 256, persistent: true, abi: 'x86_32' } },
  {
    name: 'the 32-bit ABI on many queues with indirect requests and persistent grants',
    front: { abi: 'x86_32', maxQueues: 3, maxIndirectSegments: 64, maxRingPageOrder: 1 },
    back: {},
    expect: { ringPages: 2, queues: 3, segments: 64, persistent: true, abi: 'x86_32' },
  },
  {
    name: 'an old frontend (original protocol) and a new backend',
    front: { maxRingPageOrder: 0, maxQueues: 1, maxIndirectSegments: 0, persistent: false },
    back: {},
    expect: { ringPages: 1, queues: 1, segments: 11, persistent: false },
  },
  {
    name: 'a new frontend and an old backend (original protocol)',
    front: {},
    back: { maxRingPageOrder: 0, maxQueues: 1, maxIndirectSegments: 0, persistent: false },
    expect: { ringPages: 1, queues: 1, segments: 11, persistent: false },
  },
];

for (const c of [...ringCases, ...featureCases]) {
  t.test(c.name, async (t) => {
    const blk = await startBlkTestbed(t, { front: c.front, back: c.back });
    const spec = blk.disk('xvda');
    const disk = await blk.connect(spec);
    const frontend = blk.front.devices.get(String(spec.devid))!;
    const backend = blk.back.devices.get(`${blk.guest.domid}/${spec.devid}`)!;
    const negotiated = frontend.negotiated!;
    t.same(
      { ringPages: negotiated.ringPages, queues: negotiated.queues, segments: negotiated.segmentsPerRequest, persistent: negotiated.persistent },
      { ringPages: c.expect.ringPages, queues: c.expect.queues, segments: c.expect.segments, persistent: c.expect.persistent },
      'the frontend settled on the lesser of both ends',
    );
    t.same(
      { pages: backend.transport!.pages, queues: backend.transport!.queues.length, abi: backend.transport!.abi, persistent: backend.transport!.persistent },
      { pages: c.expect.ringPages, queues: c.expect.queues, abi: c.expect.abi ?? 'x86_64', persistent: c.expect.persistent },
      'and the backend read the same from its keys',
    );
    // More than one request's worth, so that requests are cut by the segment limit.
    const data = randomBytes(300 * 1024);
    await disk.write(64, data);
    await disk.flush();
    t.same(await disk.read(64, data.length / 512), data, 'data written is read back');
    const small = randomBytes(512);
    await disk.write(7, small);
    t.same(await disk.read(7, 1), small, 'a single sector too');
  });
}
