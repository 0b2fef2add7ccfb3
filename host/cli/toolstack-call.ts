/**
 * Asks the running host one thing over its toolstack socket and prints
 * the answer, for every xenmesh command that drives the host.
 */
import { DEFAULT_ACTION_TIMEOUT_MS } from '../../control/actions.js';
import { HostUnreachableError, askHost } from './toolstack-client.js';
import { toolstackSocketPath, type ToolstackRequest } from './toolstack-protocol.js';

/**
 * How much longer than the domain's own deadline the client waits for an
 * answer: the toolstack still has its own work to do once the domain acted
 * (building it again, plugging its devices).
 */
const REPLY_GRACE_MS = 30_000;

/** Sends `request` to the host whose xenstored listens on `socket`; prints the answer and returns the exit status. */
export async function callToolstack(prefix: string, socket: string, request: ToolstackRequest): Promise<number> {
  const path = toolstackSocketPath(socket);
  const waitMs = (request.options.timeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS) + REPLY_GRACE_MS;
  try {
    const reply = await askHost(path, request, waitMs);
    if (!reply.ok) {
      process.stderr.write(`${prefix}: ${reply.error}\n`);
      return 1;
    }
    process.stdout.write(`${reply.message}\n`);
    return 0;
  } catch (err) {
    const message =
      err instanceof HostUnreachableError && err.noHost
        ? `no xenmesh host is running on ${socket} (${err.message}); start one with: xenmesh up --socket ${socket}`
        : (err as Error).message;
    process.stderr.write(`${prefix}: ${message}\n`);
    return 1;
  }
}
