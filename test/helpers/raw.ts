import { connect, type Socket } from 'node:net';
import { XsFrameDecoder, encodeMessage, type XsMessage } from '../../shared/xs-wire.js';

/**
 * A socket client that sends whatever bytes a test wants, well-formed or not,
 * and collects what comes back, to probe the daemon with bad input.
 */
export class RawConnection {
  private readonly received: XsMessage[] = [];
  private waiter: (() => void) | undefined;
  private reqId = 1;
  readonly closed: Promise<void>;
  isClosed = false;

  private constructor(readonly socket: Socket) {
    const decoder = new XsFrameDecoder(
      (msg) => {
        this.received.push(msg);
        this.waiter?.();
      },
      () => socket.destroy(),
    );
    socket.on('data', (chunk) => decoder.push(chunk));
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.isClosed = true;
        this.waiter?.();
        resolve();
      }),
    );
  }

  static connect(path: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once('error', reject);
      socket.once('connect', () => resolve(new RawConnection(socket)));
    });
  }

  sendBytes(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Sends one framed message; returns its req_id. */
  send(type: number, payload: Buffer | string, txId = 0, reqId = this.reqId++): number {
    const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
    this.socket.write(encodeMessage(type, reqId, txId, body));
    return reqId;
  }

  /** The next message from the daemon; rejects if none comes within `timeoutMs` or the socket closes. */
  async next(timeoutMs = 5000): Promise<XsMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const msg = this.received.shift();
      if (msg) return msg;
      if (this.isClosed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no message from the daemon');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve();
        };
      });
    }
  }

  /** Sends a request and returns its reply (matched by req_id), with its payload as text. */
  async call(type: number, payload: Buffer | string, txId = 0): Promise<{ type: number; text: string; msg: XsMessage }> {
    const reqId = this.send(type, payload, txId);
    for (;;) {
      const msg = await this.next();
      if (msg.reqId === reqId && msg.type !== 15) return { type: msg.type, text: msg.payload.toString('latin1'), msg };
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
