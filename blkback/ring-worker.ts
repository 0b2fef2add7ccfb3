/**
 * A ring thread of the block backend: it owns the rings it is given from
 * request to response, as Linux's blkback runs a kernel thread per ring.
 * It maps each ring and binds its event channel through its own
 * attachment to the platform, takes requests, checks them, submits their
 * I/O (io_uring, or the piscina pool where io_uring cannot run), writes the
 * responses and notifies the frontend; no other thread is on the path.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { attachPlatform } from '../shared/attach.js';
import { EventDispatcher } from '../shared/event-dispatcher.js';
import { createLogger, setLogSink } from '../shared/log.js';
import type { GrantMapping, GrantTable, Platform } from '../shared/platform.js';
import { otherendErrno } from '../shared/errors.js';
import { startEngine, type RingIo, type RunningEngine } from './io-engine.js';
import { RequestQueue } from './queue.js';
import type { FromRingThread, RingSpec, RingThreadData, ToRingThread } from './ring-messages.js';
import { BlkbackRing, type RingHost } from './ring.js';
import { RingCounterWriter } from './ring-counters.js';

const port = parentPort!;
const data = workerData as RingThreadData;
const post = (message: FromRingThread) => port.postMessage(message);

setLogSink((level, component, message) => post({ type: 'log', level, component, message }));
const log = createLogger('blkback');

/** Our side of one domain: its grant table and one event channel handle shared by every ring of it here. */
interface DomainSide {
  readonly grants: GrantTable;
  readonly events: EventDispatcher;
}

interface Served {
  readonly ring: BlkbackRing;
  readonly queue: RequestQueue;
  readonly io: RingIo;
}

const platform: Platform = await attachPlatform(data.link);
let engine: RunningEngine;
try {
  engine = await startEngine(data.engine, platform, data);
} catch (err) {
  post({ type: 'unusable', reason: (err as Error).message });
  process.exit(0);
}
const domains = new Map<number, DomainSide>();
const rings = new Map<number, Served>();

function domainSide(domid: number): DomainSide {
  let side = domains.get(domid);
  if (!side) {
    const domain = platform.domain(domid);
    side = { grants: domain.grants, events: new EventDispatcher(domain.openEventChannels()) };
    domains.set(domid, side);
  }
  return side;
}

function attach(spec: RingSpec): void {
  const side = domainSide(spec.backend);
  let mapping: GrantMapping;
  try {
    mapping = side.grants.map(spec.frontend, spec.refs, true);
  } catch (err) {
    post(failure(spec.id, err, `mapping ring-ref ${spec.refs.join(',')} of domain ${spec.frontend}`));
    return;
  }
  const host: RingHost = {
    name: spec.name,
    log,
    grants: side.grants,
    frontend: spec.frontend,
    bind(remotePort, handler) {
      const local = side.events.channels.bindInterdomain(spec.frontend, remotePort);
      side.events.on(local, handler);
      return local;
    },
    unbind(local) {
      side.events.off(local);
      try {
        side.events.channels.unbind(local);
      } catch (err) {
        log.debug(`${spec.name}: unbinding port ${local}: ${(err as Error).message}`);
      }
    },
    notify: (local) => side.events.channels.notify(local),
  };
  const io = engine.forRing(spec.frontend, spec.persistent);
  const queue = new RequestQueue(io.runner, spec.store, spec.frontend, spec.backend, engine.limits);
  try {
    const ring = new BlkbackRing(host, mapping, spec.remotePort, queue, spec.policy, (why) => post({ type: 'broken', id: spec.id, why }), new RingCounterWriter(spec.counters));
    rings.set(spec.id, { ring, queue, io });
  } catch (err) {
    io.close();
    mapping.unmap();
    post(failure(spec.id, err, `binding event-channel ${spec.remotePort} of domain ${spec.frontend}`));
    return;
  }
  post({ type: 'attached', id: spec.id });
}

async function stop(id: number): Promise<void> {
  const served = rings.get(id);
  if (served) {
    rings.delete(id);
    await served.ring.stop();
    await served.queue.idle();
    served.io.close();
  }
  post({ type: 'stopped', id });
}

/** A refusal in xenstore's terms: the frontend's domain is gone (ENOENT) or what it published is wrong (EINVAL). */
function failure(id: number, err: unknown, what: string): FromRingThread {
  return { type: 'failed', id, errno: otherendErrno(err), message: `${what}: ${(err as Error).message}` };
}

port.on('message', (message: ToRingThread) => {
  switch (message.type) {
    case 'attach':
      attach(message.spec);
      break;
    case 'stop':
      stop(message.id).catch((err: Error) => {
        log.error(`stopping ring ${message.id}: ${err.stack ?? err.message}`);
        post({ type: 'stopped', id: message.id });
      });
      break;
  }
});

post({ type: 'ready', engine: engine.engine, ...(engine.reason ? { reason: engine.reason } : {}) });
