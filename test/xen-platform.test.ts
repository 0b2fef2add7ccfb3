/**
 * The Xen platform's parts that run without a hypervisor: the addon's
 * device file watched from the event loop, its clean-up when a worker
 * exits, its errors where Xen's device files or libraries are missing, the
 * xenstore client over the xenbus device (against a stand-in for the
 * kernel's device), and how a back bus notices that a peer domain died.
 * The rest is proven against real Xen by `npm run test:xen`.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import t, { type Test } from 'tap';
import { createLogger } from '../shared/log.js';
import { PlatformError } from '../shared/platform.js';
import { XsType, decodeHeader, XS_HEADER_SIZE } from '../shared/xs-wire.js';
import { xenAddon, type NativeDeviceFile } from '../shared/xen/addon.js';
import { XenPlatform } from '../shared/xen/platform.js';
import { xenctrlAddon } from '../shared/xen/xenctrl.js';
import { WORKER_NAMES, workerModule } from '../host/machine/worker-modules.js';
import { attachXenHost, XenHostError, XSD_PORT_PATH } from '../xenstore/daemon/xen-host.js';
import { XenStoreClient } from '../xenstore/client/client.js';
import { DeviceClientTransport } from '../xenstore/client/device-transport.js';
import { PeerDomains } from '../xenbus/peer-domains.js';
import { startDaemon } from './helpers/daemon.js';

const run = promisify(execFile);
const ADDON = new URL('../../build/Release/xenmesh_xen.node', import.meta.url).pathname;
const built = existsSync(ADDON);
const xenSkip = built ? false : 'the Xen addon is built only where libxen-dev is installed';

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-xen-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('the device file is read as it becomes readable, without blocking', { skip: xenSkip }, async (t) => {
  const dir = tempDir(t);
  const fifo = join(dir, 'fifo');
  await run('mkfifo', [fifo]);
  let wakeups = 0;
  let wake: (() => void) | undefined;
  // A FIFO opened read-write reads back what is written to it: a loop to watch.
  const device = new (xenAddon().DeviceFile)(fifo, () => {
    wakeups++;
    wake?.();
  });
  t.teardown(() => device.close());
  const buffer = new Uint8Array(64);
  t.equal(device.read(buffer), -1, 'nothing there: -1, not a blocked thread');
  const readable = new Promise<void>((resolve) => (wake = resolve));
  t.equal(device.write(Buffer.from('hello xenbus')), 12);
  await readable;
  t.ok(wakeups >= 1, 'the event loop was woken');
  const got = device.read(buffer);
  t.equal(Buffer.from(buffer.subarray(0, got)).toString(), 'hello xenbus');
  t.equal(device.read(buffer), -1, 'and nothing more');
  device.close();
  t.throws(() => device.read(buffer), /is closed/, 'a closed device says so');
});

t.test('a device file that cannot be opened names the path and errno', { skip: xenSkip }, async (t) => {
  const err = (() => {
    try {
      new (xenAddon().DeviceFile)('/nonexistent/xenbus', () => {});
    } catch (e) {
      return e as Error & { code: string; syscall: string };
    }
    return undefined;
  })();
  t.match(err?.message, /open\(\/nonexistent\/xenbus\): No such file or directory \(ENOENT\)/);
  t.equal(err?.code, 'ENOENT');
  t.equal(err?.syscall, 'open');
});

t.test('a worker that exits with its device file open and watched exits cleanly', { skip: xenSkip }, async (t) => {
  const dir = tempDir(t);
  const fifo = join(dir, 'fifo');
  await run('mkfifo', [fifo]);
  const script = `
    const { createRequire } = require('node:module');
    const addon = createRequire(${JSON.stringify(ADDON)})(${JSON.stringify(ADDON)});
    const device = new addon.DeviceFile(${JSON.stringify(fifo)}, () => {});
    device.write(Buffer.from('x'));
    setTimeout(() => process.exit(0), 50);
  `;
  const worker = new Worker(script, { eval: true });
  const code = await new Promise<number>((resolve) => worker.on('exit', resolve));
  t.equal(code, 0, 'the worker exits, its poll handle closed by the addon');
});

t.test('without Xen device files, the platform says which call failed and why', { skip: xenSkip }, async (t) => {
  const platform = XenPlatform.open(0);
  const domain = platform.domain(0);
  const mapped = (() => {
    try {
      domain.grants.map(1, [8], true);
    } catch (err) {
      return err;
    }
    return undefined;
  })();
  t.ok(mapped instanceof PlatformError, 'a PlatformError');
  t.match((mapped as Error).message, /xengnttab_open\(\/dev\/xen\/gntdev\)/, 'naming the library call and the device');
  t.throws(() => domain.openEventChannels(), /xenevtchn_open\(\/dev\/xen\/evtchn\)/);
  t.throws(() => platform.createDomain({ name: 'x', pages: 1 }), /ENOSYS.*toolstack/, 'creating a domain is the toolstack\'s');
  t.throws(() => platform.domain(3), /runs in domain 0/, 'a process reaches its own domain only');
  t.throws(() => domain.memory.allocPages(1), /ENOSYS/, 'and has no page numbers of its own');
});

t.test("without /dev/xen/privcmd, xenstored's domain states say which call failed", { skip: xenSkip }, async (t) => {
  const platform = XenPlatform.open(0);
  t.throws(() => platform.domainInfo(0), /xc_interface_open\(\/dev\/xen\/privcmd\)/, 'reading a domain names libxenctrl and the device');
  t.throws(() => platform.listDomains(), /xc_interface_open/, 'and so does listing them');
  t.throws(() => xenctrlAddon().mapSharedPage(join(tempDir(t), 'xsd_kva')), /open\(.*xsd_kva\): .*ENOENT/, "a missing dom0 page is named with errno");
});

t.test('xenstored on Xen: attaching where there is no Xen dom0 says what is missing, in one line', { skip: existsSync(XSD_PORT_PATH) && 'this machine is a Xen dom0' }, async (t) => {
  t.equal(attachXenHost('none'), undefined, '--hypervisor none attaches to nothing');
  t.equal(attachXenHost('auto'), undefined, 'auto: no Xen host here, so the socket alone');
  t.throws(() => attachXenHost('xen'), new XenHostError(`--hypervisor xen: ${XSD_PORT_PATH} is not there: this is not a Xen dom0 with xenfs mounted on /proc/xen, or its kernel runs no local xenstore`));
});

t.test('a missing Xen library is named with its Debian package', { skip: xenSkip }, async (t) => {
  const dir = tempDir(t);
  // A library that cannot be loaded stands for one that is not installed.
  writeFileSync(join(dir, 'libxengnttab.so.1'), 'not a library');
  const platformModule = new URL('../shared/xen/platform.js', import.meta.url).href;
  const { stdout } = await run(
    process.execPath,
    ['--input-type=module', '-e', `import { XenPlatform } from ${JSON.stringify(platformModule)}; try { XenPlatform.open(0) } catch (e) { console.log(e.message) }`],
    { env: { ...process.env, LD_LIBRARY_PATH: dir } },
  );
  t.match(stdout, /needs libxengnttab\.so\.1, which is not installed \(Debian package libxengnttab1\)/);
});

t.test("every worker the machine and xenmesh backend start has its module where they look for it", async (t) => {
  for (const name of WORKER_NAMES) t.ok(existsSync(fileURLToPath(workerModule(name))), `${name}: ${fileURLToPath(workerModule(name))}`);
});

t.test('xenmesh backend without Xen says what is missing, in one line', async (t) => {
  const bin = new URL('../bin/xenmesh.js', import.meta.url).pathname;
  const dir = tempDir(t);
  const result = await run(process.execPath, [bin, 'backend', '--xenstore', join(dir, 'no-socket')]).catch((err: { code: number; stderr: string }) => err);
  t.equal((result as { code: number }).code, 1);
  const lines = (result as { stderr: string }).stderr.trim().split('\n');
  t.equal(lines.length, 1, 'one line');
  t.match(lines[0], /^xenmesh backend: cannot reach xenstored at .*no-socket: .*ENOENT/);
  const bad = await run(process.execPath, [bin, 'backend', '--domid', 'dom0']).catch((err: { code: number; stderr: string }) => err);
  t.match((bad as { stderr: string }).stderr, /--domid must be a domain number, not 'dom0'/);
});

/**
 * A stand-in for the kernel's /dev/xen/xenbus: it passes messages to a
 * xenstored over its socket, hands them back a few bytes per read, and
 * answers a WATCH only after the watch's first event, as the kernel may.
 * It counts the requests a client has in flight at once (the kernel's
 * device expects one).
 */
function fakeXenbusDevice(socketPath: string) {
  let socket: Socket;
  let outgoing = Buffer.alloc(0);
  let inFlight = 0;
  let mostInFlight = 0;
  const open = (_path: string, onReadable: () => void): NativeDeviceFile => {
    socket = connect(socketPath);
    let incoming = Buffer.alloc(0);
    let readable = Buffer.alloc(0);
    const heldWatchReplies = new Map<number, Buffer>();
    socket.on('data', (chunk) => {
      incoming = Buffer.concat([incoming, chunk]);
      while (incoming.length >= XS_HEADER_SIZE) {
        const header = decodeHeader(incoming);
        const size = XS_HEADER_SIZE + header.len;
        if (incoming.length < size) break;
        const frame = incoming.subarray(0, size);
        incoming = incoming.subarray(size);
        if (header.type === XsType.WATCH) {
          heldWatchReplies.set(header.reqId, Buffer.from(frame));
          continue;
        }
        readable = Buffer.concat([readable, frame]);
        if (header.type !== XsType.WATCH_EVENT) inFlight--;
        if (header.type === XsType.WATCH_EVENT) {
          for (const reply of heldWatchReplies.values()) readable = Buffer.concat([readable, reply]);
          inFlight -= heldWatchReplies.size;
          heldWatchReplies.clear();
        }
      }
      if (readable.length > 0) setImmediate(onReadable);
    });
    return {
      read(into) {
        if (readable.length === 0) return -1;
        const n = Math.min(7, into.length, readable.length);
        into.set(readable.subarray(0, n));
        readable = readable.subarray(n);
        if (readable.length > 0) setImmediate(onReadable);
        return n;
      },
      write(from) {
        // The kernel takes part of a message per write.
        const n = Math.min(from.length, 5);
        socket.write(Buffer.from(from.subarray(0, n)));
        outgoing = Buffer.concat([outgoing, from.subarray(0, n)]);
        while (outgoing.length >= XS_HEADER_SIZE && outgoing.length >= XS_HEADER_SIZE + decodeHeader(outgoing).len) {
          outgoing = outgoing.subarray(XS_HEADER_SIZE + decodeHeader(outgoing).len);
          mostInFlight = Math.max(mostInFlight, ++inFlight);
        }
        return n;
      },
      close() {
        socket.destroy();
      },
    };
  };
  return { open, mostInFlight: () => mostInFlight };
}

t.test('the client over the xenbus device: pieces, and a watch event before its reply', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const device = fakeXenbusDevice(env.socketPath);
  const client = new XenStoreClient(DeviceClientTransport.open('/dev/xen/xenbus', device.open));
  t.teardown(() => client.close());
  await client.write('/dev-test/a', 'one');
  t.equal(await client.readString('/dev-test/a'), 'one', 'messages written and read a few bytes at a time');
  const watcher = await client.watch('/dev-test');
  const first = await watcher.next();
  t.equal(first.value?.path, '/dev-test', 'the first event, which came before the WATCH reply, is not lost');
  await client.write('/dev-test/b', 'two');
  const second = await watcher.next();
  t.equal(second.value?.path, '/dev-test/b', 'and later events follow');
  const values = await Promise.all(Array.from({ length: 50 }, (_, i) => client.write(`/dev-test/n${i}`, String(i)).then(() => client.readString(`/dev-test/n${i}`))));
  t.same(values, Array.from({ length: 50 }, (_, i) => String(i)), 'concurrent requests matched to their replies');
  const transactions = await Promise.all(Array.from({ length: 5 }, (_, i) => client.transaction(async (tx) => client.write(`/dev-test/t${i}`, 'x', { tx }))));
  t.equal(transactions.length, 5, 'concurrent transactions commit');
  t.equal(device.mostInFlight(), 1, 'and the device never had more than one request at a time, as libxenstore sends them');
});

t.test('a device that fails a write closes the client with its error', async (t) => {
  const client = new XenStoreClient(
    DeviceClientTransport.open('/dev/xen/xenbus', () => ({
      read: () => -1,
      write: () => {
        throw Object.assign(new Error('write(/dev/xen/xenbus): Invalid argument (EINVAL)'), { code: 'EINVAL' });
      },
      close: () => {},
    })),
  );
  const err = await client.readString('/x').catch((e: Error) => e);
  t.match((err as Error).message, /connection to xenstored closed: write\(\/dev\/xen\/xenbus\): Invalid argument/);
  t.ok(client.isClosed);
});

t.test('a back bus learns of a dead peer from @releaseDomain and IS_DOMAIN_INTRODUCED', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  await env.domain(5);
  env.build(7); // created, never introduced: not to be taken for dead
  const gone: number[] = [];
  let peers = [5, 7];
  const watch = new PeerDomains(dom0, createLogger('test'), () => peers, (domid) => gone.push(domid));
  await watch.start();
  t.teardown(() => watch.stop());
  watch.track(5);
  watch.track(7);
  await watch.settled();
  const released = new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (gone.length > 0) {
        clearInterval(timer);
        resolve();
      }
    }, 10);
  });
  env.platform.destroyDomain(5);
  await released;
  t.same(gone, [5], 'the dead domain, once');
  // Domain 7 is released too without ever having been introduced: nothing is said of it.
  peers = [7];
  env.platform.destroyDomain(7);
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.same(gone, [5], 'a domain never seen introduced is never declared dead');

  const unprivileged = await env.domain(9);
  const quiet = new PeerDomains(unprivileged, createLogger('test'), () => [5], () => t.fail('nothing is declared dead'));
  await quiet.start();
  t.teardown(() => quiet.stop());
  quiet.track(5);
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.pass('an unprivileged domain, refused IS_DOMAIN_INTRODUCED, stays quiet');
});
