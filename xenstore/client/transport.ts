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
  /**
   * The transport bounds its own reconnection (a socket waits a while for
   * xenstored to come back, then closes): the client does not give up on a
   * link that breaks often.
   */
  readonly boundsRepairs?: boolean;
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

/**
 * How long a socket client that reconnects waits for xenstored to come back
 * (a crashed daemon is restarted by its supervisor within a second or two)
 * before it gives up and reports the connection closed.
 */
export const RECONNECT_TIMEOUT_MS = 30_000;
/** Pause between attempts to reach a xenstored that is not listening yet. */
export const RECONNECT_RETRY_MS = 50;

export interface SocketConnectOptions {
  /**
   * When xenstored goes away (it crashed and is being restarted), connect
   * again to the same path rather than close: the client fails what was in
   * flight and sets its watches again, as after a ring reconnection.
   */
  reconnect?: boolean;
}

/** A Unix-socket connection to xenstored; it acts as dom0. */
export class SocketClientTransport implements ClientTransport {
  private handlers: ClientTransportHandlers | undefined;
  private closedReported = false;
  private closing = false;
  /** Frames sent while reconnecting, for the new connection. */
  private held: Buffer[] | undefined;
  readonly reconnect: (() => Promise<void>) | undefined;
  /** It waits for xenstored itself, up to RECONNECT_TIMEOUT_MS: the client need not count its repairs. */
  readonly boundsRepairs: boolean;

  private constructor(
    private socket: Socket,
    private readonly path: string,
    options: SocketConnectOptions,
  ) {
    this.boundsRepairs = options.reconnect === true;
    this.reconnect = options.reconnect ? () => this.connectAgain() : undefined;
  }

  static async connect(path: string = xenstoredPath(), options: SocketConnectOptions = {}): Promise<SocketClientTransport> {
    return new SocketClientTransport(await connectSocket(path), path, options);
  }

  start(handlers: ClientTransportHandlers): void {
    this.handlers = handlers;
    this.attach(this.socket);
  }

  send(frame: Buffer): void {
    if (this.held) this.held.push(frame);
    else this.socket.write(frame);
  }

  close(): void {
    this.closing = true;
    this.socket.end();
    this.socket.destroy();
  }

  private attach(socket: Socket): void {
    const handlers = this.handlers!;
    const decoder = new XsFrameDecoder(
      (msg) => {
        if (socket === this.socket) handlers.message(msg);
      },
      (header) => {
        this.reportClosed(new Error(`xenstored sent an oversized payload (${header.len} bytes)`));
        this.close();
      },
    );
    let lastError: Error | undefined;
    socket.on('data', (chunk) => decoder.push(chunk));
    socket.on('error', (err) => {
      lastError = err;
    });
    socket.on('close', () => {
      if (socket !== this.socket) return;
      if (this.reconnect && !this.closing && handlers.broken) handlers.broken(lastError ?? new Error('xenstored closed the connection'));
      else this.reportClosed(lastError);
    });
  }

  /** Connects to the same path again, waiting for a restarted xenstored to listen. */
  private async connectAgain(): Promise<void> {
    this.socket.destroy();
    this.held ??= [];
    const deadline = Date.now() + RECONNECT_TIMEOUT_MS;
    for (;;) {
      if (this.closing) throw new Error('closed while reconnecting');
      try {
        const socket = await connectSocket(this.path);
        if (this.closing) {
          socket.destroy();
          throw new Error('closed while reconnecting');
        }
        this.socket = socket;
        this.attach(socket);
        const held = this.held ?? [];
        this.held = undefined;
        for (const frame of held) socket.write(frame);
        return;
      } catch (err) {
        if (this.closing || Date.now() >= deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, RECONNECT_RETRY_MS));
      }
    }
  }

  private reportClosed(error?: Error): void {
    if (this.closedReported) return;
    this.closedReported = true;
    this.handlers?.closed(error);
  }
}

function connectSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.setNoDelay?.(true);
      resolve(socket);
    });
  });
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
