/**
 * The xenstored role: the daemon in dom0's worker, serving every domain's
 * ring through the platform and dom0's tools on a Unix socket.
 */
import { attachPlatform, type PlatformShared } from '../../../shared/attach.js';
import { runRole } from '../../../shared/mesh/worker-runtime.js';
import { PlatformDomainBackend } from '../../../xenstore/daemon/platform-backend.js';
import { XenStoreSocketServer } from '../../../xenstore/daemon/socket-server.js';
import type { Connection } from '../../../xenstore/daemon/connection.js';
import type { DomainRecord } from '../../../xenstore/daemon/domains.js';
import { XenStoreDaemon } from '../../../xenstore/daemon/xenstored.js';
import { takeSavedState, writeSavedState } from '../../../xenstore/daemon/saved-state.js';
import { Journal } from '../../../xenstore/daemon/journal.js';
import { domainFigures, encodeDomainFigures } from '../../../xenstore/daemon/domain-figures.js';
import { XENSTORED_RESTART, type XenstoredRoleConfig } from '../xenstored-role.js';


/** How often the role publishes its figures to the supervisor. */
const STATS_INTERVAL_MS = 1000;

runRole<XenstoredRoleConfig>(async (ctx) => {
  const platform = await attachPlatform((ctx.shared as PlatformShared).link);
  const daemon = new XenStoreDaemon({ backend: new PlatformDomainBackend(platform, ctx.domid), traceFile: ctx.config.traceFile });
  // A state left behind is only ever taken by the successor it was left for.
  const saved = takeSavedState(ctx.config.stateFile);
  const journal = new Journal(ctx.config.journalDir);
  if (ctx.config.restore && saved) {
    daemon.restoreState(saved);
    daemon.attachJournal(journal, false);
    ctx.log.info(`took over the store and ${saved.domains.length} domains from the previous xenstored`);
  } else {
    // A journal here means the previous xenstored crashed: its store and domains are taken over.
    // (Also after a planned restart whose successor crashed since: its saved state is taken already.)
    const recovery = daemon.attachJournal(journal, journal.holdsState());
    if (ctx.config.restore && !recovery) throw new Error(`no saved state in ${ctx.config.stateFile} nor journal in ${ctx.config.journalDir} to restart from`);
    if (recovery) {
      ctx.log.info(
        `recovered the store from ${ctx.config.journalDir} after a crash (${recovery.records} commits after its snapshot, ` +
          `${recovery.domains?.domains.length ?? 0} domains)`,
      );
    }
  }
  const server = new XenStoreSocketServer(daemon, ctx.config.socket);
  await server.listen();
  ctx.log.info(`serving xenstore on ${ctx.config.socket} and on the domains' rings`);

  /** Each domain's connection as xenstored sees it: serving, or ignored after a ring error. */
  const connections = (): Record<string, string> => {
    const states: Record<string, string> = {};
    // One pass over the connections: a search per domain made this a million steps a second for 1000 domains.
    const rings = new Map<DomainRecord, Connection>();
    for (const c of daemon.connections) if (c.transport.kind === 'ring' && !rings.has(c.domain)) rings.set(c.domain, c);
    for (const domain of daemon.domains.introducedDomains()) {
      const conn = rings.get(domain);
      states[`d${domain.domid}`] = conn ? (conn.ignored ? 'ignored (ring error)' : 'connected') : 'introduced';
    }
    states['sockets'] = String([...daemon.connections].filter((c) => c.transport.kind === 'socket').length);
    return states;
  };
  let lastSent = '';
  const timer = setInterval(() => {
    const states = connections();
    // The supervisor keeps the last stats it was sent: only a change is news.
    const text = JSON.stringify(states);
    if (text === lastSent) return;
    lastSent = text;
    ctx.stats(states);
  }, STATS_INTERVAL_MS);
  timer.unref();

  return {
    info: { socket: ctx.config.socket },
    // The health report carries each domain's figures as well, for the metrics endpoint.
    health: () => ({ ...connections(), ...encodeDomainFigures(domainFigures(daemon)) }),
    async stop(reason) {
      clearInterval(timer);
      if (reason === XENSTORED_RESTART) writeSavedState(ctx.config.stateFile, daemon.saveState());
      daemon.shutdown();
      // A planned restart hands the store over in the saved state; a stop takes it away.
      if (reason === XENSTORED_RESTART) journal.close();
      else journal.discard();
      await server.close();
    },
  };
});
