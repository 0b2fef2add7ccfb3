/**
 * sd_notify as the commands use it: nothing outside systemd, the messages
 * systemd reads (READY=1, STATUS=, STOPPING=1) inside it, and one warning
 * line where NOTIFY_SOCKET is set and the native addon is missing.
 */
import t, { type Test } from 'tap';
import { setLogSink, type LogLevel } from '../shared/log.js';
import type { NativeCalls } from '../shared/native.js';
import { serviceNotifier } from '../shared/sd-notify.js';

function capture(t: Test): { level: LogLevel; message: string }[] {
  const lines: { level: LogLevel; message: string }[] = [];
  setLogSink((level, _component, message) => lines.push({ level, message }));
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  return lines;
}

/** An addon whose sdNotify records what it is sent, or throws `failure`. */
function fakeAddon(sent: [string, string][], failure?: Error): () => NativeCalls {
  return () =>
    ({
      sdNotify(path: string, message: string) {
        if (failure) throw failure;
        sent.push([path, message]);
      },
    }) as NativeCalls;
}

t.test('without NOTIFY_SOCKET nothing is sent and nothing is said', async (t) => {
  const logs = capture(t);
  const sent: [string, string][] = [];
  const notifier = serviceNotifier({}, fakeAddon(sent));
  notifier.ready('serving');
  notifier.stopping();
  t.same(sent, []);
  t.same(logs, []);
});

t.test('under systemd: READY=1, STATUS= on one line, STOPPING=1', async (t) => {
  const logs = capture(t);
  const sent: [string, string][] = [];
  const notifier = serviceNotifier({ NOTIFY_SOCKET: '@manager' }, fakeAddon(sent));
  notifier.ready('serving on /run/x');
  notifier.status('two\nlines');
  notifier.stopping();
  t.same(sent, [
    ['@manager', 'READY=1\nSTATUS=serving on /run/x'],
    ['@manager', 'STATUS=two lines'],
    ['@manager', 'STOPPING=1'],
  ], 'a status never starts another assignment');
  t.same(logs, []);
});

t.test('the addon missing: one warning, and the service runs on', async (t) => {
  const logs = capture(t);
  const notifier = serviceNotifier({ NOTIFY_SOCKET: '/run/systemd/notify' }, () => {
    throw new Error('the native addon is not built (cannot open it); run npm run build:native');
  });
  notifier.ready('serving');
  notifier.stopping();
  t.equal(logs.length, 1, 'said once');
  t.equal(logs[0]!.level, 'warn');
  t.match(logs[0]!.message, /^NOTIFY_SOCKET is set but systemd cannot be told this service is ready: the native addon is not built/);
});

t.test('a manager that went away: said once, not on every notification', async (t) => {
  const logs = capture(t);
  const notifier = serviceNotifier({ NOTIFY_SOCKET: '/run/gone' }, fakeAddon([], new Error('connect: ENOENT')));
  notifier.ready();
  notifier.status('still here');
  notifier.stopping();
  t.same(logs, [{ level: 'warn', message: 'cannot notify systemd at /run/gone: connect: ENOENT' }]);
});
