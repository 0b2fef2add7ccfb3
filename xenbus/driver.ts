import type { XenbusDevice } from './device.js';

/**
 * What a driver does for one device it attached, with the methods of
 * FreeBSD's xenbus interface (xenbus_if.m): the bus calls them one at a
 * time, never two at once for the same device.
 */
export interface DeviceHandler {
  /**
   * The other end's state changed; also called once after attach with its
   * state then, as soon as the other end is there.
   */
  otherendChanged(state: number): Promise<void> | void;
  /** Something under this end's directory changed; `path` is relative to it (`/state`, `/online`). */
  localChanged?(path: string): Promise<void> | void;
  /** The device goes away: release its rings, ports and pages. */
  detach(): Promise<void> | void;
  /**
   * The device stops serving for good on this connection: what is in
   * flight completes and is answered, what was written is made durable,
   * and the backing resources (an image) are let go. Called when the domain
   * shuts down, and on a backend the toolstack takes offline.
   */
  release?(): Promise<void> | void;
  /** The domain is about to be suspended: stop issuing, keep what is in flight. */
  suspend?(): Promise<void> | void;
  /** The domain was resumed (perhaps against another backend): reconnect. */
  resume?(): Promise<void> | void;
}

/**
 * A driver for one device class on one bus (front or back). A new device
 * class is one file implementing this.
 */
export interface XenbusDriver {
  readonly name: string;
  /** The class it drives: the `<class>` of `device/<class>/<id>` or `backend/<class>/...`. */
  readonly deviceClass: string;
  /** Whether it takes this device (when several drivers share a class); all devices if absent. */
  probe?(device: XenbusDevice): boolean | Promise<boolean>;
  /** Sets the device up; a driver that throws leaves an error node and the device Closed. */
  attach(device: XenbusDevice): Promise<DeviceHandler>;
  /** Makes what its devices were written durable (sysrq s, an emergency sync). */
  sync?(): Promise<void>;
  /** The bus stops: release what the driver shares between its devices (I/O workers). */
  close?(): Promise<void> | void;
}
