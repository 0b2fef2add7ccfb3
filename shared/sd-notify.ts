/**
 * Telling systemd how a service is (sd_notify(3)): READY=1 once it serves,
 * STATUS= lines as it goes, STOPPING=1 as it shuts down. A unit of
 * Type=notify waits for READY=1 before it starts what is ordered after it.
 * Outside systemd (no NOTIFY_SOCKET) every call does nothing.
 */
import { nativeCalls, type NativeCalls } from './native.js';
import { createLogger } from './log.js';

const log = createLogger('sd-notify');

/** Where systemd's manager listens for this service's notifications. */
export const NOTIFY_SOCKET_ENV = 'NOTIFY_SOCKET';

export interface ServiceNotifier {
  ready(status?: string): void;
  status(status: string): void;
  stopping(status?: string): void;
}

/**
 * The notifier of this process. With NOTIFY_SOCKET set and the native
 * addon missing, it says once that systemd will not be told (a
 * Type=notify unit then times out starting) and does nothing more.
 */
export function serviceNotifier(env: NodeJS.ProcessEnv = process.env, load: () => NativeCalls = nativeCalls): ServiceNotifier {
  const socket = env[NOTIFY_SOCKET_ENV];
  let send: (message: string) => void = () => {};
  if (socket) {
    try {
      const calls = load();
      let failed = false;
      send = (message) => {
        try {
          calls.sdNotify(socket, message);
        } catch (err) {
          // A manager that went away is said once, not on every status line.
          if (!failed) log.warn(`cannot notify systemd at ${socket}: ${(err as Error).message}`);
          failed = true;
        }
      };
    } catch (err) {
      log.warn(`${NOTIFY_SOCKET_ENV} is set but systemd cannot be told this service is ready: ${(err as Error).message}`);
    }
  }
  const withStatus = (state: string, status: string | undefined) => send(status === undefined ? state : `${state}\nSTATUS=${oneLine(status)}`);
  return {
    ready: (status) => withStatus('READY=1', status),
    status: (status) => send(`STATUS=${oneLine(status)}`),
    stopping: (status) => withStatus('STOPPING=1', status),
  };
}

/** A notification is newline-separated assignments: a status must not start another. */
function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ');
}
