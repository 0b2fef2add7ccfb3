import { readFileSync, rmSync } from 'node:fs';
import { applyLogFormatOption, createLogger } from '../../shared/log.js';
import { serviceNotifier } from '../../shared/sd-notify.js';
import { checkAppendableFile, PathError, prepareSocketDirectory, refuseServedSocketPath, writeFileOrRefuse } from '../../shared/startup-paths.js';
import { OptionError, XENSTORED_USAGE, parseXenstoredOptions } from './options.js';
import { XenStoreSocketServer } from './socket-server.js';
import { XenStoreDaemon } from './xenstored.js';
import { Journal } from './journal.js';
import { attachXenHost, MASTER_DOMID, XenHostError, XSD_KVA_PATH, type XenHost } from './xen-host.js';

const log = createLogger('xenstored');

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether the pid file names a running daemon. Like xenstored, a second
 * daemon started with the pid file of a running one leaves quietly; a
 * file left by a dead daemon is taken over.
 */
function pidFileHeld(file: string): boolean {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid);
  } catch {
    // No pid file yet.
    return false;
  }
}

/**
 * Refuses a socket another daemon or host serves (before the pid file
 * or anything else is touched), and any path given that cannot be used.
 */
async function checkDaemonPaths(socket: string, traceFile: string | undefined): Promise<void> {
  await refuseServedSocketPath(socket, '--socket');
  prepareSocketDirectory(socket, '--socket');
  // Opened here, where a failure can be told, rather than in the daemon, which would trace nothing.
  if (traceFile !== undefined) checkAppendableFile(traceFile, 'trace file', '-T/--trace');
}

/** `xenmesh xenstored`: the daemon in the foreground on its Unix socket. */
export async function runXenstored(argv: readonly string[]): Promise<number> {
  let options;
  try {
    options = parseXenstoredOptions(argv);
  } catch (err) {
    if (!(err instanceof OptionError)) throw err;
    process.stderr.write(`xenmesh xenstored: ${err.message}\n${XENSTORED_USAGE}\n`);
    return 1;
  }
  if (options.help) {
    process.stdout.write(`${XENSTORED_USAGE}\n`);
    return 0;
  }
  const logFormatProblem = applyLogFormatOption(options.logFormat);
  if (logFormatProblem) {
    process.stderr.write(`xenmesh xenstored: ${logFormatProblem}\n`);
    return 1;
  }
  try {
    if (options.pidFile && pidFileHeld(options.pidFile)) {
      log.info(`a daemon with pid file ${options.pidFile} is already running`);
      return 0;
    }
    await checkDaemonPaths(options.socket, options.traceFile);
    if (options.pidFile) writeFileOrRefuse(options.pidFile, `${process.pid}\n`, 'pid file', '-F/--pid-file');
  } catch (err) {
    if (!(err instanceof PathError)) throw err;
    process.stderr.write(`xenmesh xenstored: ${err.message}\n`);
    return 1;
  }

  let xen: XenHost | undefined;
  try {
    xen = attachXenHost(options.hypervisor);
  } catch (err) {
    if (!(err instanceof XenHostError)) throw err;
    process.stderr.write(`xenmesh xenstored: ${err.message}\n`);
    if (options.pidFile) rmSync(options.pidFile, { force: true });
    return 1;
  }

  const daemon = new XenStoreDaemon({
    backend: xen?.backend,
    quotas: options.quotas,
    watchEventTimeoutMs: options.watchEventTimeoutMs,
    unreadOutputTimeoutMs: options.unreadOutputTimeoutMs,
    queuedOutputLimit: options.queuedOutputLimit,
    traceFile: options.traceFile,
  });
  const server = new XenStoreSocketServer(daemon, options.socket);
  // Taken from before the socket can be found: a signal that came between
  // then and the daemon's being ready (systemd stopping a unit that is still
  // starting) would otherwise kill it outright (no handler is the default
  // action), leaving its socket behind; it is carried out once it is ready.
  let stopAsked: NodeJS.Signals | undefined;
  let onStop: ((signal: NodeJS.Signals) => void) | undefined;
  const signalled = (signal: NodeJS.Signals) => {
    stopAsked ??= signal;
    onStop?.(signal);
  };
  process.once('SIGTERM', signalled);
  process.once('SIGINT', signalled);
  const forgetSignals = () => {
    process.off('SIGTERM', signalled);
    process.off('SIGINT', signalled);
  };
  try {
    await server.listen();
  } catch (err) {
    log.error(`cannot listen on ${options.socket}: ${(err as Error).message}`);
    forgetSignals();
    daemon.shutdown();
    if (options.pidFile) rmSync(options.pidFile, { force: true });
    return 1;
  }
  // Recovered once the socket is ours (a path that cannot be served is
  // reported as such) and before any request is read: connections accepted
  // meanwhile wait for the event loop, which this does not yield to.
  let journal: Journal | undefined;
  if (options.journalDir) {
    try {
      journal = new Journal(options.journalDir);
      // A journal left behind is a daemon that crashed: its store is taken over.
      const recovery = daemon.attachJournal(journal, journal.holdsState());
      if (recovery) {
        log.info(`recovered the store from ${options.journalDir} (${recovery.records} commits after its snapshot, ${recovery.domains?.domains.length ?? 0} domains)`);
      }
    } catch (err) {
      log.error(`cannot use the journal in ${options.journalDir}: ${(err as Error).message}`);
      forgetSignals();
      daemon.shutdown();
      await server.close();
      if (options.pidFile) rmSync(options.pidFile, { force: true });
      return 1;
    }
  }
  if (xen) {
    // As xenstored's dom0_init(): dom0's kernel has waited for a xenstored
    // since it booted; introduced afresh even after a recovery, whose ring
    // state it cannot take back.
    try {
      daemon.introduce(MASTER_DOMID, 0n, xen.masterPort);
    } catch (err) {
      log.error(`cannot serve domain ${MASTER_DOMID}'s own ring (${XSD_KVA_PATH}, port ${xen.masterPort}): ${(err as Error).message}`);
      forgetSignals();
      daemon.shutdown();
      await server.close();
      if (options.pidFile) rmSync(options.pidFile, { force: true });
      return 1;
    }
  }
  const serving = xen ? `serving xenstore on ${options.socket} and to the Xen host's domains (dom0's ring on port ${xen.masterPort})` : `serving xenstore on ${options.socket}`;
  log.info(serving);
  const notifier = serviceNotifier();
  notifier.ready(serving);

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      log.info(`${signal}: stopping`);
      notifier.stopping(`${signal}: stopping`);
      daemon.shutdown();
      // Stopped on purpose, the daemon takes its store with it, as xenstored does.
      journal?.discard();
      void server.close().then(() => {
        if (options.pidFile) rmSync(options.pidFile, { force: true });
        resolve(0);
      });
    };
    onStop = stop;
    if (stopAsked) stop(stopAsked);
  });
}
