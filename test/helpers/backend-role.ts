/**
 * An embedded host with a domain whose backends the backend role
 * (`xenmesh backend`) serves from a worker of its own, as the process does
 * in a driver domain on Xen: a domain with no kernel of ours. Logs are
 * silenced; everything goes at the test's end.
 */
import type { Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Host } from '../../host/machine/host.js';
import type { BackendRoleConfig } from '../../host/machine/backend-role.js';
import { workerModule } from '../../host/machine/worker-modules.js';
import { DEFAULT_RESTART, Supervisor } from '../../shared/mesh/supervisor.js';
import type { PlatformShared } from '../../shared/attach.js';
import { setLogSink } from '../../shared/log.js';
import { DISK_KERNEL } from './disk-jobs.js';

export interface BackendRoleOptions {
  /** Whether the role closes its devices when stopped (`--on-stop close`). */
  closeOnStop?: boolean;
  /** How long the supervisor gives it to stop. */
  stopTimeoutMs?: number;
}

export async function hostWithBackendRole(t: Test, options: BackendRoleOptions = {}) {
  setLogSink(() => {});
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-backend-role-'));
  const socket = join(dir, 'socket');
  const host = new Host({ socket, frames: 32768, kernelModule: DISK_KERNEL });
  const supervisor = new Supervisor();
  t.teardown(async () => {
    await supervisor.stopAll();
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const backend = await host.toolstack.createDomain({ name: 'backend', pages: 2048 });
  const config: BackendRoleConfig = { domid: backend.domid, xenstore: socket, blkback: {}, ...(options.closeOnStop !== undefined ? { closeOnStop: options.closeOnStop } : {}) };
  await supervisor.start({
    name: 'backend',
    domid: backend.domid,
    module: workerModule('backend-worker'),
    config,
    shared: { link: host.platform.link } satisfies PlatformShared,
    restart: DEFAULT_RESTART,
    ...(options.stopTimeoutMs !== undefined ? { stopTimeoutMs: options.stopTimeoutMs } : {}),
  });
  return { host, supervisor, backend };
}
