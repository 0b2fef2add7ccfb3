/**
 * Requests on the toolstack socket with options that are not options: the
 * names of Object.prototype's own properties, names with control
 * characters, options of the wrong type or for another action. Each is
 * refused with an error that names the option as it was sent; what is
 * accepted is exactly what was checked.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DomainActionError, type DomainActionOptions } from '../control/actions.js';
import { Host } from '../host/machine/host.js';
import { setLogSink } from '../shared/log.js';
import { OWN_VERSION, parseReply, parseRequest, RequestError, toolstackSocketPath } from '../host/cli/toolstack-protocol.js';
import { ToolstackServer } from '../host/cli/toolstack-server.js';
import { run } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));

/** A request line as a client would send it, its options given as raw JSON text (JSON.stringify drops `__proto__`). */
const line = (action: string, options: string) => `{"version": ${JSON.stringify(OWN_VERSION)}, "action": "${action}", "domain": "guest", "options": ${options}}`;

/** The options a request may carry, as a refusal lists them. */
const OPTION_NAMES = 'timeoutMs, halt, backend, key, image, vdev, readOnly, disks';

const refusal = (text: string): string => {
  try {
    parseRequest(text);
  } catch (err) {
    if (err instanceof RequestError) return err.message;
    return `not a RequestError: ${String(err)}`;
  }
  return 'accepted';
};

t.test("option names are checked against the options' own names", async (t) => {
  for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__']) {
    for (const value of ['1', 'true', '"x"', '{}', '{"halt": true}']) {
      t.equal(
        refusal(line('shutdown', `{"${name}": ${value}}`)),
        `unknown option '${name}'; the options are ${OPTION_NAMES}`,
        `${name}: ${value} is an unknown option`,
      );
    }
  }
  t.equal(refusal(line('shutdown', '{"hal\\u0000t": true}')), `unknown option 'hal\\u0000t'; the options are ${OPTION_NAMES}`, 'a NUL in a name is shown escaped');
  t.equal(refusal(line('shutdown', '{"a\\nb": 1}')), `unknown option 'a\\nb'; the options are ${OPTION_NAMES}`, 'and a newline');
  t.equal(refusal(line('shutdown', '{"\\u202ehalt": true}')), `unknown option '\\u202ehalt'; the options are ${OPTION_NAMES}`, 'and a bidi override');
});

t.test('an option of the wrong type, or for another action, is refused by name', async (t) => {
  t.equal(refusal(line('shutdown', '{"halt": "yes"}')), "option 'halt' must be a boolean, not a string");
  t.equal(refusal(line('shutdown', '{"timeoutMs": null}')), "option 'timeoutMs' must be a number, not null");
  t.equal(refusal(line('resume', '{"backend": ["driver"]}')), "option 'backend' must be a string, not an array");
  t.equal(refusal(line('sysrq', '{"key": {"s": 1}}')), "option 'key' must be a string, not an object");
  t.equal(refusal(line('reboot', '{"halt": true}')), "option 'halt' goes with shutdown only");
  t.equal(refusal(line('shutdown', '{"backend": "driver"}')), "option 'backend' goes with resume, block-attach, create only");
  t.equal(refusal(line('destroy', '{"key": "s"}')), "option 'key' goes with sysrq only");
});

t.test('accepted options are exactly those checked', async (t) => {
  const request = parseRequest(line('shutdown', '{"halt": true, "timeoutMs": 5000}'));
  t.same(request.options, { halt: true, timeoutMs: 5000 });
  t.equal(Object.getPrototypeOf(request.options), Object.prototype, 'a plain object');
  t.same(Object.keys(request.options), ['halt', 'timeoutMs'], 'with nothing else');
  t.same(parseRequest(line('reboot', '{"timeoutMs": 1}')).options, { timeoutMs: 1 }, 'timeoutMs goes with any action');
});

t.test('through the socket, the client is told which option is wrong', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-toolstack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const asked: DomainActionOptions[] = [];
  const server = new ToolstackServer(async (_action, _domain, options) => {
    asked.push(options);
    return 'done';
  }, join(dir, 'socket.toolstack'));
  await server.listen();
  t.teardown(() => server.close());
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = createConnection(server.path, () => socket.end(`${line('shutdown', '{"__proto__": {"halt": true}}')}\n`));
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('end', () => resolve(received.trim()));
    socket.on('error', reject);
  });
  t.same(parseReply(answer), { ok: false, error: `unknown option '__proto__'; the options are ${OPTION_NAMES}` });
  t.same(asked, [], 'and the toolstack was not asked');
});

t.test('a domain reference is shown plainly in the log and in errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-toolstack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const logs: string[] = [];
  setLogSink((level, component, message) => logs.push(`${level} [${component}] ${message}`));
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const server = new ToolstackServer(async () => {
    throw new DomainActionError('no such domain');
  }, join(dir, 'socket.toolstack'));
  await server.listen();
  t.teardown(() => server.close());
  const forged = 'guest\ninfo [host] all is well';
  await new Promise<void>((resolve, reject) => {
    const socket = createConnection(server.path, () => socket.end(`${JSON.stringify({ version: OWN_VERSION, action: 'destroy', domain: forged })}\n`));
    socket.on('data', () => {});
    socket.on('end', () => resolve());
    socket.on('error', reject);
  });
  t.same(logs, ["info [toolstack] destroy 'guest\\ninfo [host] all is well' asked on the toolstack socket", "info [toolstack] destroy 'guest\\ninfo [host] all is well' refused: no such domain"], 'the log shows the newline escaped, on one line each');
  // findDomain needs no booted host: it reads the machine's domain table, empty here.
  const host = new Host({ socket: join(dir, 'socket'), frames: 4096 });
  t.throws(() => host.findDomain(forged), new DomainActionError("no domain 'guest\\ninfo [host] all is well' (there are: )"), 'and so does the error');
});

t.test('a request from a xenmesh of another version is refused, naming both versions', async (t) => {
  const older = { xenmesh: '0.0.9', protocol: 1 };
  const newer = { xenmesh: OWN_VERSION.xenmesh, protocol: OWN_VERSION.protocol + 1 };
  const own = `xenmesh ${OWN_VERSION.xenmesh} (toolstack protocol ${OWN_VERSION.protocol})`;
  const request = (version: unknown) => JSON.stringify({ version, action: 'reboot', domain: 'guest' });
  t.equal(refusal(request(older)), `the request comes from xenmesh 0.0.9 (toolstack protocol 1), but this host runs ${own}; use the xenmesh that started the host`, 'an older xenmesh');
  t.equal(
    refusal(request(newer)),
    `the request comes from xenmesh ${newer.xenmesh} (toolstack protocol ${newer.protocol}), but this host runs ${own}; use the xenmesh that started the host`,
    'the same package speaking another protocol',
  );
  t.equal(refusal(JSON.stringify({ action: 'reboot', domain: 'guest' })), `the request carries no version; this host runs ${own} and takes requests from that version only`, 'protocol 1 had no version');
  t.match(refusal(request('0.1.0')), /^the request carries a version that is not /, 'a version that is a bare string');
  t.match(refusal(request({ xenmesh: '0.1.0', protocol: '2' })), /^the request carries a version that is not /, 'a protocol number sent as a string');

  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-toolstack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let asked = 0;
  const server = new ToolstackServer(async () => {
    asked++;
    return 'done';
  }, join(dir, 'socket.toolstack'));
  await server.listen();
  t.teardown(() => server.close());
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = createConnection(server.path, () => socket.end(`${request(older)}\n`));
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('end', () => resolve(received.trim()));
    socket.on('error', reject);
  });
  const reply = JSON.parse(answer) as { version: unknown; ok: boolean; error: string };
  t.same(reply.version, OWN_VERSION, "the refusal carries the host's version");
  t.equal(reply.ok, false);
  t.match(reply.error, /xenmesh 0\.0\.9 \(toolstack protocol 1\).*this host runs xenmesh/, 'and names both');
  t.equal(asked, 0, 'and the toolstack was not asked');
});

t.test('a reply from a host of another version is not taken for an answer', async (t) => {
  const own = `xenmesh ${OWN_VERSION.xenmesh} (toolstack protocol ${OWN_VERSION.protocol})`;
  const reply = (version: unknown) => JSON.stringify({ version, ok: true, message: 'done' });
  t.throws(() => parseReply(reply({ xenmesh: '9.9.9', protocol: 3 })), { name: 'VersionMismatchError', message: `the host runs xenmesh 9.9.9 (toolstack protocol 3), and this is ${own}; use the xenmesh that started the host` }, 'even one that says ok');
  t.throws(() => parseReply(JSON.stringify({ ok: false, error: 'no' })), { name: 'VersionMismatchError', message: /^the host answered with no version: it runs a xenmesh older than this one/ }, 'a protocol 1 host');
  t.same(parseReply(reply(OWN_VERSION)), { ok: true, message: 'done' }, 'and one of its own version is');

  // The spawned client against a host that answers as another version does.
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-toolstack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  const received: string[] = [];
  const fake = createServer((client) => {
    client.setEncoding('utf8');
    client.once('data', (text: string) => {
      received.push(text);
      client.end(`${reply({ xenmesh: '9.9.9', protocol: 3 })}\n`);
    });
  });
  await new Promise<void>((resolve) => fake.listen(toolstackSocketPath(socket), resolve));
  t.teardown(() => fake.close());
  const result = await run(process.execPath, [XENMESH, 'list', '--socket', socket]);
  t.equal(result.code, 1, 'xenmesh list exits 1');
  t.equal(result.stderr, `xenmesh list: the host runs xenmesh 9.9.9 (toolstack protocol 3), and this is ${own}; use the xenmesh that started the host\n`, 'naming both versions');
  t.equal(result.stdout, '', 'and prints nothing of what the host said');
  t.same(JSON.parse(received[0]!).version, OWN_VERSION, 'its request carried its own version');
});
