import { EventEmitter } from 'node:events';
import { rmSync } from 'node:fs';
import { DEFAULT_ACTION_TIMEOUT_MS, DomainActionError, type DomainAction, type DomainActionOptions } from '../control/actions.js';
import type { ShutdownRequest } from '../control/protocol.js';
import { requireControl, whyNotDone, writeShutdownRequest, writeSysrq } from '../control/toolstack.js';
import { VIRQ_DOM_EXC, type EventChannels, type ShutdownReasonName } from '../shared/platform.js';
import { waitForState } from '../xenbus/read.js';
import { XenbusState } from '../xenbus/state.js';
import { attachBackend, detachBackend, devicePaths } from './devices.js';
import { checkDiskImages, DiskRefused } from './disk-check.js';
import { EmbeddedPlatform, DEFAULT_MACHINE_FRAMES } from '../shared/embedded/platform.js';
import { createLogger } from '../shared/log.js';
import { DEFAULT_RESTART, Supervisor, type RestartPolicy, type WorkerStatus } from '../shared/mesh/supervisor.js';
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
  /**
   * Where xenstored journals its commits, so that the supervisor can restart
   * it after a crash with its store (default `<socket>.journal`, next to its
   * socket and its saved state). Emptied when the host boots.
   */
  journalDir?: string;
  /** How the supervisor restarts a xenstored that crashed (default DEFAULT_RESTART). */
  xenstoredRestart?: RestartPolicy;
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
  /** What each domain was created with and the devices it uses as a frontend: what a reboot creates again. */
  private readonly records = new Map<number, DomainRecord>();
  /**
   * What becomes of domains, as xl's domain-death handling sees it:
   * `shutdown` (domid, reason), `saved` (domid: suspended, its backends
   * released), `destroyed` (domid, reason if it shut down), `rebooted`
   * (old domid, new domid), `rebootFailed` (old domid, why it was not
   * created again).
   */
  readonly lifecycle = new EventEmitter();
  /** Domains that shut down and are being dealt with (or, suspended, are held). */
  private readonly reaping = new Set<number>();
  /** The devices of suspended domains, without their backends, until they resume. */
  private readonly saved = new Map<number, DeviceSpec[]>();
  private domainEvents: EventChannels | undefined;

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
    // A journal from an earlier host is not this host's store.
    rmSync(this.journalDir, { recursive: true, force: true });
    this.platform.createDomain({ domid: 0, name: 'Domain-0', pages: DOM0_PAGES });
    this.platform.unpauseDomain(0);
    await this.startXenstored(false);
    // What xen-init-dom0 writes once xenstored runs.
    await this.xenstore.write('/local/domain/0/domid', '0');
    await this.xenstore.write('/local/domain/0/name', 'Domain-0');
    this.toolstackImpl = new Toolstack(this.platform, () => this.xenstore);
    // The hypervisor tells dom0 of every domain that shuts down or dies.
    this.domainEvents = this.platform.domain(0).openEventChannels();
    this.domainEvents.bindVirq(VIRQ_DOM_EXC);
    this.domainEvents.onEvent(() => this.domainsChanged());
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
      journalDir: this.journalDir,
    };
    await this.supervisor.start({
      name: 'xenstored',
      domid: 0,
      module: workerModule('xenstored-worker'),
      config,
      shared: { link: this.platform.link } satisfies PlatformShared,
      // A xenstored that crashed is started again and recovers its store
      // from its journal; a planned restart hands the store over in the
      // saved state instead.
      restart: this.options.xenstoredRestart ?? DEFAULT_RESTART,
    });
    // The toolstack's client waits for a restarted xenstored and sets its watches again.
    this.xs = await XenStoreClient.connect(this.options.socket, { reconnect: true });
  }

  get journalDir(): string {
    return this.options.journalDir ?? `${this.options.socket}.journal`;
  }

  /**
   * Creates a domain the way a toolstack does and starts its kernel in a
   * worker, with the bus drivers it loads.
   */
  async startDomain(config: DomainConfig, drivers: KernelDrivers = {}): Promise<StartInfo> {
    const start = await this.toolstack.createDomain(config);
    this.domains.set(start.domid, start);
    this.records.set(start.domid, { config, drivers, devices: [] });
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
    const reason = this.platform.domainInfo(domid)?.shutdownReason;
    if (start) await this.supervisor.stop(`kernel:${start.name}`, 'domain destroyed');
    await this.toolstack.destroyDomain(domid);
    this.domains.delete(domid);
    this.records.delete(domid);
    this.saved.delete(domid);
    this.reaping.delete(domid);
    this.lifecycle.emit('destroyed', domid, reason);
  }

  /** Plugs a split device between two running domains, as libxl does. */
  async plugDevice(spec: DeviceSpec): Promise<DevicePaths> {
    const paths = await this.toolstack.plugDevice(spec);
    const record = this.records.get(spec.frontendDomid);
    if (record) record.devices = [...record.devices.filter((d) => !sameDevice(d, spec)), spec];
    return paths;
  }

  /** Unplugs a split device, as libxl does. */
  unplugDevice(spec: DeviceSpec, options?: UnplugOptions): Promise<UnplugResult> {
    const record = this.records.get(spec.frontendDomid);
    if (record) record.devices = record.devices.filter((d) => !sameDevice(d, spec));
    return this.toolstack.unplugDevice(spec, options);
  }

  /**
   * Does what `xenmesh domain <action> <domain>` asks of a domain named by
   * its name or domid, as xl does, and says what happened; rejects with a
   * DomainActionError when the toolstack refuses or the domain did not act
   * in time.
   */
  async control(action: DomainAction, domain: string, options: DomainActionOptions = {}): Promise<string> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS;
    const { domid, name } = this.findDomain(domain);
    const label = `domain ${name} (${domid})`;
    if (domid === 0) throw new DomainActionError('Domain-0 is the host itself; stop the host instead');
    switch (action) {
      case 'destroy':
        await this.destroyDomain(domid);
        return `${label} destroyed`;
      case 'sysrq':
        if (!options.key) throw new DomainActionError('sysrq needs a key');
        await writeSysrq(this.xenstore, domid, options.key);
        return `SysRq '${options.key}' sent to ${label}`;
      case 'resume':
        return this.resume(domid, label, options.backend, timeoutMs);
      default: {
        const request: ShutdownRequest = action === 'shutdown' ? (options.halt ? 'halt' : 'poweroff') : action;
        const info = this.platform.domainInfo(domid);
        if (info?.state === 'shutdown') throw new DomainActionError(`${label} has already shut down (${info.shutdownReason})`);
        await requireControl(this.xenstore, domid, label, request);
        // Listening before writing: the domain may act before the write's reply is read.
        const outcome = this.outcomeOf(domid, label, request, timeoutMs);
        try {
          await writeShutdownRequest(this.xenstore, domid, request);
        } catch (err) {
          outcome.catch(() => {}); // the write's failure is the one to report
          throw err;
        }
        return outcome;
      }
    }
  }

  /** A domain by domid or name, among the running and the suspended. */
  findDomain(ref: string): { domid: number; name: string } {
    const domains = this.platform.listDomains().filter((d) => d.state !== 'dying');
    const found = /^\d+$/.test(ref) ? domains.find((d) => d.domid === Number(ref)) : domains.find((d) => d.name === ref);
    if (!found) throw new DomainActionError(`no domain '${ref}' (there are: ${domains.map((d) => `${d.name} (${d.domid})`).join(', ')})`);
    return { domid: found.domid, name: found.name };
  }

  /** What xl waits for after writing a request: the domain gone, back, or saved. */
  private outcomeOf(domid: number, label: string, request: ShutdownRequest, timeoutMs: number): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- EventEmitter listeners take any arguments
      const listeners: [string, (...args: any[]) => void][] = [
        ['destroyed', (gone: number, reason?: ShutdownReasonName) => gone === domid && reason !== 'reboot' && done(`${label} ${request === 'halt' && reason === 'poweroff' ? 'halted' : describeEnd(reason)}`)],
        ['rebooted', (old: number, now: number) => old === domid && done(`${label} rebooted; it runs again as domain ${now}`)],
        ['saved', (held: number, devices: number) => held === domid && done(`${label} suspended; ${devices} device(s) released by their backends; resume brings it back`)],
        ['rebootFailed', (old: number, why: string) => old === domid && failed(`${label} shut down to reboot, but was not started again: ${why}`)],
      ];
      const timer = setTimeout(() => {
        finish();
        void whyNotDone(this.xenstore, domid, label, request, timeoutMs).then((why) => reject(new DomainActionError(why)), reject);
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        for (const [event, listener] of listeners) this.lifecycle.off(event, listener);
      };
      const done = (message: string) => {
        finish();
        resolve(message);
      };
      const failed = (message: string) => {
        finish();
        reject(new DomainActionError(message));
      };
      for (const [event, listener] of listeners) this.lifecycle.on(event, listener);
    });
  }

  /** VIRQ_DOM_EXC: deal with each domain that shut down, once. */
  private domainsChanged(): void {
    for (const domid of this.records.keys()) {
      const info = this.platform.domainInfo(domid);
      if (info?.state !== 'shutdown' || this.reaping.has(domid)) continue;
      this.reaping.add(domid);
      const reason = info.shutdownReason ?? 'poweroff';
      log.info(`domain ${info.name} (${domid}) shut down: ${reason}`);
      this.lifecycle.emit('shutdown', domid, reason);
      this.afterShutdown(domid, reason).catch((err: Error) => log.error(`domain ${domid} after ${reason}: ${err.message}`));
    }
  }

  /** xl's defaults: a reboot creates the domain again, a suspend is saved, anything else is destroyed. */
  private async afterShutdown(domid: number, reason: ShutdownReasonName): Promise<void> {
    if (reason === 'suspend') return this.save(domid);
    const record = this.records.get(domid);
    await this.destroyDomain(domid);
    if (reason !== 'reboot' || !record) return;
    let start: StartInfo | undefined;
    try {
      // As libxl does for a domain it creates: its disks are looked at
      // before the domain is built, so that one that went bad (its image
      // removed or emptied) stops the reboot with a reason instead of
      // leaving a domain whose disk never connects.
      await checkDiskImages(record.devices);
      const { domid: _old, ...config } = record.config;
      start = await this.startDomain(config, record.drivers);
      for (const spec of record.devices) await this.plugDevice({ ...spec, frontendDomid: start.domid });
      this.lifecycle.emit('rebooted', domid, start.domid);
    } catch (err) {
      // A domain built but not given all its devices goes too, as libxl
      // destroys a domain whose creation failed part way.
      const built = start;
      if (built) await this.destroyDomain(built.domid).catch((destroyErr: Error) => log.warn(`destroying domain ${built.domid}: ${destroyErr.message}`));
      log.error(`domain ${record.config.name} (${domid}) shut down to reboot, but was not started again: ${(err as Error).message}`);
      this.lifecycle.emit('rebootFailed', domid, (err as Error).message);
    }
  }

  /**
   * A domain suspended: as a save does, its devices' backends are taken
   * away (each answers, flushes and closes its store), and the domain is
   * held by the platform until it is resumed or destroyed.
   */
  private async save(domid: number): Promise<void> {
    const devices = this.records.get(domid)?.devices ?? [];
    for (const spec of devices) await detachBackend(this.xenstore, spec);
    this.saved.set(domid, devices);
    this.lifecycle.emit('saved', domid, devices.length);
  }

  /**
   * Resumes a saved domain: its devices get backends again (in `backend`,
   * a driver domain, if given; else where they were), the domain runs, and
   * every device reconnects.
   */
  private async resume(domid: number, label: string, backend: string | undefined, timeoutMs: number): Promise<string> {
    const info = this.platform.domainInfo(domid);
    if (info?.state !== 'shutdown' || info.shutdownReason !== 'suspend') throw new DomainActionError(`${label} is not suspended`);
    const saved = this.saved.get(domid);
    if (!saved) throw new DomainActionError(`${label} is still being saved; try again`);
    const target = backend === undefined ? undefined : this.findDomain(backend);
    const devices = saved.map((spec) => (target ? { ...spec, backendDomid: target.domid } : spec));
    // Every disk is looked at before any is given a backend: a domain that
    // cannot have all of them stays suspended, to be resumed once the image is back.
    try {
      await checkDiskImages(devices);
    } catch (err) {
      if (err instanceof DiskRefused) throw new DomainActionError(`${label} stays suspended: ${err.message}`);
      throw err;
    }
    for (const spec of devices) await attachBackend(this.xenstore, spec);
    const record = this.records.get(domid);
    if (record) record.devices = devices;
    this.saved.delete(domid);
    this.reaping.delete(domid);
    this.platform.resumeDomain(domid);
    const connected = await Promise.all(
      devices.map((spec) => waitForState(this.xenstore, `${devicePaths(spec).frontend}/state`, [XenbusState.Connected], timeoutMs)),
    );
    const late = devices.filter((_, i) => connected[i] === undefined).map((spec) => `${spec.kind} ${spec.devid}`);
    if (late.length > 0) throw new DomainActionError(`${label} resumed, but ${late.join(', ')} did not reconnect within ${timeoutMs / 1000} s`);
    const where = target ? ` to ${target.name} (${target.domid})` : '';
    return `${label} resumed; ${devices.length} device(s) reconnected${where}`;
  }

  workers(): WorkerStatus[] {
    return this.supervisor.status();
  }

  /** Everything, in the reverse of the order it started. */
  async shutdown(): Promise<void> {
    for (const domid of [...this.domains.keys()].reverse()) {
      await this.destroyDomain(domid).catch((err: Error) => log.warn(`destroying domain ${domid}: ${err.message}`));
    }
    this.domainEvents?.close();
    this.domainEvents = undefined;
    this.xs?.close();
    await this.supervisor.stopAll();
  }
}

interface DomainRecord {
  readonly config: DomainConfig;
  readonly drivers: KernelDrivers;
  devices: DeviceSpec[];
}

const sameDevice = (a: DeviceSpec, b: DeviceSpec) => a.kind === b.kind && a.devid === b.devid && a.frontendDomid === b.frontendDomid;

/** How a domain's end reads, from why it shut down. */
function describeEnd(reason: ShutdownReasonName | undefined): string {
  switch (reason) {
    case 'poweroff':
      return 'powered off';
    case 'crash':
      return 'crashed and was destroyed';
    case undefined:
      return 'was destroyed';
    default:
      return `shut down (${reason}) and was destroyed`;
  }
}
