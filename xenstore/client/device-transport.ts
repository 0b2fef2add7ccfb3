import { xenAddon, type NativeDeviceFile } from '../../shared/xen/addon.js';
import { XsFrameDecoder, XsType } from '../../shared/xs-wire.js';
import type { ClientTransport, ClientTransportHandlers } from './transport.js';

/**
 * The xenstore device of a domain's kernel: what a process in any domain
 * other than the one running xenstored (a driver domain, a guest) talks to
 * xenstored through. The kernel carries each message over the domain's
 * xenstore ring and registers watches itself.
 */
export const XENBUS_DEVICE_PATH = '/dev/xen/xenbus';

/** Opens a device file, calling `onReadable` whenever there is something to read. */
export type DeviceOpener = (path: string, onReadable: () => void) => NativeDeviceFile;

const openNativeDevice: DeviceOpener = (path, onReadable) => new (xenAddon().DeviceFile)(path, onReadable);

/** Bytes read from the device at a time: a whole message of the largest size fits. */
const READ_CHUNK = 4096 + 16;

/**
 * A connection to xenstored through /dev/xen/xenbus, read from the
 * worker's event loop as the device becomes readable. The kernel answers a
 * WATCH itself and fires the watch's first event from its own thread, so
 * the reply and that event arrive in either order; the client accepts both.
 *
 * Requests go one at a time, each after the reply to the one before, as
 * libxenstore sends them (xs_talkv holds its request lock until the reply
 * is in). The device was written for that client: it keeps one message
 * buffer per open file, and older kernels answered a request within the
 * write() that completed it.
 */
export class DeviceClientTransport implements ClientTransport {
  private handlers: ClientTransportHandlers | undefined;
  private decoder: XsFrameDecoder | undefined;
  private readonly chunk = Buffer.alloc(READ_CHUNK);
  private closedReported = false;
  private readonly device: NativeDeviceFile;
  /** Requests waiting for the reply to the one in flight. */
  private readonly queued: Buffer[] = [];
  private awaitingReply = false;

  private constructor(
    readonly path: string,
    openDevice: DeviceOpener,
  ) {
    this.device = openDevice(path, () => this.drain());
  }

  /**
   * Opens the device; throws (naming the path and errno) if it cannot be.
   * `openDevice` stands in for the kernel's device in tests.
   */
  static open(path: string = XENBUS_DEVICE_PATH, openDevice: DeviceOpener = openNativeDevice): DeviceClientTransport {
    return new DeviceClientTransport(path, openDevice);
  }

  start(handlers: ClientTransportHandlers): void {
    this.handlers = handlers;
    this.decoder = new XsFrameDecoder(
      (msg) => {
        // Every request gets exactly one reply; watch events come besides.
        if (msg.type !== XsType.WATCH_EVENT) this.replied();
        handlers.message(msg);
      },
      (header) => {
        this.device.close();
        this.reportClosed(new Error(`xenstored sent an oversized payload (${header.len} bytes) through ${this.path}`));
      },
    );
    this.drain();
  }

  send(frame: Buffer): void {
    if (this.awaitingReply) {
      this.queued.push(frame);
      return;
    }
    this.write(frame);
  }

  private replied(): void {
    this.awaitingReply = false;
    const next = this.queued.shift();
    if (next) this.write(next);
  }

  private write(frame: Buffer): void {
    if (this.closedReported) return;
    this.awaitingReply = true;
    let sent = 0;
    try {
      // The kernel takes a message in pieces and acts on it once it is whole.
      while (sent < frame.length) sent += this.device.write(frame.subarray(sent));
    } catch (err) {
      this.device.close();
      this.reportClosed(err as Error);
    }
  }

  close(): void {
    this.device.close();
  }

  private drain(): void {
    const decoder = this.decoder;
    if (!decoder || this.closedReported) return;
    for (;;) {
      let got: number;
      try {
        got = this.device.read(this.chunk);
      } catch (err) {
        this.device.close();
        this.reportClosed(err as Error);
        return;
      }
      if (got < 0) return;
      if (got === 0) {
        this.device.close();
        this.reportClosed(new Error(`${this.path} reached end of file`));
        return;
      }
      decoder.push(Buffer.from(this.chunk.subarray(0, got)));
    }
  }

  private reportClosed(error?: Error): void {
    if (this.closedReported) return;
    this.closedReported = true;
    this.handlers?.closed(error);
  }
}
