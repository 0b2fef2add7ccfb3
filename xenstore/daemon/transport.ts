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
   * Stops serving the peer. `error` says why when it misbehaved. A socket
   * is closed; a ring reports the error through its error field (xs_wire.h
   * XENSTORE_ERROR_*) and stays quiet until the domain reconnects it.
   */
  close(error?: TransportError): void;

  /**
   * Installed by the daemon before any data flows, and again when a ring
   * reconnection starts a fresh connection on the same link.
   */
  attach(handlers: TransportHandlers): void;

  /** Frees what the link holds (a ring's mapping and port): its domain is released or gone. */
  release?(): void;

  /**
   * A ring's output that the domain has not read: since when it has been
   * waiting for room without the domain consuming a byte, or undefined
   * while it has none waiting (or keeps reading). Looks at the ring first,
   * so a domain that read without signalling is not held to account.
   */
  unreadOutputSince?(): number | undefined;
}

export interface TransportHandlers {
  onData(chunk: Buffer): void;
  onWritable(): void;
  /** The link is gone (a socket closed). */
  onClose(): void;
  /** The peer broke the link's own rules (a ring's indexes). */
  onFault(error: TransportError): void;
  /**
   * The peer asked to start over (ring reconnection, xenstore-ring.txt): the
   * link is empty again and everything of the old connection must go.
   */
  onReset?(): void;
}

/** Why the daemon dropped a peer, mapping onto the ring's error field. */
export type TransportError = 'comm' | 'ringidx' | 'proto';
