import { statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { XsFrameDecoder, type XsMessage } from '../../shared/xs-wire.js';

/**
 * The client's side of a link to xenstored: a Unix socket now, a domain's
 * end of its xenstore ring on the platform. It moves whole framed messages.
 */
export interface ClientTransport {
  send(frame: Buffer): void;
  /** Installs the receivers; called once by the client before any traffic. */
  start(handlers: ClientTransportHandlers): void;
  close(): void;
  /**
   * Starts the connection over on the same link (a ring's reconnection):
   * whatever was in flight is dropped on both sides.
   */
  reconnect?(): Promise<void>;
}

export interface ClientTransportHandlers {
  message(msg: XsMessage): void;
  /** The link is gone; `error` says why when it did not close cleanly. */
  closed(error?: Error): void;
  /**
   * The link failed in a way a reconnection can repair (xenstored set a
   * ring's error indicator): whatever was in flight is lost, and the
   * client may call `reconnect()`.
   */
  broken?(error: Error): void;
}

/** Where libxenstore looks for the daemon when XENSTORED_PATH is not set. */
export const DEFAULT_XENSTORED_PATH = '/var/run/xenstored/socket';

/** The socket path a client uses: XENSTORED_PATH if set, as libxenstore honours it. */
export function xenstoredPath(): string {
  return process.env['XENSTORED_PATH'] || DEFAULT_XENSTORED_PATH;
}

/** A Unix-socket connection to xenstored; it acts as dom0. */
export class SocketClientTransport implements ClientTransport {
  private handlers: ClientTransportHandlers | undefined;
  private closedReported = false;

  private constructor(private readonly socket: Socket) {}

  static connect(path: string = xenstoredPath()): Promise<SocketClientTransport> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        socket.setNoDelay?.(true);
        resolve(new SocketClientTransport(socket));
      });
    });
  }

  start(handlers: ClientTransportHandlers): void {
    this.handlers = handlers;
    const decoder = new XsFrameDecoder(
      (msg) => handlers.message(msg),
      (header) => {
        this.reportClosed(new Error(`xenstored sent an oversized payload (${header.len} bytes)`));
        this.socket.destroy();
      },
    );
    let lastError: Error | undefined;
    this.socket.on('data', (chunk) => decoder.push(chunk));
    this.socket.on('error', (err) => {
      lastError = err;
    });
    this.socket.on('close', () => this.reportClosed(lastError));
  }

  send(frame: Buffer): void {
    this.socket.write(frame);
  }

  close(): void {
    this.socket.end();
    this.socket.destroy();
  }

  private reportClosed(error?: Error): void {
    if (this.closedReported) return;
    this.closedReported = true;
    this.handlers?.closed(error);
  }
}

/**
 * The link to xenstored as libxenstore's xs_open picks it: the path given
 * (a Unix socket, or a character device such as /dev/xen/xenbus); else the
 * daemon's socket when it is there (XENSTORED_PATH, or the default); else
 * the kernel's xenbus device, as in any domain that does not run xenstored.
 */
export async function openTransport(where?: string): Promise<ClientTransport> {
  const { DeviceClientTransport, XENBUS_DEVICE_PATH } = await import('./device-transport.js');
  const path = where ?? (process.env['XENSTORED_PATH'] || (isSocket(DEFAULT_XENSTORED_PATH) ? DEFAULT_XENSTORED_PATH : XENBUS_DEVICE_PATH));
  if (isCharacterDevice(path)) return DeviceClientTransport.open(path);
  return SocketClientTransport.connect(path);
}

function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

function isCharacterDevice(path: string): boolean {
  try {
    return statSync(path).isCharacterDevice();
  } catch {
    return false;
  }
}
