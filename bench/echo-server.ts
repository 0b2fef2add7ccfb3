/**
 * The baseline for `npm run bench:xenstore`: a bare Node Unix-socket server
 * that frames requests exactly as xenstored does (16-byte header and payload)
 * and answers each with a reply of the same size, doing nothing else. The
 * ratio of the daemon's throughput to this one is the cost of the store and
 * the protocol logic.
 */
import { createServer } from 'node:net';
import { rmSync } from 'node:fs';
import { XsFrameDecoder, encodeMessage } from '../shared/xs-wire.js';

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: echo-server <socket>\n');
  process.exit(1);
}
rmSync(path, { force: true });
const server = createServer((socket) => {
  const decoder = new XsFrameDecoder(
    (msg) => socket.write(encodeMessage(msg.type, msg.reqId, msg.txId, msg.payload)),
    () => socket.destroy(),
  );
  socket.on('data', (chunk) => decoder.push(chunk));
  socket.on('error', () => {});
});
server.listen(path, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
