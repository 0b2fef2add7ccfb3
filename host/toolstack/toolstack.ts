import { randomUUID } from 'node:crypto';
import { PAGE_SIZE, type Platform } from '../../shared/platform.js';
import type { PermissionEntry, XenStoreClient } from '../../xenstore/client/client.js';
import { quotasForVbds, quotasProblem, setDomainQuotas, type XenstoreQuotas } from './device-quotas.js';
import { checkDiskImages } from './disk-check.js';
import { UNTIL_COMMITTED, devicesOf, plugDevice, unplugDevice, type DevicePaths, type DeviceSpec, type UnplugOptions, type UnplugResult } from './devices.js';
import { buildDomain, type StartInfo } from './domain-builder.js';

/**
 * The first domid Xen reserves for itself (DOMID_FIRST_RESERVED,
 * xen/include/public/xen.h): domains are numbered below it.
 */
export const DOMID_FIRST_RESERVED = 0x7ff0;

export interface DomainConfig {
  name: string;
  /** Memory in 4 KiB pages. */
  pages: number;
  domid?: number;
  /**
   * The vbds it serves (a driver domain) or uses, which its xenstore
   * quotas are raised for (quotasForVbds); C xenstored's defaults if absent.
   */
  vbds?: number;
  /** Xenstore quotas of its own, as an operator sets them; they win over what `vbds` gives. */
  xenstoreQuotas?: XenstoreQuotas;
  /** xl.cfg max_maptrack_frames: the grant mappings it may hold, in frames of 256. */
  maxMaptrackFrames?: number;
}

/**
 * The toolstack's part of creating and destroying domains, done the way
 * libxl does it: build the domain in the hypervisor, lay out its xenstore
 * home (docs/misc/xenstore-paths) with the permissions libxl gives each
 * node, INTRODUCE it to xenstored, and let it run. It talks to xenstored
 * as any dom0 tool does, over the Unix socket.
 */
export class Toolstack {
  private readonly vmPaths = new Map<number, string>();
  /** The domid last handed out: the next domain gets the next free one after it. */
  private lastDomid = 0;

  constructor(
    private readonly platform: Platform,
    /** dom0's current connection to xenstored (a new one after xenstored restarts). */
    private readonly client: () => XenStoreClient,
    private readonly storeDomid = 0,
  ) {}

  private get xs(): XenStoreClient {
    return this.client();
  }

  /**
   * Plugs a split device (see plugDevice); a disk whose image cannot be
   * served is refused first, with a DiskRefused that says why, and nothing
   * is written.
   */
  async plugDevice(spec: DeviceSpec): Promise<DevicePaths> {
    await checkDiskImages([spec]);
    return plugDevice(this.xs, spec);
  }

  /** Unplugs a split device (see unplugDevice). */
  unplugDevice(spec: DeviceSpec, options?: UnplugOptions): Promise<UnplugResult> {
    return unplugDevice(this.xs, spec, options);
  }

  async createDomain(config: DomainConfig): Promise<StartInfo> {
    const quotas = { ...(config.vbds === undefined ? {} : quotasForVbds(config.vbds)), ...config.xenstoreQuotas };
    const problem = quotasProblem(quotas);
    if (problem) throw new Error(`domain ${config.name}: ${problem}`);
    const domid = config.domid ?? this.nextDomid();
    const spec = { name: config.name, pages: config.pages, domid, maxMaptrackFrames: config.maxMaptrackFrames };
    const start = buildDomain(this.platform, spec, this.storeDomid);
    try {
      await this.writeHome(start, config);
      // Before it is introduced, so that the domain never runs against the defaults.
      await setDomainQuotas(this.xs, start.domid, quotas);
      await this.xs.introduce(start.domid, start.storePfn, start.storePort);
    } catch (err) {
      this.platform.destroyDomain(start.domid);
      throw err;
    }
    this.platform.unpauseDomain(start.domid);
    return start;
  }

  /**
   * The domid for a new domain, as Xen's XEN_DOMCTL_createdomain picks it:
   * the next free one after the last it handed out, wrapping below
   * DOMID_FIRST_RESERVED back to 1. A domain created again (a reboot) thus
   * gets a new domid, never the one of the domain just destroyed, whose
   * traces (a late watch event, a backend still closing) could be taken
   * for the new domain's.
   */
  private nextDomid(): number {
    const span = DOMID_FIRST_RESERVED - 1;
    for (let step = 1; step <= span; step++) {
      const domid = ((this.lastDomid - 1 + step) % span) + 1;
      if (!this.platform.domainInfo(domid)) {
        this.lastDomid = domid;
        return domid;
      }
    }
    throw new Error(`no free domid: every one below ${DOMID_FIRST_RESERVED} is in use`);
  }

  /**
   * Destroys a domain and removes what the toolstack wrote for it, as libxl
   * does: its devices are removed by force (the frontend first, then the
   * backend once it has let go), and its home and VM record go.
   */
  async destroyDomain(domid: number): Promise<void> {
    if (this.platform.domainInfo(domid)) this.platform.destroyDomain(domid);
    for (const device of await devicesOf(this.xs, domid)) {
      await unplugDevice(this.xs, device, { force: true }).catch(() => {});
    }
    await this.xs.rm(`/local/domain/${domid}`).catch(() => {});
    const vm = this.vmPaths.get(domid);
    if (vm) await this.xs.rm(vm).catch(() => {});
    this.vmPaths.delete(domid);
  }

  /**
   * The domain's home, as libxl__domain_make() and libxl__build_post()
   * write it: the home and control directory readable by the domain, the
   * directories it fills in (device, data, ...) owned by it, and the store
   * ring's page and port.
   */
  private async writeHome(start: StartInfo, config: DomainConfig): Promise<void> {
    const { domid } = start;
    const home = `/local/domain/${domid}`;
    const vm = `/vm/${randomUUID()}`;
    this.vmPaths.set(domid, vm);
    const readOnly: PermissionEntry[] = [
      { domid: this.storeDomid, access: 'none' },
      { domid, access: 'read' },
    ];
    const writable: PermissionEntry[] = [{ domid, access: 'none' }];
    const memoryKiB = String((config.pages * PAGE_SIZE) / 1024);
    await this.xs.transaction(async (tx) => {
      const node = async (path: string, value: string, perms: PermissionEntry[]) => {
        await this.xs.write(path, value, { tx });
        await this.xs.setPermissions(path, perms, { tx });
      };
      await this.xs.rm(home, { tx }).catch(() => {});
      await node(home, '', readOnly);
      await node(vm, '', readOnly);
      await node(`${vm}/uuid`, vm.slice('/vm/'.length), readOnly);
      await node(`${vm}/name`, config.name, readOnly);
      await node(`${home}/vm`, vm, readOnly);
      await node(`${home}/name`, config.name, readOnly);
      await node(`${home}/domid`, String(domid), readOnly);
      await node(`${home}/memory`, '', readOnly);
      await node(`${home}/memory/static-max`, memoryKiB, readOnly);
      await node(`${home}/memory/target`, memoryKiB, readOnly);
      await node(`${home}/cpu`, '', readOnly);
      await node(`${home}/cpu/0`, '', readOnly);
      await node(`${home}/cpu/0/availability`, 'online', readOnly);
      await node(`${home}/control`, '', readOnly);
      for (const key of ['shutdown', 'feature-poweroff', 'feature-reboot', 'feature-suspend', 'sysrq']) {
        await node(`${home}/control/${key}`, '', writable);
      }
      await node(`${home}/control/platform-feature-multiprocessor-suspend`, '1', readOnly);
      await node(`${home}/control/platform-feature-xs_reset_watches`, '1', readOnly);
      for (const dir of ['device', 'data', 'drivers', 'feature', 'attr', 'error']) await node(`${home}/${dir}`, '', writable);
      await node(`${home}/store`, '', readOnly);
      await node(`${home}/store/port`, String(start.storePort), readOnly);
      await node(`${home}/store/ring-ref`, String(start.storePfn), readOnly);
      // Domains created at once all add to /local/domain and /vm: with hundreds of them
      // a bounded number of attempts ran out, where libxl retries until it commits.
    }, UNTIL_COMMITTED);
  }
}
