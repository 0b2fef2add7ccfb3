/**
 * The workers of `npm run bench:platform`, one module with several jobs:
 * each measures for a fixed time and posts what it counted.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import type { EmbeddedDescriptor } from '../shared/embedded/layout.js';
import { EventDispatcher } from '../shared/event-dispatcher.js';
import { XenStoreClient } from '../xenstore/client/client.js';
import { RingClientTransport } from '../xenstore/client/ring-transport.js';
import type { StartInfo } from '../host/toolstack/domain-builder.js';

type Job =
  | { job: 'atomics-ping'; flag: SharedArrayBuffer; durationMs: number }
  | { job: 'atomics-pong'; flag: SharedArrayBuffer }
  | { job: 'atomics-async-ping'; flag: SharedArrayBuffer; durationMs: number }
  | { job: 'atomics-async-pong'; flag: SharedArrayBuffer }
  | { job: 'evtchn-ping'; descriptor: EmbeddedDescriptor; domid: number; port: number; durationMs: number }
  | { job: 'evtchn-pong'; descriptor: EmbeddedDescriptor; domid: number; remoteDomid: number; remotePort: number }
  | { job: 'xenstore-ring-reads'; descriptor: EmbeddedDescriptor; start: StartInfo; inFlight: number; durationMs: number }
  | { job: 'xenstore-socket-reads'; socket: string; path: string; inFlight: number; durationMs: number };

/** Reads a node over and over with `inFlight` requests outstanding; returns how many completed. */
async function readLoop(xs: XenStoreClient, path: string, inFlight: number, durationMs: number): Promise<number> {
  let reads = 0;
  const end = Date.now() + durationMs;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (Date.now() < end) {
        await xs.read(path);
        reads++;
      }
    }),
  );
  return reads;
}

const job = workerData as Job;
const done = (result: unknown) => parentPort!.postMessage(result);

/** The floor: two threads handing a turn back and forth with Atomics.wait and notify, nothing else. */
function atomicsPing(flag: Int32Array, durationMs: number): void {
  const end = Date.now() + durationMs;
  let trips = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 1000; i++) {
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
      Atomics.wait(flag, 0, 1);
      trips++;
    }
  }
  Atomics.store(flag, 0, 2);
  Atomics.notify(flag, 0);
  done({ trips });
}

function atomicsPong(flag: Int32Array): void {
  for (;;) {
    Atomics.wait(flag, 0, 0);
    if (Atomics.load(flag, 0) === 2) break;
    Atomics.store(flag, 0, 0);
    Atomics.notify(flag, 0);
  }
  done({});
}

/**
 * A pending Atomics.waitAsync does not keep a thread's event loop alive; a
 * timer that never fires does, as an open event channel handle holds one.
 */
function keepEventLoopAlive(): NodeJS.Timeout {
  return setInterval(() => {}, 2 ** 30);
}

/** Sleeps until flag[0] is no longer `value`, keeping the event loop: what a worker that also serves other events can do. */
async function waitUntilChanged(flag: Int32Array, value: number): Promise<void> {
  const waited = Atomics.waitAsync(flag, 0, value);
  if (waited.async) await waited.value;
}

/**
 * The floor for a worker that keeps its event loop: the same hand-off as
 * atomicsPing, each side sleeping in Atomics.waitAsync as an event
 * channel's receiver does, with no event channel around it.
 */
async function atomicsAsyncPing(flag: Int32Array, durationMs: number): Promise<void> {
  const keepAlive = keepEventLoopAlive();
  const end = Date.now() + durationMs;
  let trips = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 1000; i++) {
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
      await waitUntilChanged(flag, 1);
      trips++;
    }
  }
  Atomics.store(flag, 0, 2);
  Atomics.notify(flag, 0);
  clearInterval(keepAlive);
  done({ trips });
}

async function atomicsAsyncPong(flag: Int32Array): Promise<void> {
  const keepAlive = keepEventLoopAlive();
  for (;;) {
    await waitUntilChanged(flag, 0);
    if (Atomics.load(flag, 0) === 2) break;
    Atomics.store(flag, 0, 0);
    Atomics.notify(flag, 0);
  }
  clearInterval(keepAlive);
  done({});
}

async function main(): Promise<void> {
  switch (job.job) {
    case 'atomics-ping':
      return atomicsPing(new Int32Array(job.flag), job.durationMs);
    case 'atomics-pong':
      return atomicsPong(new Int32Array(job.flag));
    case 'atomics-async-ping':
      return atomicsAsyncPing(new Int32Array(job.flag), job.durationMs);
    case 'atomics-async-pong':
      return atomicsAsyncPong(new Int32Array(job.flag));
    case 'evtchn-pong': {
      const channels = EmbeddedPlatform.attach(job.descriptor).domain(job.domid).openEventChannels();
      const port = channels.bindInterdomain(job.remoteDomid, job.remotePort);
      channels.onEvent(() => channels.notify(port));
      parentPort!.once('message', () => {
        channels.close();
        done({});
      });
      return done({ ready: true });
    }
    case 'evtchn-ping': {
      const channels = EmbeddedPlatform.attach(job.descriptor).domain(job.domid).openEventChannels();
      channels.listen(job.port);
      let trips = 0;
      const end = Date.now() + job.durationMs;
      channels.onEvent(() => {
        if (Date.now() < end) {
          trips++;
          channels.notify(job.port);
        } else {
          channels.close();
          done({ trips });
        }
      });
      channels.notify(job.port);
      return;
    }
    case 'xenstore-ring-reads': {
      const platform = EmbeddedPlatform.attach(job.descriptor);
      const domain = platform.domain(job.start.domid);
      const events = new EventDispatcher(domain.openEventChannels());
      const xs = new XenStoreClient(RingClientTransport.open(domain, events, job.start.storePfn, job.start.storePort));
      const reads = await readLoop(xs, 'name', job.inFlight, job.durationMs);
      xs.close();
      events.channels.close();
      return done({ reads });
    }
    case 'xenstore-socket-reads': {
      const xs = await XenStoreClient.connect(job.socket);
      const reads = await readLoop(xs, job.path, job.inFlight, job.durationMs);
      xs.close();
      return done({ reads });
    }
  }
}

void main();
