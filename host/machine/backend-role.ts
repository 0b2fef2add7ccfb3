import { attachPlatform, type PlatformShared } from '../../shared/attach.js';
import { EventDispatcher } from '../../shared/event-dispatcher.js';
import type { RoleContext, RoleInstance } from '../../shared/mesh/worker-runtime.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import { BackBus } from '../../xenbus/back-bus.js';
import { DeferredRelease } from '../../xenbus/deferred-release.js';
import { stateName } from '../../xenbus/state.js';
import { BlkbackDriver, type BlkbackOptions } from '../../blkback/driver.js';
import { BLOCK_STATS_TIMEOUT_MS, BLOCK_STATS_TOPIC } from '../../shared/mesh/topics.js';
import type { Supervisor } from '../../shared/mesh/supervisor.js';
import type { VbdStatsReport } from '../../shared/vbd-stats.js';

/** What the backend role needs: whose backends it serves, how it reaches xenstored, how it serves. */
export interface BackendRoleConfig {
  /** The domain this process runs in: it serves `backend/<class>/...` of that domain's home. */
  readonly domid: number;
  /** xenstored's socket or the xenbus device; xs_open's choice if absent. */
  readonly xenstore: string | undefined;
  /** What the block backend offers and how it does its I/O. */
  readonly blkback: BlkbackOptions;
  /**
   * Stopped, publish Closing then Closed for every device (a driver
   * domain going down: its guests must see their disks go) rather than
   * leave the states to the toolstack.
   */
  readonly closeOnStop?: boolean;
}

/** The running backend role. */
export interface BackendRole extends RoleInstance {
  /** The counters of every block device it serves. */
  blockStats(): VbdStatsReport[];
}

/** How often the role publishes its devices' states. */
const STATS_INTERVAL_MS = 1000;

/** The supervisor's name for the backend role's worker (`xenmesh backend`). */
export const BACKEND_ROLE_NAME = 'backend';

/**
 * The counters of every block device the backend role serves, asked of its
 * worker: what a metrics endpoint beside `xenmesh backend` serves. Rejects
 * when the worker is not running or does not answer in time.
 */
export async function backendBlockStats(supervisor: Supervisor, name = BACKEND_ROLE_NAME, timeoutMs = BLOCK_STATS_TIMEOUT_MS): Promise<VbdStatsReport[]> {
  return (await supervisor.query(name, BLOCK_STATS_TOPIC, timeoutMs)) as VbdStatsReport[];
}

/**
 * The back bus of a domain on real Xen, in a worker: what a driver domain's
 * kernel does in Linux (xenbus_probe_backend with blkback), done by a
 * process. It connects to xenstored as any process there does, maps and
 * binds through the platform its link names, and serves every block device
 * the toolstack writes under the domain's `backend/vbd`.
 */
export async function startBackendRole(ctx: RoleContext<BackendRoleConfig>): Promise<BackendRole> {
  const { domid, xenstore, blkback } = ctx.config;
  const { link } = ctx.shared as PlatformShared;
  const platform = await attachPlatform(link);
  const xs = await XenStoreClient.open(xenstore);
  const domain = platform.domain(domid);
  const events = new EventDispatcher(domain.openEventChannels());
  const home = await xs.getDomainPath(domid);
  const deferred = new DeferredRelease(domain.grants, domain.memory, ctx.log);
  const bus = new BackBus({ xs, domid, home, domain, events, link, log: ctx.log, deferred });
  const driver = new BlkbackDriver(blkback);
  bus.register(driver);
  await bus.start();
  ctx.log.info(`serving ${bus.root} with blkback (grant ${blkback.grantAccess ?? 'map'})`);

  const devices = async (): Promise<Record<string, string>> => {
    const out: Record<string, string> = {};
    for (const d of await bus.status()) {
      out[`${d.type}/${d.id}`] = `${stateName(d.state)} (frontend ${d.otherendState === undefined ? '?' : stateName(d.otherendState)})`;
    }
    return out;
  };
  let last: Record<string, string> = {};
  const timer = setInterval(() => {
    void devices().then((d) => {
      last = d;
      ctx.stats({ devices: Object.keys(d).length, ...d });
    }, () => {});
  }, STATS_INTERVAL_MS);
  timer.unref();

  return {
    info: { home, root: bus.root },
    health: () => ({ xenstore: xs.isClosed ? 'closed' : 'connected', ...last }),
    blockStats: () => driver.blockStats(),
    query(topic) {
      if (topic !== BLOCK_STATS_TOPIC) throw new Error(`no query '${topic}' (known: ${BLOCK_STATS_TOPIC})`);
      return driver.blockStats();
    },
    async stop() {
      clearInterval(timer);
      // Devices answer what is in flight, flush and close their stores;
      // their xenstore states are then closed (as Linux's
      // xenbus_dev_shutdown does when the domain goes) or left for the
      // toolstack (or a successor).
      if (ctx.config.closeOnStop) await bus.shutdown();
      else await bus.stop();
      deferred.stop();
      xs.close();
      events.channels.close();
    },
  };
}
