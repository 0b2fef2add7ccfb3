import type { LogLevel } from '../shared/log.js';
import type { PlatformLink } from '../shared/platform.js';
import type { GrantAccess } from './io-pool.js';
import type { RingPolicy } from './ring.js';
import type { StoreHandle } from './store.js';

/**
 * How a ring thread does its I/O: submitted asynchronously through
 * io_uring from the thread itself, or handed to a piscina pool of threads
 * that block in preadv/pwritev (where io_uring is missing or refused).
 * `auto` takes io_uring when it works.
 */
export type IoEngine = 'uring' | 'pool';
export type IoEngineChoice = IoEngine | 'auto';

/** What a ring thread is started with. */
export interface RingThreadData {
  readonly link: PlatformLink;
  /** The driver domain whose rings the thread serves. */
  readonly domid: number;
  readonly engine: IoEngineChoice;
  readonly grantAccess: GrantAccess;
}

/** Everything a ring thread needs to serve one ring: handles only, as a process on Xen gets them. */
export interface RingSpec {
  readonly id: number;
  /** The device's backend node, for messages. */
  readonly name: string;
  /** Our domain (which maps and binds) and the frontend's (which granted the pages). */
  readonly backend: number;
  readonly frontend: number;
  readonly refs: readonly number[];
  readonly remotePort: number;
  readonly policy: RingPolicy;
  readonly store: StoreHandle;
  /** The frontend uses persistent grants: its data pages may be kept mapped. */
  readonly persistent: boolean;
  /** The ring's counters (ring-counters.ts): the ring thread writes them, the device's thread reads them. */
  readonly counters: SharedArrayBuffer;
}

export type ToRingThread =
  | { readonly type: 'attach'; readonly spec: RingSpec }
  /** Stop taking requests, answer those taken, let go of the ring. */
  | { readonly type: 'stop'; readonly id: number };

export type FromRingThread =
  /** The thread is up, and which engine it runs (with why, if not the one asked for). */
  | { readonly type: 'ready'; readonly engine: IoEngine; readonly reason?: string }
  /** The thread could not start its engine: what was asked for cannot run here. */
  | { readonly type: 'unusable'; readonly reason: string }
  | { readonly type: 'attached'; readonly id: number }
  | { readonly type: 'failed'; readonly id: number; readonly errno: string; readonly message: string }
  | { readonly type: 'stopped'; readonly id: number }
  /** The frontend broke the ring: the device must go Closing with this reason. */
  | { readonly type: 'broken'; readonly id: number; readonly why: string }
  | { readonly type: 'log'; readonly level: LogLevel; readonly component: string; readonly message: string };
