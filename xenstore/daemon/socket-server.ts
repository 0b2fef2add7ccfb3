import { createServer, type Server, type Socket } from 'node:net';
import { listenPrivately } from '../../shared/private-listen.js';
import { removeOwnSocket, type SocketIdentity } from '../../shared/socket-probe.js';
import type { XenStoreDaemon } from './xenstored.js';
import type { ServerTransport, TransportHandlers } from './transport.js';

/** Where xenstored listens unless told otherwise (libxenstore's default XENSTORED_PATH). */
export const DEFAULT_SOCKET_PATH = '/var/run/xenstored/socket';

/** How long a dropped client may take to read what it was sent before its socket is destroyed. */
const CLOSE_GRACE_MS = 1000;

/** One accepted Unix-socket client; it acts as the privileged domain. */
class SocketTransport implements ServerTransport {
  readonly kind = 'socket';
  readonly label: string;
  private handlers: TransportHandlers | undefined;

  constructor(
    private readonly socket: Socket,
    id: number,
  ) {
    this.label = `socket ${id}`;
    socket.on('data', (chunk) => {
      // Replies to everything in one chunk leave in one write.
      socket.cork();
      this.handlers?.onData(chunk);
      process.nextTick(() => socket.uncork());
    });
    socket.on('drain', () => this.handlers?.onWritable());
    socket.on('close', () => this.handlers?.onClose());
    // Errors (a peer that vanished) are followed by 'close'; nothing else to do.
    socket.on('error', () => {});
  }

  attach(handlers: TransportHandlers): void {
    this.handlers = handlers;
  }

  write(bytes: Buffer): boolean {
    return this.socket.write(bytes);
  }

  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  close(): void {
    this.handlers = undefined;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS).unref();
  }
}

/** Serves the daemon on a Unix socket, as xenstored does for the tools in dom0. */
export class XenStoreSocketServer {
  private server: Server | undefined;
  /** The socket file this server created: the only one it removes. */
  private identity: SocketIdentity | undefined;
  private accepted = 0;

  constructor(
    private readonly daemon: XenStoreDaemon,
    readonly path: string,
  ) {}

  /**
   * Starts listening, replacing a stale socket file as xenstored does. Every
   * client acts as dom0, so only our user may connect, from the first moment
   * on, and a directory others could write to is refused.
   */
  async listen(): Promise<void> {
    const server = createServer({ pauseOnConnect: false }, (socket) => {
      this.daemon.connect(new SocketTransport(socket, ++this.accepted));
    });
    this.identity = await listenPrivately(server, this.path);
    this.server = server;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    // A successor's socket at the same path is not ours to remove.
    removeOwnSocket(this.path, this.identity);
    this.identity = undefined;
  }
}
