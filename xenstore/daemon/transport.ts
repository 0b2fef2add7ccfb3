/**
 * The daemon's side of one client link: a Unix socket connection or a
 * domain's xenstore ring. The daemon frames and parses messages itself; a
 * transport only moves bytes and reports flow control.
 */
export interface ServerTransport {
  /** `socket` connections act as dom0; `ring` connections are the domain they belong to. */
  readonly kind: 'socket' | 'ring';
  /** A short description for logs and traces. */
  readonly label: string;

  /**
   * Hands bytes to the peer. Returns false when the transport is full: the
   * daemon keeps further output queued until `onWritable` fires.
   */
  write(bytes: Buffer): boolean;

  /** Stops (and resumes) delivering received bytes, for flow control. */
  pauseReading(): void;
  resumeReading(): void;

  /**
   * Ends the link. `error` says why when the peer misbehaved: a ring
   * transport reports it through the ring's error field (xs_wire.h
   * XENSTORE_ERROR_*), a socket is simply closed.
   */
  close(error?: TransportError): void;

  /** Installed by the daemon once, before any data flows. */
  attach(handlers: TransportHandlers): void;
}

export interface TransportHandlers {
  onData(chunk: Buffer): void;
  onWritable(): void;
  onClose(): void;
}

/** Why the daemon dropped a peer, mapping onto the ring's error field. */
export type TransportError = 'comm' | 'ringidx' | 'proto';
