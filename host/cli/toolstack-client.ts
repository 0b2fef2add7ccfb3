/**
 * The client end of the toolstack socket: sends one request to the host
 * that `xenmesh up` runs and waits for its answer (a VersionMismatchError
 * when the host runs another version of xenmesh).
 */
import { createConnection } from 'node:net';
import { LineBuffer, formatLine, parseReply, type DomainReply, type ToolstackRequest } from './toolstack-protocol.js';

/** The host cannot be reached, or did not answer; the message says which, as a user reads it. */
export class HostUnreachableError extends Error {
  override readonly name = 'HostUnreachableError';

  constructor(
    message: string,
    /** Nothing listens at the path at all: no host runs there. */
    readonly noHost = false,
  ) {
    super(message);
  }
}

/** Connection errors that mean nothing is serving at the path. */
const NO_LISTENER = new Set(['ENOENT', 'ECONNREFUSED', 'ENOTSOCK']);

/**
 * Asks the host listening on `path` and resolves with its answer; rejects
 * with a HostUnreachableError when no host listens there, the host hangs up
 * without answering, or no answer comes within `waitMs`.
 */
export function askHost(path: string, request: ToolstackRequest, waitMs: number): Promise<DomainReply> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    let connected = false;
    let settled = false;
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      outcome();
    };
    const timer = setTimeout(
      () => settle(() => reject(new HostUnreachableError(`the host did not answer within ${Math.round(waitMs / 1000)} s`))),
      waitMs,
    );
    socket.setEncoding('utf8');
    socket.on('connect', () => {
      connected = true;
      socket.write(formatLine(request));
    });
    const lines = new LineBuffer();
    socket.on('data', (text: string) => {
      try {
        const [line] = lines.push(text);
        if (line !== undefined) {
          const reply = parseReply(line);
          settle(() => resolve(reply));
        }
      } catch (err) {
        settle(() => reject(err));
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected && err.code !== undefined && NO_LISTENER.has(err.code)) {
        settle(() => reject(new HostUnreachableError(`nothing listens on ${path}`, true)));
      } else if (!connected && err.code === 'EACCES') {
        settle(() => reject(new HostUnreachableError(`cannot connect to ${path}: permission denied (the toolstack socket is for its owner only)`)));
      } else {
        settle(() => reject(new HostUnreachableError(`${path}: ${err.message}`)));
      }
    });
    socket.on('close', () => settle(() => reject(new HostUnreachableError('the host hung up without answering (is it shutting down?)'))));
  });
}
