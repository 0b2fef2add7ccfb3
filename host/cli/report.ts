import { isXsError } from '../../shared/errors.js';
import type { XenStoreClient } from '../../xenstore/client/client.js';
import { readStateAt } from '../../xenbus/read.js';
import { stateName } from '../../xenbus/state.js';
import type { Host } from '../machine/host.js';

/** A subtree as `xenstore-ls -p` shows it: indented names, values and permissions. */
export async function formatTree(xs: XenStoreClient, path: string): Promise<string> {
  const lines: string[] = [];
  const walk = async (at: string, depth: number): Promise<void> => {
    for (const child of await xs.directory(at).catch(() => [] as string[])) {
      const full = at === '/' ? `/${child}` : `${at}/${child}`;
      const value = await xs.tryRead(full);
      const perms = (await xs.getPermissions(full).catch(() => []))
        .map((p) => `${{ none: 'n', read: 'r', write: 'w', both: 'b' }[p.access]}${p.domid}`)
        .join(',');
      lines.push(`${' '.repeat(depth)}${child} = ${JSON.stringify(value ?? '')}  (${perms})`);
      await walk(full, depth + 1);
    }
  };
  await walk(path, 1);
  return [path, ...lines].join('\n');
}

/**
 * The tree under `path` for the prompt's `tree`: a path that names no
 * node, or that xenstore refuses, is an error naming it and xenstore's
 * errno, not an empty tree.
 */
export async function formatTreeAt(xs: XenStoreClient, path: string): Promise<string> {
  try {
    await xs.read(path);
  } catch (err) {
    if (isXsError(err, 'ENOENT')) throw new Error(`no such node: ${path} (ENOENT)`);
    if (isXsError(err)) throw new Error(`cannot read ${path}: ${err.message}`);
    throw err;
  }
  return formatTree(xs, path);
}

/** One line per domain: the hypervisor's state, its kernel worker, its xenstore connection. */
export async function formatStatus(host: Host): Promise<string> {
  const workers = host.workers();
  const xenstored = workers.find((w) => w.name === 'xenstored');
  const connections = (xenstored?.state === 'ready' ? await host.supervisor.health('xenstored').catch(() => undefined) : undefined)?.detail ?? {};
  const rows = [['domid', 'name', 'state', 'worker', 'restarts', 'xenstore']];
  for (const info of host.platform.listDomains()) {
    const worker = info.domid === 0 ? xenstored : workers.find((w) => w.domid === info.domid && w.name.startsWith('kernel:'));
    const xs = info.domid === 0 ? `serving ${connections['sockets'] ?? '?'} socket clients` : String(connections[`d${info.domid}`] ?? 'not introduced');
    rows.push([String(info.domid), info.name, info.state, worker ? `${worker.name} ${worker.state}` : '-', String(worker?.restarts ?? 0), xs]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

/**
 * One line per split device, as the toolstack sees it in xenstore: which
 * domains it joins, and the state of each end.
 */
export async function formatDevices(xs: XenStoreClient): Promise<string> {
  const rows = [['device', 'frontend', 'state', 'backend', 'state', 'hotplug']];
  const list = (path: string) => xs.directory(path).catch(() => [] as string[]);
  for (const backendDomid of await list('/local/domain')) {
    const root = `/local/domain/${backendDomid}/backend`;
    for (const kind of await list(root)) {
      for (const frontendDomid of await list(`${root}/${kind}`)) {
        for (const devid of await list(`${root}/${kind}/${frontendDomid}`)) {
          const backend = `${root}/${kind}/${frontendDomid}/${devid}`;
          const frontend = (await xs.tryRead(`${backend}/frontend`)) ?? '?';
          rows.push([
            `${kind} ${devid}`,
            frontend,
            stateName(await readStateAt(xs, `${frontend}/state`)),
            backend,
            stateName(await readStateAt(xs, `${backend}/state`)),
            (await xs.tryRead(`${backend}/hotplug-status`)) ?? '-',
          ]);
        }
      }
    }
  }
  if (rows.length === 1) return 'no devices';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}
