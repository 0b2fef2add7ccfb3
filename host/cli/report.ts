import { isXsError } from '../../shared/errors.js';
import type { DomainInfo } from '../../shared/platform.js';
import { latencyPercentileUs, type VbdStatsReport } from '../../shared/vbd-stats.js';
import type { XenStoreClient } from '../../xenstore/client/client.js';
import { readStateAt } from '../../xenbus/read.js';
import { stateName } from '../../xenbus/state.js';
import type { Host } from '../machine/host.js';
import { devicePaths, vdevName, type DeviceSpec } from '../toolstack/devices.js';
import { renderTable } from './tables.js';

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

/**
 * One line per domain: the hypervisor's state, its kernel worker, its
 * xenstore connection; and for each suspended domain, the devices held for
 * it until it resumes.
 */
export async function formatStatus(host: Host): Promise<string> {
  const workers = host.workers();
  const xenstored = workers.find((w) => w.name === 'xenstored');
  const connections = (xenstored?.state === 'ready' ? await host.supervisor.health('xenstored').catch(() => undefined) : undefined)?.detail ?? {};
  const rows: string[][] = [];
  const held: string[] = [];
  for (const info of host.platform.listDomains()) {
    const worker = info.domid === 0 ? xenstored : workers.find((w) => w.domid === info.domid && w.name.startsWith('kernel:'));
    const xs = info.domid === 0 ? describeSocketClients(connections['sockets']) : String(connections[`d${info.domid}`] ?? 'not introduced');
    rows.push([String(info.domid), info.name, stateWord(info), worker ? `${worker.name} ${worker.state}` : '-', String(worker?.restarts ?? 0), xs]);
    const devices = host.devicesOf(info.domid);
    if (devices.held) held.push(`${info.name} (${info.domid}) is suspended, holding ${describeDevices(devices.devices)} until it resumes`);
  }
  return [renderTable(['domid', 'name', 'state', 'worker', 'restarts', 'xenstore'], rows), ...held].join('\n');
}

/** dom0's xenstore column: how many clients xenstored's Unix socket serves. */
function describeSocketClients(count: unknown): string {
  if (typeof count !== 'number') return 'serving socket clients';
  return `serving ${count} socket client${count === 1 ? '' : 's'}`;
}

/** A domain's state in a word: a domain shut down to suspend is suspended, not gone. */
export function stateWord(info: Pick<DomainInfo, 'state' | 'shutdownReason'>): string {
  if (info.state !== 'shutdown') return info.state;
  return info.shutdownReason === 'suspend' ? 'suspended' : info.shutdownReason === 'crash' ? 'crashed' : 'shutdown';
}

/**
 * A domain's state as xl list shows it: one letter in each of six places,
 * r(unning), b(locked), p(aused), s(hutdown), c(rashed), d(ying). The
 * embedded hypervisor does not tell a running domain from a blocked one,
 * so a domain that is scheduled shows r.
 */
export function stateLetters(info: Pick<DomainInfo, 'state' | 'shutdownReason'>): string {
  const flags = [
    info.state === 'running',
    false,
    info.state === 'paused',
    info.state === 'shutdown',
    info.state === 'shutdown' && info.shutdownReason === 'crash',
    info.state === 'dying' || info.state === 'dead',
  ];
  return flags.map((set, i) => (set ? 'rbpscd'[i] : '-')).join('');
}

/** Devices as a user names them: a disk by its vdev, anything else by its class and number. */
export function describeDevices(devices: readonly DeviceSpec[]): string {
  if (devices.length === 0) return 'no devices';
  return devices.map((d) => (d.kind === 'vbd' ? `vbd ${vdevName(d.devid)}` : `${d.kind} ${d.devid}`)).join(', ');
}

/** xl list: each domain's name, domid, memory, state, and the devices it uses (or that are held for it). */
export function formatList(host: Host): string {
  const rows = host.platform
    .listDomains()
    .filter((info) => info.state !== 'dead')
    .map((info) => {
      const { devices, held } = host.devicesOf(info.domid);
      const mib = (info.pages * PAGE_BYTES) / MIB;
      return [info.name, String(info.domid), String(Math.round(mib)), `${stateLetters(info)} ${stateWord(info)}`, `${held ? 'held: ' : ''}${describeDevices(devices)}`];
    });
  return renderTable(['Name', 'ID', 'Mem(MiB)', 'State', 'Devices'], rows);
}

const PAGE_BYTES = 4096;
const MIB = 1024 * 1024;

/**
 * One line per split device, as the toolstack sees it in xenstore: which
 * domains it joins, and the state of each end.
 */
export async function formatDevices(xs: XenStoreClient): Promise<string> {
  const rows: string[][] = [];
  const list = (path: string) => xs.directory(path).catch(() => [] as string[]);
  const names = new Map<string, string>();
  // A domain as the other commands name it; its xenstore paths are there for `tree`.
  const domainLabel = async (domid: string) => {
    if (!names.has(domid)) names.set(domid, (await xs.tryRead(`/local/domain/${domid}/name`)) ?? '?');
    return `${names.get(domid)} (${domid})`;
  };
  for (const backendDomid of await list('/local/domain')) {
    const root = `/local/domain/${backendDomid}/backend`;
    for (const kind of await list(root)) {
      for (const frontendDomid of await list(`${root}/${kind}`)) {
        for (const devid of await list(`${root}/${kind}/${frontendDomid}`)) {
          const backend = `${root}/${kind}/${frontendDomid}/${devid}`;
          const frontend = (await xs.tryRead(`${backend}/frontend`)) ?? '?';
          const id = kind === 'vbd' && /^\d+$/.test(devid) ? vdevName(Number(devid)) : devid;
          rows.push([
            `${kind} ${id}`,
            await domainLabel(frontendDomid),
            stateName(await readStateAt(xs, `${frontend}/state`)),
            await domainLabel(backendDomid),
            stateName(await readStateAt(xs, `${backend}/state`)),
            (await xs.tryRead(`${backend}/hotplug-status`)) ?? '-',
          ]);
        }
      }
    }
  }
  if (rows.length === 0) return 'no devices';
  return renderTable(['device', 'frontend', 'state', 'backend', 'state', 'hotplug'], rows);
}

/** What block-list reads of one disk from xenstore. */
interface DiskView {
  readonly spec: DeviceSpec;
  readonly held: boolean;
}

/**
 * xl block-list, and more: each disk of `domid` (or of every domain) with
 * its image and mode, both ends' states, its rings, what the two ends
 * negotiated, and blkback's counters for it (`-` where there are none).
 */
export async function formatBlockList(host: Host, domid: number | undefined, stats: readonly VbdStatsReport[] | undefined): Promise<string> {
  const xs = host.xenstore;
  const disks: DiskView[] = [];
  for (const info of host.platform.listDomains()) {
    if (domid !== undefined && info.domid !== domid) continue;
    const { devices, held } = host.devicesOf(info.domid);
    for (const spec of devices) if (spec.kind === 'vbd') disks.push({ spec, held });
  }
  if (disks.length === 0) return domid === undefined ? 'no disks' : `domain ${domid} has no disks`;
  const rows: string[][] = [];
  for (const { spec, held } of disks) {
    const paths = devicePaths(spec);
    const front = async (key: string) => xs.tryRead(`${paths.frontend}/${key}`);
    const back = async (key: string) => (held ? undefined : xs.tryRead(`${paths.backend}/${key}`));
    const params = spec.backend?.['params'] ?? (await back('params')) ?? '?';
    const image = params.replace(/^raw:/, '');
    const mode = (spec.backend?.['mode'] ?? (await back('mode'))) === 'r' ? 'ro' : 'rw';
    const frontState = stateName(await readStateAt(xs, `${paths.frontend}/state`));
    const backState = held ? 'held' : stateName(await readStateAt(xs, `${paths.backend}/state`));
    const queues = Number((await front('multi-queue-num-queues')) ?? 1);
    const pageOrder = Number((await front('ring-page-order')) ?? 0);
    const features: string[] = [];
    if ((await front('feature-persistent')) === '1' && (await back('feature-persistent')) === '1') features.push('persistent');
    const indirect = await back('feature-max-indirect-segments');
    if (indirect !== undefined && indirect !== '0') features.push(`indirect ${indirect}`);
    if ((await back('feature-flush-cache')) === '1') features.push('flush');
    if ((await back('feature-barrier')) === '1') features.push('barrier');
    if ((await back('feature-discard')) === '1') features.push('discard');
    const counters = stats?.find((s) => s.frontendDomid === spec.frontendDomid && s.backendDomid === spec.backendDomid && s.devid === spec.devid)?.counters;
    rows.push([
      `${spec.frontendDomid} ${vdevName(spec.devid)} ${mode}\nbe ${spec.backendDomid}`,
      image,
      `fe ${frontState}\nbe ${backState}`,
      [`${queues} x ${2 ** pageOrder} page${2 ** pageOrder === 1 ? '' : 's'}`, ...(features.length > 0 ? features : ['-'])].join('\n'),
      formatCounters(counters),
    ]);
  }
  return renderTable(['Disk', 'Image', 'States', 'Rings', 'I/O'], rows);
}

/** blkback's counters for a disk, in four short lines (requests, bytes, errors and in flight, latency); `-` for each it does not report. */
function formatCounters(counters: VbdStatsReport['counters'] | undefined): string {
  if (!counters) return 'req -\nr - w -\nerr - infl -\np50 - p99 -';
  const requests = counters.readRequests + counters.writeRequests + counters.flushRequests + counters.discardRequests;
  const p50 = latencyPercentileUs(counters, 0.5);
  const p99 = latencyPercentileUs(counters, 0.99);
  return [
    `req ${requests} (r ${counters.readRequests} w ${counters.writeRequests})`,
    // Bytes read and written, told from the requests above by their units.
    `r ${formatBytes(counters.bytesRead)} w ${formatBytes(counters.bytesWritten)}`,
    `err ${counters.errors} infl ${counters.inFlight}`,
    `p50 ${formatMicros(p50)} p99 ${formatMicros(p99)}`,
  ].join('\n');
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value}B` : `${value.toFixed(1)}${units[unit]}`;
}

function formatMicros(us: number | undefined): string {
  if (us === undefined) return '-';
  if (!Number.isFinite(us)) return '>10s';
  return us >= 1000 ? `${us / 1000}ms` : `${us}us`;
}
