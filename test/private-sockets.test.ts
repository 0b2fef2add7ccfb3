/**
 * The sockets that act for dom0 (xenstored's and the host's toolstack's):
 * nobody but their owner can ever connect, not even for the moment between
 * listen() and a chmod, and a directory others could write to is refused.
 */
import t, { type Test } from 'tap';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Server } from 'node:net';
import { join } from 'node:path';
import { ToolstackServer } from '../host/cli/toolstack-server.js';
import { DetachedBackend } from '../xenstore/daemon/domain-backend.js';
import { XenStoreSocketServer } from '../xenstore/daemon/socket-server.js';
import { XenStoreDaemon } from '../xenstore/daemon/xenstored.js';
import { look, watchSocket, type Sightings } from './helpers/socket-watch.js';

/** Listen-and-close rounds per server, for the watcher thread to look through. */
const ROUNDS = 40;

interface Listener {
  listen(): Promise<void>;
  close(): Promise<void>;
}

const servers: Record<string, (path: string) => Listener> = {
  xenstored: (path) => new XenStoreSocketServer(new XenStoreDaemon({ backend: new DetachedBackend() }), path),
  toolstack: (path) => new ToolstackServer(async () => 'done', path),
};

function modeOf(path: string): string {
  return (statSync(path).mode & 0o7777).toString(8).padStart(4, '0');
}

/**
 * Looks right after every bind(), which listen() does before returning:
 * where a socket created with the umask's mode and chmod-ed later would be
 * open to everyone, before anything else in this thread could run.
 */
function lookAfterEveryBind(t: Test, path: string, seen: Sightings): void {
  const listen = Server.prototype.listen;
  Server.prototype.listen = function (this: Server, ...args: unknown[]) {
    const result = (listen as (...a: unknown[]) => Server).apply(this, args);
    look(path, seen);
    return result;
  } as typeof listen;
  t.teardown(() => {
    Server.prototype.listen = listen;
  });
}

function scratch(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-sockets-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const [name, make] of Object.entries(servers)) {
  t.test(`${name}: under umask 0 the socket is never wider than 0600`, async (t) => {
    const previous = process.umask(0);
    t.teardown(() => void process.umask(previous));
    const dir = join(scratch(t), 'run');
    const path = join(dir, 'socket');
    const atBind: Sightings = { sockets: 0, reachable: [] };
    lookAfterEveryBind(t, path, atBind);
    const finished = await watchSocket(path);
    for (let round = 0; round < ROUNDS; round++) {
      const server = make(path);
      await server.listen();
      if (round === 0) {
        t.equal(modeOf(dir), '0755', 'a missing directory is created 0755, whatever the umask');
        t.equal(modeOf(path), '0600', 'the socket is 0600 once listening');
      }
      // Long enough for the watcher to see the socket at its path.
      await new Promise((resolve) => setTimeout(resolve, 2));
      await server.close();
    }
    t.same(atBind.reachable, [], 'right after bind, nothing that others could connect through');
    const seen = await finished();
    t.ok(seen.sockets > 0, `the watcher thread saw the socket (${seen.sockets} times)`);
    t.same(seen.reachable, [], 'and never anything that others could connect through');
    t.same(readdirSync(dir), [], 'nothing is left behind');
  });
}

t.test('a directory others could write to is refused with one line', async (t) => {
  const base = scratch(t);
  const refusal = async (make: (path: string) => Listener, dir: string) => {
    try {
      const server = make(join(dir, 'socket'));
      await server.listen();
      await server.close();
      return 'accepted';
    } catch (err) {
      return (err as Error).message;
    }
  };
  const cases: [string, number, RegExp][] = [
    ['world-writable', 0o777, /is writable by group or others \(mode 0777\) and not sticky/],
    ['group-writable', 0o775, /is writable by group or others \(mode 0775\) and not sticky/],
    ['other-writable', 0o757, /is writable by group or others \(mode 0757\) and not sticky/],
  ];
  for (const [what, mode, reason] of cases) {
    const dir = join(base, what);
    mkdirSync(dir);
    chmodSync(dir, mode);
    for (const [name, make] of Object.entries(servers)) {
      const message = await refusal(make, dir);
      t.match(message, /^refusing to serve a socket in \S+: /, `${name} in the ${what} directory`);
      t.match(message, reason, 'says why');
      t.notMatch(message, /\n/, 'on one line');
      t.same(readdirSync(dir), [], 'and creates nothing there');
    }
  }

  const parent = join(base, 'open-parent');
  mkdirSync(join(parent, 'run'), { recursive: true });
  chmodSync(parent, 0o777);
  chmodSync(join(parent, 'run'), 0o755);
  t.match(await refusal(servers['xenstored']!, join(parent, 'run')), `${parent} is writable by group or others`, 'so is one below a world-writable directory');

  const sticky = join(base, 'sticky');
  mkdirSync(sticky);
  chmodSync(sticky, 0o1777);
  t.equal(await refusal(servers['xenstored']!, sticky), 'accepted', 'a sticky directory of ours is fine, as /tmp is');
  t.equal(await refusal(servers['toolstack']!, sticky), 'accepted');

  if (process.getuid?.() === 0) {
    const foreign = join(base, 'foreign');
    mkdirSync(foreign);
    chownSync(foreign, 12345, 12345);
    t.match(await refusal(servers['xenstored']!, foreign), `${foreign} belongs to uid 12345, who could replace the socket`, "another user's directory is refused");
    chmodSync(sticky, 0o1777);
    chownSync(sticky, 12345, 12345);
    t.match(await refusal(servers['xenstored']!, sticky), `${sticky} belongs to uid 12345`, "so is another user's sticky one");
  }
});
