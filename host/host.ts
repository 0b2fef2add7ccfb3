import { EmbeddedPlatform, DEFAULT_MACHINE_FRAMES } from '../shared/embedded/platform.js';
import { createLogger } from '../shared/log.js';
import { DEFAULT_RESTART, Supervisor, type WorkerStatus } from '../shared/mesh/supervisor.js';
import { XenStoreClient } from '../xenstore/client/client.js';
import type { DevicePaths, DeviceSpec, UnplugOptions, UnplugResult } from './devices.js';
import type { StartInfo } from './domain-builder.js';
import type { KernelDrivers, KernelRoleConfig } from './kernel.js';
import type { PlatformShared } from '../shared/attach.js';
import { Toolstack, type DomainConfig } from './toolstack.js';
import { XENSTORED_RESTART, type XenstoredRoleConfig } from './xenstored-role.js';

const log = createLogger('host');

/** dom0's memory: 1 MiB is plenty for xenstored's own pages. */
const DOM0_PAGES = 256;

export interface HostOptions {
  /** Where dom0's xenstored listens for tools (xenstore-utils, the toolstack). */
  socket: string;
  /** Machine memory in pages. */
  frames?: number;
  traceFile?: string;
  /** The module that runs a domain's kernel (tests substitute one that can be told to crash). */
  kernelModule?: URL;
}

const workerModule = (name: string) => new URL(`./workers/${name}.js`, import.meta.url);

/**
 * An embedded Xen host: the hypervisor in shared memory, dom0 with
 * xenstored in a worker, and domains whose kernels each run in a worker of
 * their own, all under one supervisor.
 */
export class Host {
  readonly platform: EmbeddedPlatform;
  readonly supervisor = new Supervisor();
  private xs: XenStoreClient | undefined;
  private toolstackImpl: Toolstack | undefined;
  readonly domains = new Map<number, StartInfo>();

  constructor(readonly options: HostOptions) {
    this.platform = EmbeddedPlatform.create(options.frames ?? DEFAULT_MACHINE_FRAMES);
    // A worker that dies leaves its event channel handles behind; the
    // machine takes them back so that its successor can bind the ports.
    this.supervisor.on('exit', (_name, threadId) => this.platform.reclaimWorker(threadId));
  }

  get toolstack(): Toolstack {
    if (!this.toolstackImpl) throw new Error('the host is not booted');
    return this.toolstackImpl;
  }

  /** A xenstore client for the toolstack's own use (dom0, over the socket). */
  get xenstore(): XenStoreClient {
    if (!this.xs) throw new Error('the host is not booted');
    return this.xs;
  }

  /** Creates dom0 and starts xenstored in it. */
  async boot(): Promise<void> {
    this.platform.createDomain({ domid: 0, name: 'Domain-0', pages: DOM0_PAGES });
    this.platform.unpauseDomain(0);
    await this.startXenstored(false);
    // What xen-init-dom0 writes once xenstored runs.
    await this.xenstore.write('/local/domain/0/domid', '0');
    await this.xenstore.write('/local/domain/0/name', 'Domain-0');
    this.toolstackImpl = new Toolstack(this.platform, () => this.xenstore);
  }

  /**
   * Replaces xenstored with a new one that takes over its store and
   * domains, as a live update would; the domains' kernels see their
   * connections reset, start them over and set their watches again.
   */
  async restartXenstored(): Promise<void> {
    this.xs?.close();
    this.xs = undefined;
    await this.supervisor.stop('xenstored', XENSTORED_RESTART);
    await this.startXenstored(true);
  }

  private async startXenstored(restore: boolean): Promise<void> {
    const config: XenstoredRoleConfig = {
      socket: this.options.socket,
      traceFile: this.options.traceFile,
      stateFile: `${this.options.socket}.state`,
      restore,
    };
    await this.supervisor.start({
      name: 'xenstored',
      domid: 0,
      module: workerModule('xenstored-worker'),
      config,
      shared: { link: this.platform.link } satisfies PlatformShared,
      // The store lives in the daemon: a xenstored that died cannot be
      // replaced without losing it, as on Xen without live update. Only a
      // planned restart hands the store over.
      restart: { kind: 'never' },
    });
    this.xs = await XenStoreClient.connect(this.options.socket);
  }

  /**
   * Creates a domain the way a toolstack does and starts its kernel in a
   * worker, with the bus drivers it loads.
   */
  async startDomain(config: DomainConfig, drivers: KernelDrivers = {}): Promise<StartInfo> {
    const start = await this.toolstack.createDomain(config);
    this.domains.set(start.domid, start);
    const kernel: KernelRoleConfig = { start, ...drivers };
    await this.supervisor.start({
      name: `kernel:${config.name}`,
      domid: start.domid,
      module: this.options.kernelModule ?? workerModule('kernel-worker'),
      config: kernel,
      shared: { link: this.platform.link } satisfies PlatformShared,
      restart: DEFAULT_RESTART,
    });
    return start;
  }

  /** Stops a domain's kernel and destroys the domain. */
  async destroyDomain(domid: number): Promise<void> {
    const start = this.domains.get(domid);
    if (start) await this.supervisor.stop(`kernel:${start.name}`, 'domain destroyed');
    await this.toolstack.destroyDomain(domid);
    this.domains.delete(domid);
  }

  /** Plugs a split device between two running domains, as libxl does. */
  plugDevice(spec: DeviceSpec): Promise<DevicePaths> {
    return this.toolstack.plugDevice(spec);
  }

  /** Unplugs a split device, as libxl does. */
  unplugDevice(spec: DeviceSpec, options?: UnplugOptions): Promise<UnplugResult> {
    return this.toolstack.unplugDevice(spec, options);
  }

  workers(): WorkerStatus[] {
    return this.supervisor.status();
  }

  /** Everything, in the reverse of the order it started. */
  async shutdown(): Promise<void> {
    for (const domid of [...this.domains.keys()].reverse()) {
      await this.destroyDomain(domid).catch((err: Error) => log.warn(`destroying domain ${domid}: ${err.message}`));
    }
    this.xs?.close();
    await this.supervisor.stopAll();
  }
}
