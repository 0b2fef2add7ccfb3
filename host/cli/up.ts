import { lstat, mkdir, open } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { applyLogFormatOption, createLogger, LOG_OPTIONS_USAGE } from '../../shared/log.js';
import { serviceNotifier } from '../../shared/sd-notify.js';
import { decodeDomainFigures } from '../../xenstore/daemon/domain-figures.js';
import { defaultSocketHelp, defaultSocketPath } from '../../shared/default-paths.js';
import { PathError } from '../../shared/startup-paths.js';
import { diskDevice, type DeviceSpec } from '../toolstack/devices.js';
import { waitForDevice } from '../toolstack/device-wait.js';
import { chooseDiskAccess, DiskRefused, type DiskAccess } from '../toolstack/disk-check.js';
import { Host } from '../machine/host.js';
import { runs, subcommand } from './command-line.js';
import { METRICS_OPTION_USAGE, MetricsAddressError, parseMetricsAddress } from './metrics-address.js';
import type { MetricsServer, MetricsSources } from './metrics.js';
import { checkHostPaths } from './paths.js';
import { HostPrompt, PROMPT_HINT } from './prompt.js';
import { formatDevices, formatStatus } from './report.js';
import { toolstackSocketPath } from './toolstack-protocol.js';
import { ToolstackServer } from './toolstack-server.js';
import { runToolstackAction } from './toolstack-actions.js';

const log = createLogger('host');

/** Where the guest's disk lives unless --image says otherwise; the one image `xenmesh up` creates. */
export const DEFAULT_IMAGE = resolve(process.env['XDG_DATA_HOME'] ?? join(homedir(), '.local', 'share'), 'xenmesh', 'guest.img');
/** The size of a disk image created because none was there: 1 GiB, sparse. */
export const DEFAULT_IMAGE_BYTES = 2 ** 30;

export const UP_USAGE = `Usage: xenmesh up [--image FILE] [--access ro|rw] [--socket PATH] [--frames N] [--trace FILE]
                  [--log-format json|text] [--metrics ADDR]

Boots an embedded Xen host: dom0 with xenstored, a driver domain and a guest
domain, each domain's kernel in a worker of its own. The driver domain serves
a raw image file to the guest as its disk xvda (and an echo device).
xenstored also listens on a Unix socket (--socket) so that xenstore-utils
can inspect and drive the running host; socket clients act as dom0. The
toolstack listens next to it (PATH.toolstack) for
\`xenmesh domain\`, and commands typed at the host's prompt (help lists them)
shut down, reboot, suspend, resume or destroy a domain or send it a sysrq.
Stays up until Ctrl-C, SIGTERM or quit.

  --image FILE    the guest's disk, a raw image or a block device; it must
                  exist. Without --image: ${DEFAULT_IMAGE},
                  created sparse, ${DEFAULT_IMAGE_BYTES / 2 ** 30} GiB, if it does not exist
  --access ro|rw  serve the disk read-only, or read-write and refuse an image
                  that cannot be written; by default read-write, or read-only
                  (and said so) when the image cannot be written
  --socket PATH   where xenstored listens for dom0's tools; one that a running
                  host or daemon serves is refused. By default
                  ${defaultSocketHelp('                  ')}
  --frames N      machine memory in 4 KiB pages (default 16384)
  --trace FILE    trace every xenstore request and reply to FILE
${LOG_OPTIONS_USAGE}
${METRICS_OPTION_USAGE}`;

/** The domains `xenmesh up` creates besides dom0 (4 MiB each), with the bus drivers each loads. */
const DOMAINS = [
  { config: { name: 'driver', pages: 1024 }, drivers: { backDrivers: ['echo', 'vbd'] } },
  { config: { name: 'guest', pages: 1024 }, drivers: { frontDrivers: ['echo', 'vbd'] } },
];


/** How long the host waits for the first device to connect before it reports anyway. */
const CONNECT_WAIT_MS = 10_000;

/** The options `xenmesh up` takes, as commander parsed them. */
export interface UpOptions {
  image?: string;
  access?: string;
  socket?: string;
  frames?: string;
  trace?: string;
  logFormat?: string;
  metrics?: string;
}

/** `xenmesh up`: its options, each one .option() line. */
export function upCommand(): Command {
  const command = subcommand('up', UP_USAGE)
    .option('--image <file>')
    .option('--access <ro|rw>')
    .option('--socket <path>')
    .option('--frames <n>')
    .option('--trace <file>')
    .option('--log-format <json|text>')
    .option('--metrics <addr>');
  return runs(command, (values: UpOptions) => runUp(values));
}

export async function runUp(values: UpOptions): Promise<number> {
  const logFormatProblem = applyLogFormatOption(values.logFormat);
  if (logFormatProblem) {
    process.stderr.write(`xenmesh up: ${logFormatProblem}\n`);
    return 1;
  }
  const frames = values.frames === undefined ? undefined : Number(values.frames);
  if (frames !== undefined && (!Number.isInteger(frames) || frames < 4096)) {
    process.stderr.write('xenmesh up: --frames must be a whole number of pages, at least 4096\n');
    return 1;
  }
  if (values.access !== undefined && !isAccess(values.access)) {
    process.stderr.write(`xenmesh up: --access is ro or rw, not '${values.access}'\n${UP_USAGE}\n`);
    return 1;
  }
  const access: DiskAccess = values.access ?? 'auto';
  const socket = values.socket ?? defaultSocketPath();
  const image = values.image === undefined ? DEFAULT_IMAGE : resolve(values.image);
  try {
    await checkHostPaths({ socket, traceFile: values.trace });
  } catch (err) {
    if (!(err instanceof PathError)) throw err;
    process.stderr.write(`xenmesh up: ${err.message}\n`);
    return 1;
  }
  let metricsAddress;
  try {
    metricsAddress = values.metrics === undefined ? undefined : parseMetricsAddress(values.metrics);
  } catch (err) {
    if (!(err instanceof MetricsAddressError)) throw err;
    process.stderr.write(`xenmesh up: ${err.message}\n`);
    return 1;
  }
  const host = new Host({ socket, frames, traceFile: values.trace });
  // The endpoint is claimed first: an address in use stops the command before anything is made or booted.
  let metrics: MetricsServer | undefined;
  if (metricsAddress) {
    try {
      const { createMetricsRegistry, serveMetrics } = await import('./metrics.js');
      metrics = await serveMetrics(metricsAddress, createMetricsRegistry(hostMetrics(host)));
    } catch (err) {
      process.stderr.write(`xenmesh up: ${(err as Error).message}\n`);
      return 1;
    }
    log.info(`serving metrics at ${metrics.url}`);
  }
  // The disk is looked at before any domain is created: a host whose
  // guest's disk could never connect does not start.
  let readOnly: boolean;
  try {
    if (values.image === undefined && (await createDefaultImage(image))) log.info(`created ${image}, sparse, ${DEFAULT_IMAGE_BYTES} bytes`);
    const choice = await chooseDiskAccess(image, access);
    if (choice.notice) log.warn(`the guest's disk: ${choice.notice} (--access rw refuses such an image instead)`);
    readOnly = choice.readOnly;
  } catch (err) {
    const why = err instanceof DiskRefused ? err.message : `${image}: ${(err as Error).message}`;
    process.stderr.write(`xenmesh up: cannot serve the guest's disk: ${why} (--image FILE)\n`);
    await metrics?.close();
    return 1;
  }
  const toolstack = new ToolstackServer((action, domain, options) => runToolstackAction(host, action, domain, options), toolstackSocketPath(socket));
  try {
    await host.boot();
    const started = [];
    for (const { config, drivers } of DOMAINS) started.push(await host.startDomain(config, drivers));
    const [driver, guest] = [started[0]!.domid, started[1]!.domid];
    const disk = diskDevice({ frontendDomid: guest, backendDomid: driver, vdev: 'xvda', target: image, readOnly });
    const echo: DeviceSpec = { kind: 'echo', frontendDomid: guest, backendDomid: driver, devid: 0 };
    for (const device of [disk, echo]) await host.plugDevice(device);
    await Promise.all([disk, echo].map((device) => waitConnected(host, device)));
    await toolstack.listen();
  } catch (err) {
    log.error(`boot failed: ${(err as Error).message}`);
    await toolstack.close().catch(() => {});
    await host.shutdown().catch(() => {});
    await metrics?.close();
    return 1;
  }

  const out = (text: string) => process.stdout.write(`${text}\n`);
  const notifier = serviceNotifier();
  host.supervisor.on('restart', (name, attempt) => {
    log.info(`${name} restarted (attempt ${attempt})`);
    notifier.status(`host up; ${name} restarted (attempt ${attempt})`);
  });

  return new Promise<number>((resolve) => {
    let stopping = false;
    let prompt: HostPrompt | undefined;
    const stop = (reason: string) => {
      if (stopping) return;
      stopping = true;
      log.info(`${reason}: shutting the host down`);
      notifier.stopping(`${reason}: shutting the host down`);
      prompt?.close();
      // The toolstack stops taking requests before the domains it would act on go away;
      // the host is shut down even if the socket would not close. Both are bounded.
      toolstack
        .close()
        .catch((err: Error) => log.warn(`closing the toolstack socket: ${err.message}`))
        .then(() => host.shutdown())
        .finally(() => metrics?.close())
        .then(
          () => resolve(0),
          (err: Error) => {
            log.error(`shutdown: ${err.message}`);
            resolve(1);
          },
        );
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    // Said once the signals are caught: whoever waits for these lines may stop the host at once.
    announce().then(
      () => {
        if (stopping || !process.stdin.readable) return;
        prompt = new HostPrompt(host, {
          input: process.stdin,
          output: process.stdout,
          errors: process.stderr,
          // Output redirected to a file gets no prompt and no escape sequences, even from a terminal's input.
          terminal: process.stdin.isTTY === true && process.stdout.isTTY === true,
          onQuit: () => stop('quit'),
          onInterrupt: () => stop('SIGINT'),
        });
      },
      (err: Error) => log.error(`reporting the host's status: ${err.message}`),
    );
  });

  async function announce(): Promise<void> {
    out(`xenstored is listening on ${socket}; inspect it with XENSTORED_PATH=${socket} xenstore-ls -p /`);
    out(`The toolstack is listening on ${toolstack.path}; drive it with xenmesh domain <action> <domain> --socket ${socket}`);
    out('Running. Ctrl-C or SIGTERM stops the host.');
    notifier.ready(`host up: ${host.domains.size} domains; xenstored on ${socket}`);
    // The prompt reads whatever stdin is, terminal or pipe; when it ends
    // (`< /dev/null`, a finished script) the prompt goes and the host runs on.
    if (process.stdin.readable) out(PROMPT_HINT);
    // The status comes last, so that it is what a terminal shows above the
    // prompt; the xenstore trees are there on request (`tree`, xenstore-ls).
    out('');
    out(await formatStatus(host));
    out('');
    out(await formatDevices(host.xenstore));
  }
}

/** What --access takes: xl's spellings of a disk's access. Without it, `auto`. */
function isAccess(word: string): word is DiskAccess {
  return word === 'ro' || word === 'rw';
}

/**
 * Creates the default image, sparse, and the directory it goes in, if
 * nothing is at its path; true if it did. Something that is there (a
 * dangling symlink too) is left for the disk check to judge. Only the
 * default image is created: a path the user names must exist, so that a
 * typo is reported instead of becoming a new, empty disk.
 */
async function createDefaultImage(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return false;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return false;
  }
  await mkdir(dirname(path), { recursive: true });
  const handle = await open(path, 'wx', 0o600);
  try {
    await handle.truncate(DEFAULT_IMAGE_BYTES);
  } finally {
    await handle.close();
  }
  return true;
}

/**
 * Waits for both ends of a device to be Connected. One that gives up
 * (its backend or frontend went Closing or Closed, leaving an error node)
 * fails the boot with that node's reason; one that is only slow is
 * reported, and the host runs on.
 */
async function waitConnected(host: Host, spec: DeviceSpec): Promise<void> {
  const result = await waitForDevice(host.xenstore, spec, CONNECT_WAIT_MS);
  if (result.outcome === 'failed') throw new Error(`${spec.kind} ${spec.devid} did not connect: ${result.reason}`);
  if (result.outcome === 'timeout') log.warn(`${spec.kind} ${spec.devid} did not connect within ${CONNECT_WAIT_MS} ms`);
}

/** The host's figures for the metrics endpoint, read when scraped. */
function hostMetrics(host: Host): MetricsSources {
  return {
    blockStats: () => host.blockStats(),
    // A xenstored restarting serves no figures for that scrape rather than failing it.
    xenstoreDomains: async () => decodeDomainFigures((await host.supervisor.health('xenstored').catch(() => undefined))?.detail ?? {}),
    workers: () => host.workers(),
    domainName: (domid) => host.platform.listDomains().find((d) => d.domid === domid)?.name,
  };
}
