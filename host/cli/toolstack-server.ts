/**
 * The running host's toolstack socket: where `xenmesh domain`, `xenmesh
 * list`, `xenmesh block-attach` and the rest (or anything that writes a
 * JSON line to a Unix socket) ask the host to act on its domains and their
 * disks, as xl asks libxl. Like xenstored's socket, it acts for dom0, so only its owner
 * may connect.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { DomainActionError, type ToolstackAction, type DomainActionOptions } from '../../control/actions.js';
import { createLogger } from '../../shared/log.js';
import { listenPrivately } from '../../shared/private-listen.js';
import { removeOwnSocket, type SocketIdentity } from '../../shared/socket-probe.js';
import { quoteText } from '../../shared/quote.js';
import { LineBuffer, QUERY_ACTIONS, RequestError, formatLine, parseRequest, type DomainReply } from './toolstack-protocol.js';

const log = createLogger('toolstack');

/** The toolstack call the socket serves (runToolstackAction on the host); resolves with what to tell the client. */
export type DomainController = (action: ToolstackAction, domain: string | undefined, options: DomainActionOptions) => Promise<string>;

export class ToolstackServer {
  private server: Server | undefined;
  /** The socket file this server created: the only one it removes. */
  private identity: SocketIdentity | undefined;
  private readonly clients = new Set<Socket>();

  constructor(
    private readonly control: DomainController,
    readonly path: string,
  ) {}

  /**
   * Starts listening, replacing a socket file left by a host that did not
   * stop cleanly. Only dom0's owner may drive the toolstack, as with
   * xenstored's socket: nobody else may connect, from the first moment on,
   * and a directory others could write to is refused.
   */
  async listen(): Promise<void> {
    // Half-open connections stay writable, so that a client that sends its
    // request and then closes its end (`nc -U -N`) still gets the answer.
    const server = createServer({ allowHalfOpen: true }, (socket) => this.serve(socket));
    this.identity = await listenPrivately(server, this.path);
    this.server = server;
  }

  /** Stops listening, drops the clients (their requests' answers go nowhere) and removes the socket file. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of this.clients) socket.destroy();
    await closed;
    // A successor's socket at the same path is not ours to remove.
    removeOwnSocket(this.path, this.identity);
    this.identity = undefined;
  }

  /**
   * One client: its requests are answered one at a time, in the order they
   * came, so that a client may send several on one connection; clients do
   * not wait for each other.
   */
  private serve(socket: Socket): void {
    this.clients.add(socket);
    socket.on('close', () => this.clients.delete(socket));
    // A client that vanished is followed by 'close'; nothing else to do.
    socket.on('error', () => {});
    socket.setEncoding('utf8');
    const lines = new LineBuffer();
    let answered = Promise.resolve();
    let refused = false;
    const send = (reply: DomainReply) => {
      if (!socket.destroyed && socket.writable) socket.write(formatLine(reply));
    };
    const enqueue = (line: string) => {
      if (line.trim() === '') return;
      answered = answered
        .then(async () => send(await this.answer(line)))
        .catch((err: Error) => log.error(`answering a toolstack request: ${err.stack ?? err.message}`));
    };
    socket.on('data', (text: string) => {
      if (refused) return;
      let complete: string[];
      try {
        complete = lines.push(text);
      } catch (err) {
        // A line without end is not a request: say so and hang up rather than buffer it.
        refused = true;
        answered = answered.then(() => {
          send({ ok: false, error: (err as Error).message });
          socket.end();
        });
        return;
      }
      for (const line of complete) enqueue(line);
    });
    socket.on('end', () => {
      if (refused) return;
      for (const line of lines.finish()) enqueue(line);
      void answered.then(() => socket.end());
    });
  }

  private async answer(line: string): Promise<DomainReply> {
    let request;
    try {
      request = parseRequest(line);
    } catch (err) {
      return { ok: false, error: err instanceof RequestError ? err.message : `bad request: ${String(err)}` };
    }
    const { action, options } = request;
    // The domain is as the client wrote it: quoted, so that a newline in it cannot forge a line of the log.
    const domain = request.domain === undefined ? '(every domain)' : quoteText(request.domain, "'");
    // A query changes nothing: its question and its (table-sized) answer are for debugging only.
    const logStep = QUERY_ACTIONS.has(action) ? log.debug.bind(log) : log.info.bind(log);
    logStep(`${action} ${domain} asked on the toolstack socket`);
    try {
      const message = await this.control(action, request.domain, options);
      logStep(`${action} ${domain}: ${message}`);
      return { ok: true, message };
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      // A refusal is the toolstack doing its job; anything else is a fault worth its stack in the host's log.
      if (err instanceof DomainActionError) log.info(`${action} ${domain} refused: ${error}`);
      else log.warn(`${action} ${domain} failed: ${err instanceof Error ? err.stack : error}`);
      return { ok: false, error };
    }
  }
}
