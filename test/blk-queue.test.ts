/**
 * The block backend's request queue, against a stand-in I/O pool that
 * records every task and answers as each test says: contiguous requests
 * merged into one call (within its limits), a failure of a merged call
 * failing only the request at fault, transient errors retried a bounded
 * number of times, barriers and flushes ordering what is around them, and
 * work deferred (never refused) while the pool is busy.
 *
 * Bad outcomes tried: EFAULT on one page of a merged read (a grant the
 * frontend never gave), EAGAIN once and for ever, a pool task that rejects
 * outright, EIO on a barrier's write.
 */
import t from 'tap';
import { BlkifStatus } from '../shared/blkif.js';
import type { IoOp, IoOutcome, IoTask } from '../blkback/io-task.js';
import { RequestQueue, type BlockIo, type IoRunner, type QueueLimits } from '../blkback/queue.js';

const PAGE = 4096;

/** A pool that records tasks; each is answered by `answer` at once, or held until released. */
class StandInPool implements IoRunner {
  readonly threads = 2;
  readonly tasks: IoTask[] = [];
  inFlight = 0;
  maxInFlight = 0;
  private held: (() => void)[] = [];
  hold = false;

  constructor(private readonly answer: (op: IoOp) => IoOutcome = () => null) {}

  run(task: IoTask): Promise<IoOutcome[]> {
    this.tasks.push(task);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    const finish = () => {
      this.inFlight--;
      return task.ops.map((op) => this.answer(op));
    };
    if (!this.hold) return Promise.resolve().then(finish);
    return new Promise((resolve) => this.held.push(() => resolve(finish())));
  }

  /** Answers the oldest held task. */
  releaseOne(): void {
    this.held.shift()?.();
  }

  get waiting(): number {
    return this.held.length;
  }

  ops(): IoOp[] {
    return this.tasks.flatMap((task) => task.ops);
  }
}

function queueOf(pool: IoRunner, limits: Partial<QueueLimits> = {}): RequestQueue {
  return new RequestQueue(pool, { kind: 'fd', fd: -1, blockDevice: false }, 2, 1, { tasksInFlight: 2, retries: 3, mergeBytes: 1024 * 1024, ...limits });
}

/** A 4 KiB read or write of page `page` of the disk, through grant `gref`. */
function io(kind: 'read' | 'write', page: number, gref = 100 + page): BlockIo {
  return { kind, offset: page * PAGE, length: PAGE, chunks: [{ gref, start: 0, length: PAGE }] };
}

/** Submits and collects the statuses in completion order. */
function submitAll(queue: RequestQueue, ios: BlockIo[]): Promise<number[]> {
  return Promise.all(ios.map((request) => new Promise<number>((resolve) => queue.submit(request, resolve))));
}

const flushMicrotasks = () => new Promise((resolve) => setImmediate(resolve));

t.test('contiguous reads are merged into one call, within the merge limit', async (t) => {
  const pool = new StandInPool();
  const queue = queueOf(pool, { tasksInFlight: 1 });
  const statuses = await submitAll(queue, [0, 1, 2, 3, 4, 5].map((p) => io('read', p)));
  t.same(statuses, new Array(6).fill(BlkifStatus.OKAY));
  t.equal(pool.ops().length, 1, 'six adjacent reads: one call');
  const op = pool.ops()[0]!;
  t.equal(op.op === 'read' && op.offset, 0);
  t.same(op.op === 'read' && op.chunks.map((c) => c.gref), [100, 101, 102, 103, 104, 105], 'the pages in disk order');

  const limited = new StandInPool();
  await submitAll(queueOf(limited, { tasksInFlight: 1, mergeBytes: 2 * PAGE }), [0, 1, 2, 3, 4].map((p) => io('write', p)));
  t.same(
    limited.ops().map((o) => (o.op === 'write' ? o.chunks.length : 0)),
    [2, 2, 1],
    'a merged call never exceeds mergeBytes',
  );
});

t.test('what is not contiguous, or not the same operation, is not merged', async (t) => {
  const pool = new StandInPool();
  await submitAll(queueOf(pool, { tasksInFlight: 1 }), [io('read', 0), io('read', 2), io('write', 3), io('write', 4), io('read', 5)]);
  t.same(
    pool.ops().map((o) => `${o.op}@${'offset' in o ? o.offset / PAGE : '-'}`),
    ['read@0', 'read@2', 'write@3', 'read@5'],
  );
  t.equal((pool.ops()[2] as unknown as { chunks: unknown[] }).chunks.length, 2, 'the two writes went together');
});

t.test('a merged call that fails is retried request by request: only the one at fault fails', async (t) => {
  const BAD = 666;
  const pool = new StandInPool((op) => (op.op === 'read' && op.chunks.some((c) => c.gref === BAD) ? 'EFAULT' : null));
  const queue = queueOf(pool, { tasksInFlight: 1 });
  const statuses = await submitAll(queue, [io('read', 0), io('read', 1, BAD), io('read', 2), io('read', 3)]);
  t.same(statuses, [BlkifStatus.OKAY, BlkifStatus.ERROR, BlkifStatus.OKAY, BlkifStatus.OKAY]);
  t.ok(pool.ops().length > 1, 'the merged call was split after it failed');
  await queue.idle();
  t.equal(queue.outstanding, 0);
});

t.test('transient errors are retried a bounded number of times', async (t) => {
  let failures = 1;
  const once = new StandInPool(() => (failures-- > 0 ? 'EAGAIN' : null));
  t.same(await submitAll(queueOf(once), [io('write', 7)]), [BlkifStatus.OKAY], 'EAGAIN once: retried, and done');
  t.equal(once.ops().length, 2);

  const always = new StandInPool(() => 'EAGAIN');
  t.same(await submitAll(queueOf(always, { retries: 3 }), [io('write', 7)]), [BlkifStatus.ERROR], 'EAGAIN for ever: an error in the end');
  t.equal(always.ops().length, 4, 'tried once and retried three times');

  const broken: IoRunner = { threads: 1, run: () => Promise.reject(Object.assign(new Error('pool gone'), { code: 'EIO' })) };
  t.same(await submitAll(queueOf(broken), [io('read', 1)]), [BlkifStatus.ERROR], 'a task that rejects fails its requests');
});

t.test('a barrier waits for what came before and holds back what comes after', async (t) => {
  const pool = new StandInPool();
  pool.hold = true;
  const queue = queueOf(pool);
  const order: string[] = [];
  const submit = (name: string, request: BlockIo) => new Promise<void>((resolve) => queue.submit(request, () => (order.push(name), resolve())));
  const before = [submit('w0', io('write', 0)), submit('w5', io('write', 5))];
  const barrier = submit('barrier', { kind: 'barrier', offset: 9 * PAGE, length: PAGE, chunks: [{ gref: 109, start: 0, length: PAGE }] });
  const after = submit('r1', io('read', 1));
  await flushMicrotasks();
  t.equal(pool.tasks.length, 1, 'only the writes before the barrier went out');
  pool.releaseOne();
  await Promise.all(before);
  await flushMicrotasks();
  t.equal(pool.tasks.length, 2, 'then the barrier, alone');
  t.same(pool.tasks[1]!.ops.map((o) => o.op), ['write', 'flush'], 'its write, then a flush, in one task');
  await flushMicrotasks();
  t.equal(pool.tasks.length, 2, 'the read after it waits');
  pool.releaseOne();
  await barrier;
  await flushMicrotasks();
  pool.releaseOne();
  await after;
  t.same(order, ['w0', 'w5', 'barrier', 'r1']);
});

t.test('a flush is an ordering point too, and a barrier whose write fails fails', async (t) => {
  const pool = new StandInPool((op) => (op.op === 'write' && op.offset === 3 * PAGE ? 'EIO' : null));
  const queue = queueOf(pool);
  const [read, flush] = await submitAll(queue, [io('read', 0), { kind: 'flush' }]);
  t.same([read, flush], [BlkifStatus.OKAY, BlkifStatus.OKAY]);
  t.same(pool.tasks.at(-1)!.ops.map((o) => o.op), ['flush'], 'the flush went alone');
  const [failed] = await submitAll(queue, [{ kind: 'barrier', offset: 3 * PAGE, length: PAGE, chunks: [{ gref: 1, start: 0, length: PAGE }] }]);
  t.equal(failed, BlkifStatus.ERROR);
});

t.test('while the pool is busy, requests wait: none is refused', async (t) => {
  const pool = new StandInPool();
  pool.hold = true;
  const queue = queueOf(pool, { tasksInFlight: 2 });
  const all = submitAll(queue, Array.from({ length: 100 }, (_, i) => io(i % 2 ? 'read' : 'write', i * 3)));
  await flushMicrotasks();
  t.equal(pool.inFlight, 2, 'two tasks in flight, as allowed');
  t.ok(queue.outstanding === 100, 'the rest wait');
  while (pool.waiting > 0) {
    pool.releaseOne();
    await flushMicrotasks();
  }
  t.same(await all, new Array(100).fill(BlkifStatus.OKAY), 'every request done');
  t.equal(pool.maxInFlight, 2, 'never more than two tasks at once');
  await queue.idle();
});
