/**
 * Requests on the toolstack socket with options that are not options: the
 * names of Object.prototype's own properties, names with control
 * characters, options of the wrong type or for another action. Each is
 * refused with an error that names the option as it was sent; what is
 * accepted is exactly what was checked.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DomainActionError, type DomainActionOptions } from '../control/actions.js';
import { Host } from '../host/machine/host.js';
import { setLogSink } from '../shared/log.js';
import { parseReply, parseRequest, RequestError } from '../host/cli/toolstack-protocol.js';
import { ToolstackServer } from '../host/cli/toolstack-server.js';

/** A request line as a client would send it, its options given as raw JSON text (JSON.stringify drops `__proto__`). */
const line = (action: string, options: string) => `{"action": "${action}", "domain": "guest", "options": ${options}}`;

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
        `unknown option '${name}'; the options are timeoutMs, halt, backend, key`,
        `${name}: ${value} is an unknown option`,
      );
    }
  }
  t.equal(refusal(line('shutdown', '{"hal\\u0000t": true}')), "unknown option 'hal\\u0000t'; the options are timeoutMs, halt, backend, key", 'a NUL in a name is shown escaped');
  t.equal(refusal(line('shutdown', '{"a\\nb": 1}')), "unknown option 'a\\nb'; the options are timeoutMs, halt, backend, key", 'and a newline');
  t.equal(refusal(line('shutdown', '{"\\u202ehalt": true}')), "unknown option '\\u202ehalt'; the options are timeoutMs, halt, backend, key", 'and a bidi override');
});

t.test('an option of the wrong type, or for another action, is refused by name', async (t) => {
  t.equal(refusal(line('shutdown', '{"halt": "yes"}')), "option 'halt' must be a boolean, not a string");
  t.equal(refusal(line('shutdown', '{"timeoutMs": null}')), "option 'timeoutMs' must be a number, not null");
  t.equal(refusal(line('resume', '{"backend": ["driver"]}')), "option 'backend' must be a string, not an array");
  t.equal(refusal(line('sysrq', '{"key": {"s": 1}}')), "option 'key' must be a string, not an object");
  t.equal(refusal(line('reboot', '{"halt": true}')), "option 'halt' goes with shutdown only");
  t.equal(refusal(line('shutdown', '{"backend": "driver"}')), "option 'backend' goes with resume only");
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
  t.same(parseReply(answer), { ok: false, error: "unknown option '__proto__'; the options are timeoutMs, halt, backend, key" });
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
    const socket = createConnection(server.path, () => socket.end(`${JSON.stringify({ action: 'destroy', domain: forged })}\n`));
    socket.on('data', () => {});
    socket.on('end', () => resolve());
    socket.on('error', reject);
  });
  t.same(logs, ["info [toolstack] destroy 'guest\\ninfo [host] all is well' asked on the toolstack socket", "info [toolstack] destroy 'guest\\ninfo [host] all is well' refused: no such domain"], 'the log shows the newline escaped, on one line each');
  // findDomain needs no booted host: it reads the machine's domain table, empty here.
  const host = new Host({ socket: join(dir, 'socket'), frames: 4096 });
  t.throws(() => host.findDomain(forged), new DomainActionError("no domain 'guest\\ninfo [host] all is well' (there are: )"), 'and so does the error');
});
