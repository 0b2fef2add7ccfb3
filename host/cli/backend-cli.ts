/**
 * `xenmesh backend`: the block backend for a real Xen host, in dom0 or a
 * driver domain, in place of the kernel's xen-blkback.
 */
import type { Command } from 'commander';
import { applyLogFormatOption, LOG_OPTIONS_USAGE, setLogDomain } from '../../shared/log.js';
import { Supervisor, DEFAULT_RESTART, STOP_TIMEOUT_MS } from '../../shared/mesh/supervisor.js';
import { SHUTDOWN_WAIT_MS } from '../../xenbus/bus.js';
import type { PlatformShared } from '../../shared/attach.js';
import { XenPlatform } from '../../shared/xen/platform.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import { DEFAULT_XENSTORED_PATH } from '../../xenstore/client/transport.js';
import { XENBUS_DEVICE_PATH } from '../../xenstore/client/device-transport.js';
import { AUTO_COPY_MAX_PAGES, type GrantAccess } from '../../blkback/io-pool.js';
import { IO_ENGINE_ENV } from '../../blkback/io-engine.js';
import type { BlkbackOptions } from '../../blkback/driver.js';
import type { IoEngineChoice } from '../../blkback/ring-messages.js';
import { DEFAULT_RING_THREADS } from '../../blkback/ring-threads.js';
import { serviceNotifier } from '../../shared/sd-notify.js';
import { METRICS_OPTION_USAGE, MetricsAddressError, parseMetricsAddress } from './metrics-address.js';
import type { MetricsServer } from './metrics.js';
import { BACKEND_ROLE_NAME, backendBlockStats, type BackendRoleConfig } from '../machine/backend-role.js';
import { workerModule } from '../machine/worker-modules.js';
import { runs, subcommand } from './command-line.js';

/** How the I/O workers reach a frontend's pages unless told otherwise. */
const DEFAULT_GRANT_ACCESS: GrantAccess = 'auto';

/** The hotplug script shipped for the disks this backend serves (scripts/ in the package). */
export const HOTPLUG_SCRIPT = 'block-xenmesh';

export const BACKEND_USAGE = `Usage: xenmesh backend [--xenstore PATH] [--domid N] [--grant-access map|copy|auto]
                       [--io-engine uring|pool|auto] [--ring-threads N]
                       [--on-stop close|keep] [--log-format json|text] [--metrics ADDR]

Serves the virtual block devices a Xen toolstack (xl, libxl) configures for
the domain this runs in: every backend/vbd/<frontend-domid>/<devid> under the
domain's home, as the kernel's xen-blkback would; that module must not be
loaded (it would claim the same devices). Runs in dom0 or a driver domain, in
the foreground, until SIGTERM or SIGINT; prints a line with "ready" once it
serves. A disk it serves is configured for xl as

  disk = [ 'format=raw, vdev=xvda, access=rw, backendtype=phy,
            script=/etc/xen/scripts/${HOTPLUG_SCRIPT}, target=/path/to/image' ]

with the target an image file or a block device, and the no-op hotplug
script from scripts/${HOTPLUG_SCRIPT} installed where the script= names it.

  --xenstore PATH   xenstored's socket, or the xenbus device (default:
                    $XENSTORED_PATH, else ${DEFAULT_XENSTORED_PATH} where this
                    domain runs xenstored, else ${XENBUS_DEVICE_PATH})
  --domid N         the domain this runs in (default: its xenstore key domid)
  --grant-access map|copy|auto
                    how the frontend's pages are reached: mapped and read or
                    written in place, copied through the hypervisor to a
                    buffer of the backend's, or copied for requests of up to
                    ${AUTO_COPY_MAX_PAGES} pages and mapped beyond (default ${DEFAULT_GRANT_ACCESS}; see BENCHMARKS.md)
  --io-engine uring|pool|auto
                    how the ring threads do their disk I/O: io_uring, or a
                    pool of threads in blocking calls; auto (the default,
                    or $${IO_ENGINE_ENV}) takes io_uring where the kernel
                    allows it and logs why not where it does not
  --ring-threads N  threads serving the rings (default: one per core, up
                    to ${DEFAULT_RING_THREADS} here)
  --on-stop close|keep
                    what the devices' states say once SIGTERM or SIGINT has
                    stopped it (what is in flight is answered, every image
                    flushed and closed either way): close publishes Closing,
                    waits a moment for each frontend to follow, then Closed,
                    so that guests see their disks go rather than hang, as a
                    driver domain's kernel does when its domain shuts down;
                    keep leaves them to the toolstack or a successor, as
                    dom0's backend is restarted under running guests.
                    Default: close in a driver domain, keep in dom0
${LOG_OPTIONS_USAGE}
${METRICS_OPTION_USAGE}`;

/** The options `xenmesh backend` takes, as commander parsed them. */
export interface BackendOptions {
  xenstore?: string;
  domid?: string;
  grantAccess?: string;
  ioEngine?: string;
  ringThreads?: string;
  onStop?: string;
  logFormat?: string;
  metrics?: string;
}

/** `xenmesh backend`: its options, each one .option() line. */
export function backendCommand(): Command {
  const command = subcommand('backend', BACKEND_USAGE)
    .option('--xenstore <path>')
    .option('--domid <n>')
    .option('--grant-access <map|copy|auto>')
    .option('--io-engine <uring|pool|auto>')
    .option('--ring-threads <n>')
    .option('--on-stop <close|keep>')
    .option('--log-format <json|text>')
    .option('--metrics <addr>');
  return runs(command, (values: BackendOptions) => runBackend(values));
}

export async function runBackend(values: BackendOptions): Promise<number> {
  const fail = (message: string) => {
    process.stderr.write(`xenmesh backend: ${message}\n`);
    return 1;
  };
  const logFormatProblem = applyLogFormatOption(values.logFormat);
  if (logFormatProblem) return fail(logFormatProblem);
  if (values.domid !== undefined && !/^\d+$/.test(values.domid)) return fail(`--domid must be a domain number, not '${values.domid}'`);
  const grantAccess = values.grantAccess ?? DEFAULT_GRANT_ACCESS;
  if (grantAccess !== 'map' && grantAccess !== 'copy' && grantAccess !== 'auto') {
    return fail(`--grant-access is map, copy or auto, not '${grantAccess}'`);
  }
  const ioEngine = values.ioEngine;
  if (ioEngine !== undefined && ioEngine !== 'uring' && ioEngine !== 'pool' && ioEngine !== 'auto') {
    return fail(`--io-engine is uring, pool or auto, not '${ioEngine}'`);
  }
  const ringThreadsArg = values.ringThreads;
  if (ringThreadsArg !== undefined && !/^[1-9]\d{0,2}$/.test(ringThreadsArg)) return fail(`--ring-threads must be a positive number of threads, not '${ringThreadsArg}'`);

  const onStop = values.onStop;
  if (onStop !== undefined && onStop !== 'close' && onStop !== 'keep') return fail(`--on-stop is close or keep, not '${onStop}'`);

  let metricsAddress;
  try {
    metricsAddress = values.metrics === undefined ? undefined : parseMetricsAddress(values.metrics);
  } catch (err) {
    if (!(err instanceof MetricsAddressError)) throw err;
    return fail(err.message);
  }

  let domid: number;
  try {
    domid = values.domid !== undefined ? Number(values.domid) : await ownDomid(values.xenstore);
  } catch (err) {
    return fail((err as Error).message);
  }
  setLogDomain({ domid });
  let platform: XenPlatform;
  try {
    platform = XenPlatform.open(domid);
  } catch (err) {
    return fail((err as Error).message);
  }

  const notifier = serviceNotifier();
  const supervisor = new Supervisor();
  let metrics: MetricsServer | undefined;
  if (metricsAddress) {
    try {
      const { createMetricsRegistry, serveMetrics } = await import('./metrics.js');
      metrics = await serveMetrics(metricsAddress, createMetricsRegistry({ workers: () => supervisor.status(), blockStats: () => backendBlockStats(supervisor).catch(() => []) }));
    } catch (err) {
      return fail((err as Error).message);
    }
    process.stdout.write(`xenmesh backend: serving metrics at ${metrics.url}\n`);
  }
  const blkback: BlkbackOptions = {
    grantAccess: grantAccess as GrantAccess,
    ...(ioEngine !== undefined ? { ioEngine: ioEngine as IoEngineChoice } : {}),
    ...(ringThreadsArg !== undefined ? { ringThreads: Number(ringThreadsArg) } : {}),
  };
  const config: BackendRoleConfig = { domid, xenstore: values.xenstore, blkback, closeOnStop: (onStop ?? (domid === 0 ? 'keep' : 'close')) === 'close' };
  try {
    await supervisor.start({
      name: BACKEND_ROLE_NAME,
      domid,
      module: workerModule('backend-worker'),
      config,
      shared: { link: platform.link } satisfies PlatformShared,
      restart: DEFAULT_RESTART,
      // Closing its devices, it gives each frontend SHUTDOWN_WAIT_MS to follow, on top of flushing and closing.
      ...(config.closeOnStop ? { stopTimeoutMs: STOP_TIMEOUT_MS + SHUTDOWN_WAIT_MS } : {}),
    });
  } catch (err) {
    await supervisor.stopAll('failed to start');
    await metrics?.close();
    return fail((err as Error).message);
  }
  const info = supervisor.status()[0]?.info as { root?: string } | undefined;
  const serving = `serving ${info?.root ?? 'backend'}/vbd of domain ${domid} (grant ${grantAccess})`;
  process.stdout.write(`xenmesh backend: ready: ${serving}\n`);
  notifier.ready(serving);

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      process.stdout.write(`xenmesh backend: ${signal}: answering what is in flight and closing the images${config.closeOnStop ? ', then the devices' : ''}\n`);
      notifier.stopping(`${signal}: answering what is in flight and closing the images`);
      void supervisor
        .stopAll(signal)
        .finally(() => metrics?.close())
        .then(() => resolve(0), () => resolve(1));
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

/** The domain this process runs in, as the toolstack wrote it in the domain's home (`domid`). */
async function ownDomid(where: string | undefined): Promise<number> {
  let xs: XenStoreClient;
  try {
    xs = await XenStoreClient.open(where);
  } catch (err) {
    throw new Error(`cannot reach xenstored${where ? ` at ${where}` : ''}: ${(err as Error).message}`);
  }
  try {
    const text = await xs.readString('domid');
    if (!/^\d+$/.test(text)) throw new Error(`this domain's xenstore key domid is '${text}', not a number; pass --domid`);
    return Number(text);
  } catch (err) {
    throw new Error(`cannot tell which domain this is (${(err as Error).message}); pass --domid`);
  } finally {
    xs.close();
  }
}
