import { EventEmitter } from 'node:events';
import type { ResourceLimits } from 'node:worker_threads';
import { rmSync } from 'node:fs';
import { DEFAULT_ACTION_TIMEOUT_MS, DomainActionError, type DomainAction, type DomainActionOptions } from '../../control/actions.js';
import { SYSRQ_KEY_RULE, type ShutdownRequest } from '../../control/protocol.js';
import { requireControl, whyNotDone, writeShutdownRequest, writeSysrq } from '../../control/toolstack.js';
import { VIRQ_DOM_EXC, type EventChannels, type ShutdownReasonName } from '../../shared/platform.js';
import { waitForState } from '../../xenbus/read.js';
import { XenbusState } from '../../xenbus/state.js';
import { attachBackend, detachBackend, devicePaths, diskDevice, vdevName, vdevNumber } from '../toolstack/devices.js';
import { waitForBackend, waitForDevice } from '../toolstack/device-wait.js';
import { DEFAULT_DRIVER_DOMAIN_VBDS } from '../toolstack/device-quotas.js';
import { checkDiskImages, DiskRefused } from '../toolstack/disk-check.js';
import { judgeOutcome, type DomainEnd } from '../toolstack/outcome.js';
import { EmbeddedPlatform, DEFAULT_MACHINE_FRAMES } from '../../shared/embedded/platform.js';
import { createLogger } from '../../shared/log.js';
import { quoteText } from '../../shared/quote.js';
import { settlesWithin } from '../../shared/deadline.js';
import { DEFAULT_RESTART, Supervisor, type RestartPolicy, type WorkerStatus } from '../../shared/mesh/supervisor.js';
import { BLOCK_STATS_TIMEOUT_MS, BLOCK_STATS_TOPIC } from '../../shared/mesh/topics.js';
import type { VbdStatsReport } from '../../shared/vbd-stats.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import { SerialQueue } from '../../xenbus/serial.js';
import type { DevicePaths, DeviceSpec, UnplugOptions, UnplugResult } from '../toolstack/devices.js';
import type { StartInfo } from '../toolstack/domain-builder.js';
import type { KernelDrivers, KernelRoleConfig } from './kernel.js';
import type { PlatformShared } from '../../shared/attach.js';
import { Toolstack, type DomainConfig } from '../toolstack/toolstack.js';
import { XENSTORED_RESTART, type XenstoredRoleConfig } from './xenstored-role.js';
import { workerModule } from './worker-modules.js';

const log = createLogger('host');

/** A guest made by `xenmesh create`: 4 MiB, as `xenmesh up`'s guest. */
const GUEST_PAGES = 1024;

/** The disks a new guest or block-attach names by itself: xvda to xvdp, the ones with the short device numbers (xen-vbd-interface(7)). */
const MAX_CREATE_DISKS = 16;

/** How long block-detach gives the guest to close a disk before removing it by force (libxl's LIBXL_DESTROY_TIMEOUT, 10 s). */
const DEVICE_DETACH_TIMEOUT_MS = 10_000;

/** dom0's memory: 1 MiB is plenty for xenstored's own pages. */
const DOM0_PAGES = 256;

/**
 * How long the host's shutdown may take before whatever still runs is
 * terminated. Container runtimes kill a process that has not exited some
 * time after SIGTERM, without a word: `docker stop` after 10 s by default
 * (systemd after 90 s). The host takes at most 8 s, which leaves the rest
 * of those 10 s to terminate what is left, log it and exit. It is room for
 * one worker that will not stop (STOP_TIMEOUT_MS, 5 s, before the
 * supervisor terminates it) besides the others, which take well under a
 * second each.
 */
export const SHUTDOWN_TIMEOUT_MS = 8_000;

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
  /** How long a shutdown may take (SHUTDOWN_TIMEOUT_MS unless a test shortens it). */
  shutdownTimeoutMs?: number;
}

/**
 * A guest's kernel worker keeps a small young generation: V8 lets it grow
 * to 16 MiB or more under allocation, which a guest doing little I/O does
 * not need and a host of many guests pays for in each of them. Driver
 * domains, which carry every guest's I/O, keep Node's default.
 */
const GUEST_KERNEL_LIMITS: ResourceLimits = { maxYoungGenerationSizeMb: 1 };

/** A domain's kernel worker is named after the domain, which keeps its name across reboots. */
const kernelName = (domainName: string) => `kernel:${domainName}`;

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
  /**
   * The domains this host started, by domid: by their own, and while a
   * reboot is under way by their old one too, so that a destroy naming the
   * domain as it was still finds it.
   */
  private readonly records = new Map<number, DomainRecord>();
  /**
   * What becomes of domains, as xl's domain-death handling sees it:
   * `shutdown` (domid, reason), `saved` (domid: suspended, its backends
   * released), `destroyed` (domid, reason if it shut down), `rebooted`
   * (old domid, new domid), `rebootFailed` (old domid, why it was not
   * created again). A domain's end is told once: a reboot ends in
   * `rebooted`; in `rebootFailed` when the domain could not be created
   * again, and nothing of it is left; or, when a destroy overtook it, in
   * `destroyed` with the reason `reboot`.
   */
  readonly lifecycle = new EventEmitter();
  /** Domains that shut down and are being dealt with (or, suspended, are held). */
  private readonly reaping = new Set<number>();
  /** The devices of suspended domains, without their backends, until they resume. */
  private readonly saved = new Map<number, DeviceSpec[]>();
  private domainEvents: EventChannels | undefined;
  /** The host's shutdown, once asked: no domain is brought back from then on. */
  private closing: Promise<void> | undefined;

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
      domainName: 'Domain-0',
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
    // A driver domain gets room in xenstore for the disks it will serve.
    if (config.vbds === undefined && drivers.backDrivers?.includes('vbd')) config = { ...config, vbds: DEFAULT_DRIVER_DOMAIN_VBDS };
    const start = await this.toolstack.createDomain(config);
    const record: DomainRecord = { config, drivers, devices: [], domid: start.domid, ops: new SerialQueue(() => {}), doomed: false };
    this.track(record, start);
    await this.startKernel(record, start);
    return start;
  }

  /** The host knows a domain it created by its (new) domid. */
  private track(record: DomainRecord, start: StartInfo): void {
    record.domid = start.domid;
    this.domains.set(start.domid, start);
    this.records.set(start.domid, record);
  }

  private startKernel(record: DomainRecord, start: StartInfo): Promise<void> {
    const kernel: KernelRoleConfig = { start, ...record.drivers };
    return this.supervisor.start({
      name: kernelName(record.config.name),
      domid: start.domid,
      domainName: record.config.name,
      module: this.options.kernelModule ?? workerModule('kernel-worker'),
      config: kernel,
      shared: { link: this.platform.link } satisfies PlatformShared,
      restart: DEFAULT_RESTART,
      resourceLimits: record.drivers.backDrivers?.length ? undefined : GUEST_KERNEL_LIMITS,
    });
  }

  /**
   * Stops a domain's kernel and destroys the domain. A destroy wins over
   * whatever else is under way on the domain: it waits its turn, a reboot
   * in progress does not bring the domain back, and it settles once the
   * domain is gone.
   */
  async destroyDomain(domid: number): Promise<void> {
    const record = this.records.get(domid);
    if (!record) return this.destroyUnrecorded(domid);
    record.doomed = true;
    // Stopping the kernel now rather than in turn cuts short a reboot that
    // waits for its new kernel to start; stops of one worker join.
    const stopping = this.supervisor.stop(kernelName(record.config.name), 'domain destroyed');
    await record.ops.call(() => this.destroyRecord(record));
    await stopping;
  }

  /** A domain the toolstack made without the host (no kernel, nothing else acts on it). */
  private async destroyUnrecorded(domid: number): Promise<void> {
    const info = this.platform.domainInfo(domid);
    await this.toolstack.destroyDomain(domid);
    if (info && info.state !== 'dying') this.lifecycle.emit('destroyed', domid, info.shutdownReason);
  }

  /** Destroys the domain a record has now, if any: a reboot that a destroy overtook leaves none. */
  private async destroyRecord(record: DomainRecord): Promise<void> {
    const domid = record.domid;
    if (this.records.get(domid) !== record) return;
    const reason = this.platform.domainInfo(domid)?.shutdownReason;
    await this.teardown(domid);
    this.forget(record);
    this.lifecycle.emit('destroyed', domid, reason);
  }

  /** Stops a domain's kernel and destroys the domain, as libxl does; announces nothing. */
  private async teardown(domid: number): Promise<void> {
    const start = this.domains.get(domid);
    if (start) await this.supervisor.stop(kernelName(start.name), 'domain destroyed');
    await this.toolstack.destroyDomain(domid);
    this.domains.delete(domid);
    this.saved.delete(domid);
    this.reaping.delete(domid);
  }

  private forget(record: DomainRecord): void {
    for (const [domid, known] of this.records) if (known === record) this.records.delete(domid);
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
    if (action === 'destroy') {
      await this.destroyDomain(domid);
      return `${label} destroyed`;
    }
    const info = this.platform.domainInfo(domid);
    if (!info) throw new DomainActionError(`${label} is rebooting; ask again once it runs under its new domid`);
    switch (action) {
      case 'sysrq':
        if (options.key === undefined) throw new DomainActionError(`sysrq needs a key: ${SYSRQ_KEY_RULE}`);
        await writeSysrq(this.xenstore, domid, options.key);
        return `SysRq '${options.key}' sent to ${label}`;
      case 'resume':
        return this.resume(domid, label, options.backend, timeoutMs);
      case 'pause':
        // As xl pause: the domain stops being scheduled; its devices stay, and what it had in flight waits.
        if (info.state === 'paused') throw new DomainActionError(`${label} is already paused`);
        if (info.state !== 'running') throw new DomainActionError(`${label} is not running (${describeState(info.state, info.shutdownReason)})`);
        this.platform.pauseDomain(domid);
        return `${label} paused`;
      case 'unpause':
        if (info.state !== 'paused') throw new DomainActionError(`${label} is not paused (${describeState(info.state, info.shutdownReason)})`);
        this.platform.unpauseDomain(domid);
        return `${label} unpaused`;
      default: {
        const request: ShutdownRequest = action === 'shutdown' ? (options.halt ? 'halt' : 'poweroff') : action === 'halt' ? 'halt' : action;
        if (info.state === 'shutdown') throw new DomainActionError(`${label} has already shut down (${info.shutdownReason})`);
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

  /** A domain by domid or name, among the running, the suspended and the rebooting. */
  findDomain(ref: string): { domid: number; name: string } {
    const domains = this.platform
      .listDomains()
      .filter((d) => d.state !== 'dying')
      .map(({ domid, name }) => ({ domid, name }));
    // Between its old domid and its new one, a rebooting domain is still there to destroy.
    for (const [domid, record] of this.records) if (!domains.some((d) => d.domid === domid)) domains.push({ domid, name: record.config.name });
    const found = /^\d+$/.test(ref) ? domains.find((d) => d.domid === Number(ref)) : domains.find((d) => d.name === ref);
    if (!found) throw new DomainActionError(`no domain ${quoteText(ref, "'")} (there are: ${domains.map((d) => `${d.name} (${d.domid})`).join(', ')})`);
    return { domid: found.domid, name: found.name };
  }

  /**
   * What xl waits for after writing a request: the domain gone, back, or
   * saved, whichever comes; the answer says which (see judgeOutcome), and
   * is an error when it is not what was asked.
   */
  private outcomeOf(domid: number, label: string, request: ShutdownRequest, timeoutMs: number): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const ended = (end: DomainEnd) => {
        finish();
        const verdict = judgeOutcome(label, request, end);
        if (verdict.ok) resolve(verdict.message);
        else reject(new DomainActionError(verdict.error));
      };
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- EventEmitter listeners take any arguments
      const listeners: [string, (...args: any[]) => void][] = [
        ['destroyed', (gone: number, reason?: ShutdownReasonName) => gone === domid && ended({ kind: 'destroyed', reason })],
        ['rebooted', (old: number, now: number) => old === domid && ended({ kind: 'rebooted', domid: now })],
        ['saved', (held: number, devices: number) => held === domid && ended({ kind: 'saved', devices })],
        ['rebootFailed', (old: number, why: string) => old === domid && ended({ kind: 'rebootFailed', why })],
      ];
      const timer = setTimeout(() => {
        finish();
        void whyNotDone(this.xenstore, domid, label, request, timeoutMs).then((why) => reject(new DomainActionError(why)), reject);
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        for (const [event, listener] of listeners) this.lifecycle.off(event, listener);
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

  /**
   * xl's defaults: a reboot creates the domain again, a suspend is saved,
   * anything else is destroyed; in turn with whatever else is asked of the
   * domain, and never a reboot once a destroy was asked or the host stops.
   */
  private afterShutdown(domid: number, reason: ShutdownReasonName): Promise<void> {
    const record = this.records.get(domid);
    if (!record) return Promise.resolve();
    return record.ops.call(async () => {
      // A destroy that came first has dealt with it.
      if (record.domid !== domid || this.records.get(domid) !== record) return;
      if (reason === 'suspend') return this.save(record);
      if (reason === 'reboot' && !record.doomed && !this.closing) return this.reboot(record);
      return this.destroyRecord(record);
    });
  }

  /**
   * A reboot, as xl does it: the old domain is destroyed and one like it
   * created, its kernel started and its devices plugged.
   * A destroy asked meanwhile wins: what was made goes, and the domain's
   * end is told as `destroyed` (reason `reboot`) rather than `rebooted`.
   * A reboot that fails otherwise (a disk whose image went bad, a device
   * that cannot be plugged) leaves nothing of the domain either, as libxl
   * destroys a domain whose creation failed part way, and its end is told
   * as `rebootFailed`, with why.
   */
  private async reboot(record: DomainRecord): Promise<void> {
    const old = record.domid;
    await this.teardown(old);
    // What the reboot made so far; its domid may be the old one again, as domids are reused.
    const made: { start?: StartInfo } = {};
    let failure: unknown;
    try {
      await this.recreate(record, made);
    } catch (err) {
      failure = err;
    }
    // A destroy stops the new kernel as it starts: that is the destroy winning, not a failure.
    if (record.doomed) {
      if (made.start) await this.teardown(made.start.domid);
      this.forget(record);
      this.lifecycle.emit('destroyed', old, 'reboot');
      return;
    }
    if (failure !== undefined || !made.start) {
      const why = failure instanceof Error ? failure.message : String(failure ?? 'the domain was not created');
      const built = made.start;
      if (built) await this.teardown(built.domid).catch((err: Error) => log.warn(`destroying domain ${built.domid}: ${err.message}`));
      this.forget(record);
      log.error(`domain ${record.config.name} (${old}) shut down to reboot, but was not started again: ${why}`);
      this.lifecycle.emit('rebootFailed', old, why);
      return;
    }
    if (record.domid !== old && this.records.get(old) === record) this.records.delete(old);
    this.lifecycle.emit('rebooted', old, record.domid);
  }

  /** Creates a rebooting domain again, stepping back as soon as a destroy is asked. */
  private async recreate(record: DomainRecord, made: { start?: StartInfo }): Promise<void> {
    if (record.doomed) return;
    // As libxl does for a domain it creates: its disks are looked at
    // before the domain is built, so that one that went bad (its image
    // removed or emptied) stops the reboot with a reason instead of
    // leaving a domain whose disk never connects.
    await checkDiskImages(record.devices);
    if (record.doomed) return;
    // The toolstack picks the domid, as for any domain xl creates again.
    const { domid: _fixed, ...config } = record.config;
    const start = await this.toolstack.createDomain(config);
    made.start = start;
    this.track(record, start);
    if (record.doomed) return;
    await this.startKernel(record, start);
    const devices = record.devices;
    record.devices = [];
    for (const spec of devices) {
      if (record.doomed) return;
      await this.plugDevice({ ...spec, frontendDomid: start.domid });
    }
  }

  /**
   * A domain suspended: as a save does, its devices' backends are taken
   * away (each answers, flushes and closes its store), and the domain is
   * held by the platform until it is resumed or destroyed.
   */
  private async save(record: DomainRecord): Promise<void> {
    const { domid, devices } = record;
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
    const record = this.records.get(domid);
    if (!record) throw new DomainActionError(`${label} is not suspended`);
    // In turn with the domain's other lifecycle operations; waiting for its devices to reconnect is not one.
    const { devices, target } = await record.ops.call(() => this.unsave(record, domid, label, backend));
    const connected = await Promise.all(
      devices.map((spec) => waitForState(this.xenstore, `${devicePaths(spec).frontend}/state`, [XenbusState.Connected], timeoutMs)),
    );
    const late = devices.filter((_, i) => connected[i] === undefined).map((spec) => `${spec.kind} ${spec.devid}`);
    if (late.length > 0) throw new DomainActionError(`${label} resumed, but ${late.join(', ')} did not reconnect within ${timeoutMs / 1000} s`);
    const where = target ? ` to ${target.name} (${target.domid})` : '';
    return `${label} resumed; ${devices.length} device(s) reconnected${where}`;
  }

  /** A saved domain's devices get backends again (in `backend`, if given), and it runs. */
  private async unsave(record: DomainRecord, domid: number, label: string, backend: string | undefined): Promise<{ devices: DeviceSpec[]; target: { domid: number; name: string } | undefined }> {
    const info = this.platform.domainInfo(domid);
    if (record.domid !== domid || record.doomed || info?.state !== 'shutdown' || info.shutdownReason !== 'suspend') {
      throw new DomainActionError(`${label} is not suspended`);
    }
    const saved = this.saved.get(domid);
    if (!saved) throw new DomainActionError(`${label} is still being saved; try again`);
    const target = backend === undefined ? undefined : this.findDomain(backend);
    const devices = saved.map((spec) => (target ? { ...spec, backendDomid: target.domid } : spec));
    // A backend that cannot serve the devices would leave them Initialising
    // for good: refused before anything is written, the domain still suspended.
    for (const spec of devices) {
      const why = this.whyCannotServe(spec.backendDomid, spec.kind, domid);
      if (why) throw new DomainActionError(`${label} stays suspended: ${why}`);
    }
    // Every disk is looked at before any is given a backend: a domain that
    // cannot have all of them stays suspended, to be resumed once the image is back.
    try {
      await checkDiskImages(devices);
    } catch (err) {
      if (err instanceof DiskRefused) throw new DomainActionError(`${label} stays suspended: ${err.message}`);
      throw err;
    }
    for (const spec of devices) await attachBackend(this.xenstore, spec);
    record.devices = devices;
    this.saved.delete(domid);
    this.reaping.delete(domid);
    this.platform.resumeDomain(domid);
    return { devices, target };
  }

  /**
   * Why a domain cannot be the backend of a `kind` device of `frontendDomid`,
   * or undefined if it can: it must be another domain that this host
   * started with that kind's back driver loaded (a driver domain).
   */
  whyCannotServe(backendDomid: number, kind: string, frontendDomid: number): string | undefined {
    if (backendDomid === frontendDomid) return `a domain cannot serve its own ${kind} devices`;
    if (backendDomid === 0) return `Domain-0 runs no ${kind} backend on this host; name a driver domain`;
    const record = this.records.get(backendDomid);
    const info = this.platform.domainInfo(backendDomid);
    const label = `domain ${info?.name ?? record?.config.name ?? '?'} (${backendDomid})`;
    if (!record || !info) return `${label} is not a domain this host runs`;
    if (info.state !== 'running' && info.state !== 'paused') return `${label} is not running`;
    if (!record.drivers.backDrivers?.includes(kind)) return `${label} has no ${kind} back driver (it loads: ${record.drivers.backDrivers?.join(', ') || 'no back drivers'})`;
    return undefined;
  }

  /** The domains this host runs with a back driver for `kind`, by domid. */
  backendsFor(kind: string): number[] {
    return [...this.records.values()]
      .filter((record) => record.drivers.backDrivers?.includes(kind) && this.platform.domainInfo(record.domid))
      .map((record) => record.domid)
      .sort((a, b) => a - b);
  }

  /**
   * The devices a domain uses as a frontend, and whether they are held for
   * it (it is suspended, their backends taken away until it resumes).
   */
  devicesOf(domid: number): { devices: readonly DeviceSpec[]; held: boolean } {
    const saved = this.saved.get(domid);
    if (saved) return { devices: saved, held: true };
    const record = this.records.get(domid);
    return { devices: record && record.domid === domid ? record.devices : [], held: false };
  }

  /**
   * Creates a guest as \`xenmesh up\` creates its own: its kernel with the
   * front drivers, and each disk (xvda, xvdb, ...) served by `backend`, or
   * by the first driver domain; every disk is looked at before the domain
   * is created, and the guest is destroyed again if one cannot be plugged.
   */
  async createGuest(name: string, images: readonly string[], backend: string | undefined, timeoutMs: number): Promise<string> {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name) || /^\d+$/.test(name)) {
      throw new DomainActionError(`${quoteText(name, "'")} is not a domain name: letters, digits, '_', '.', '-', not all digits, at most 64`);
    }
    if (this.platform.listDomains().some((d) => d.name === name && d.state !== 'dying')) throw new DomainActionError(`a domain named ${name} exists already`);
    if (images.length > MAX_CREATE_DISKS) throw new DomainActionError(`at most ${MAX_CREATE_DISKS} disks at creation (xvda to xvdp); attach more with block-attach`);
    // A guest without disks needs no driver domain; one with disks is refused before it exists if none can serve them.
    const backendDomid = images.length === 0 && backend === undefined ? undefined : this.chooseBackend(backend, 'vbd', undefined);
    // The frontend's domid is not known until the domain exists; these specs are for the image check, then given it.
    const disks = images.map((target, i) => diskDevice({ frontendDomid: 0, backendDomid: backendDomid ?? 0, vdev: `xvd${String.fromCharCode(97 + i)}`, target }));
    try {
      await checkDiskImages(disks);
    } catch (err) {
      if (err instanceof DiskRefused) throw new DomainActionError(`domain ${name} not created: ${err.message}`);
      throw err;
    }
    const start = await this.startDomain({ name, pages: GUEST_PAGES }, { frontDrivers: ['echo', 'vbd'] });
    const label = `domain ${name} (${start.domid})`;
    try {
      const specs = disks.map((disk) => ({ ...disk, frontendDomid: start.domid }));
      for (const spec of specs) await this.plugDevice(spec);
      const outcomes = await Promise.all(specs.map((spec) => waitForDevice(this.xenstore, spec, timeoutMs)));
      const problems = outcomes.flatMap((o, i) => (o.outcome === 'connected' ? [] : [`${vdevName(specs[i]!.devid)}: ${o.outcome === 'failed' ? o.reason : `not connected within ${timeoutMs / 1000} s`}`]));
      if (problems.length > 0) return `${label} created; but ${problems.join('; ')}`;
    } catch (err) {
      await this.destroyDomain(start.domid).catch(() => {});
      throw new DomainActionError(`domain ${name} not created: ${(err as Error).message}`);
    }
    const where = disks.length > 0 ? `, ${disks.length} disk(s) served by domain ${backendDomid}, connected` : ', no disks';
    return `${label} created${where}`;
  }

  /** The backend a new device goes to: the one named, else the frontend's disks' own, else the first driver domain. */
  private chooseBackend(backend: string | undefined, kind: string, frontendDomid: number | undefined): number {
    if (backend !== undefined) {
      const { domid } = this.findDomain(backend);
      const why = this.whyCannotServe(domid, kind, frontendDomid ?? -1);
      if (why) throw new DomainActionError(why);
      return domid;
    }
    const current = frontendDomid === undefined ? undefined : this.devicesOf(frontendDomid).devices.find((d) => d.kind === kind)?.backendDomid;
    if (current !== undefined) return current;
    const driver = this.backendsFor(kind)[0];
    if (driver === undefined) throw new DomainActionError(`no domain on this host serves ${kind} devices; start a driver domain`);
    return driver;
  }

  /**
   * Attaches a disk to a running domain, as xl block-attach does: libxl's
   * layout and permissions, the next free xvdX unless told, the domain's
   * disks' backend unless told; resolves once the disk connects (on a
   * paused domain, once its backend is ready: the guest connects it when it
   * runs), and says why when it does not.
   */
  async blockAttach(domain: string, image: string, options: { vdev?: string; readOnly?: boolean; backend?: string; timeoutMs?: number }): Promise<string> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS;
    const { domid, name } = this.findDomain(domain);
    const label = `domain ${name} (${domid})`;
    if (domid === 0) throw new DomainActionError('Domain-0 takes no disks from this host\'s driver domains');
    const info = this.platform.domainInfo(domid);
    const record = this.records.get(domid);
    if (!info || !record || record.domid !== domid) throw new DomainActionError(`${label} is not a domain this host runs`);
    if (info.state === 'shutdown' || info.state === 'dying') throw new DomainActionError(`${label} is not running (${describeState(info.state, info.shutdownReason)})`);
    if (!record.drivers.frontDrivers?.includes('vbd')) throw new DomainActionError(`${label} has no vbd front driver to use a disk`);
    const used = new Set(this.devicesOf(domid).devices.filter((d) => d.kind === 'vbd').map((d) => d.devid));
    let vdev = options.vdev;
    if (vdev === undefined) {
      vdev = nextFreeVdev(used);
      if (vdev === undefined) throw new DomainActionError(`${label} has no free disk name left`);
    }
    let devid: number;
    try {
      devid = vdevNumber(vdev);
    } catch (err) {
      throw new DomainActionError((err as Error).message);
    }
    if (used.has(devid)) throw new DomainActionError(`${label} already has a disk ${vdev}`);
    const backendDomid = this.chooseBackend(options.backend, 'vbd', domid);
    const spec = diskDevice({ frontendDomid: domid, backendDomid, vdev, target: image, readOnly: options.readOnly });
    try {
      await this.plugDevice(spec);
    } catch (err) {
      if (err instanceof DiskRefused) throw new DomainActionError(`${vdev} not attached: ${err.message}`);
      throw err;
    }
    const mode = options.readOnly ? 'read-only' : 'read-write';
    if (info.state === 'paused') {
      // A paused guest's frontend cannot answer until it runs: as xl does,
      // the attach is done once the backend is ready for it.
      const ready = await waitForBackend(this.xenstore, spec, timeoutMs);
      if (ready.outcome === 'failed') throw new DomainActionError(`${vdev} attached to ${label}, but its backend refused it: ${ready.reason}`);
      if (ready.outcome === 'timeout') throw new DomainActionError(`${vdev} attached to ${label}, but its backend was not ready within ${timeoutMs / 1000} s`);
      return `${vdev} (${image}, ${mode}) attached to ${label}, served by domain ${backendDomid}; it connects once the domain is unpaused`;
    }
    const outcome = await waitForDevice(this.xenstore, spec, timeoutMs);
    if (outcome.outcome === 'failed') throw new DomainActionError(`${vdev} attached to ${label}, but it did not connect: ${outcome.reason}`);
    if (outcome.outcome === 'timeout') throw new DomainActionError(`${vdev} attached to ${label}, but it did not connect within ${timeoutMs / 1000} s`);
    return `${vdev} (${image}, ${mode}) attached to ${label}, served by domain ${backendDomid}; connected`;
  }

  /**
   * Detaches a disk, as xl block-detach does: the backend is set Closing,
   * the frontend is given `timeoutMs` to close, and is removed by force
   * if it does not; the answer says which.
   */
  async blockDetach(domain: string, vdev: string, timeoutMs = DEVICE_DETACH_TIMEOUT_MS): Promise<string> {
    const { domid, name } = this.findDomain(domain);
    const label = `domain ${name} (${domid})`;
    let devid: number;
    try {
      devid = vdevNumber(vdev);
    } catch (err) {
      throw new DomainActionError((err as Error).message);
    }
    const { devices, held } = this.devicesOf(domid);
    const spec = devices.find((d) => d.kind === 'vbd' && d.devid === devid);
    if (!spec) {
      const disks = devices.filter((d) => d.kind === 'vbd').map((d) => vdevName(d.devid));
      throw new DomainActionError(`${label} has no disk ${vdev} (its disks: ${disks.length > 0 ? disks.join(', ') : 'none'})`);
    }
    if (held) throw new DomainActionError(`${label} is suspended; resume it before detaching ${vdev}`);
    const result = await this.unplugDevice(spec, { timeoutMs });
    return result.clean
      ? `${vdev} detached from ${label}: the guest closed it`
      : `${vdev} detached from ${label} by force: the guest did not close it within ${timeoutMs / 1000} s`;
  }

  workers(): WorkerStatus[] {
    return this.supervisor.status();
  }

  /**
   * The counters of every block device the host's driver domains serve,
   * asked of each driver domain's kernel at once; a kernel that does not
   * answer within `timeoutMs` (stuck, restarting, shutting down) is left
   * out, and the log says so.
   */
  async blockStats(timeoutMs = BLOCK_STATS_TIMEOUT_MS): Promise<VbdStatsReport[]> {
    const kernels = [...new Set(this.records.values())].filter((r) => r.drivers.backDrivers?.includes('vbd')).map((r) => kernelName(r.config.name));
    const answers = await Promise.all(
      kernels.map((name) =>
        this.supervisor.query(name, BLOCK_STATS_TOPIC, timeoutMs).then(
          (reports) => reports as VbdStatsReport[],
          (err: Error) => {
            log.warn(`block statistics: ${name} left out: ${err.message}`);
            return [];
          },
        ),
      ),
    );
    return answers.flat().sort((a, b) => a.backendDomid - b.backendDomid || a.frontendDomid - b.frontendDomid || a.devid - b.devid);
  }

  /**
   * Everything, in the reverse of the order it started: each domain is
   * destroyed (which wins over a reboot under way), then xenstored stops.
   * Whatever has not stopped within SHUTDOWN_TIMEOUT_MS is terminated, and
   * the log says so. Asking again joins the shutdown under way.
   */
  shutdown(): Promise<void> {
    this.closing ??= this.close();
    return this.closing;
  }

  private async close(): Promise<void> {
    const limitMs = this.options.shutdownTimeoutMs ?? SHUTDOWN_TIMEOUT_MS;
    const clean = this.stopEverything().catch((err: Error) => log.error(`shutting down: ${err.message}`));
    if (await settlesWithin(clean, limitMs)) return;
    const left = this.supervisor.status().map((w) => w.name);
    log.warn(`the host did not stop within ${limitMs} ms: terminating ${left.length > 0 ? left.join(', ') : 'nothing (no worker is left)'}`);
    await this.supervisor.terminateAll();
    this.domainEvents?.close();
    this.domainEvents = undefined;
    this.xs?.close();
  }

  private async stopEverything(): Promise<void> {
    for (const record of [...new Set(this.records.values())].reverse()) {
      await this.destroyDomain(record.domid).catch((err: Error) => log.warn(`destroying domain ${record.domid}: ${err.message}`));
    }
    this.domainEvents?.close();
    this.domainEvents = undefined;
    this.xs?.close();
    await this.supervisor.stopAll();
  }
}

/**
 * A domain the host started, across its reboots: what it was created with
 * and the devices it uses as a frontend (what a reboot creates again), and
 * the lifecycle operations on it.
 */
interface DomainRecord {
  readonly config: DomainConfig;
  readonly drivers: KernelDrivers;
  devices: DeviceSpec[];
  /** Its domid now: each reboot makes a new domain, whose domid may or may not be the old one. */
  domid: number;
  /**
   * Destroy, reboot, save and resume, one at a time: two at once would stop
   * its kernel twice, or bring back a domain that is being destroyed.
   */
  readonly ops: SerialQueue;
  /** A destroy was asked: nothing under way brings the domain back. */
  doomed: boolean;
}

/** A domain's state as a user reads it. */
function describeState(state: string, reason: ShutdownReasonName | undefined): string {
  if (state === 'shutdown') return reason === 'suspend' ? 'suspended' : `shut down: ${reason ?? 'poweroff'}`;
  return state;
}

/** The first xvdX name whose device number is not in `used`. */
function nextFreeVdev(used: ReadonlySet<number>): string | undefined {
  for (let i = 0; i < MAX_CREATE_DISKS; i++) {
    const vdev = `xvd${String.fromCharCode(97 + i)}`;
    if (!used.has(vdevNumber(vdev))) return vdev;
  }
  return undefined;
}

const sameDevice = (a: DeviceSpec, b: DeviceSpec) => a.kind === b.kind && a.devid === b.devid && a.frontendDomid === b.frontendDomid;
