/** The xenstore layer: the daemon, its store, and the client every layer above uses. */
export { XenStoreClient, ConnectionClosedError, DEFAULT_TRANSACTION_ATTEMPTS, type PermissionEntry, type RequestOptions } from './client/client.js';
export { Watcher, type WatchEvent } from './client/watcher.js';
export { SocketClientTransport, xenstoredPath, type ClientTransport, type ClientTransportHandlers } from './client/transport.js';
export { XenStoreDaemon, type DaemonOptions } from './daemon/xenstored.js';
export { XenStoreSocketServer, DEFAULT_SOCKET_PATH } from './daemon/socket-server.js';
export type { ServerTransport, TransportHandlers, TransportError } from './daemon/transport.js';
export type { DomainBackend } from './daemon/domain-backend.js';
