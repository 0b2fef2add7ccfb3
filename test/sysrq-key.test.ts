/**
 * SysRq keys as xl sends them: one printable character. A NUL, a control
 * character, a blank, a character outside ASCII or more than one
 * character is refused with an error that shows the key, wherever it is
 * asked: on the toolstack socket and in the toolstack's own write.
 */
import t from 'tap';
import { DomainActionError } from '../control/actions.js';
import { SYSRQ_KEY_FIRST, SYSRQ_KEY_LAST, sysrqKeyError } from '../control/protocol.js';
import { writeSysrq } from '../control/toolstack.js';
import { OWN_VERSION, parseRequest, RequestError } from '../host/cli/toolstack-protocol.js';
import type { XenStoreClient } from '../xenstore/client/client.js';

/** Keys that are not keys, with how each is shown in the error. */
const REFUSED: [string, string][] = [
  ['\0', '"\\u0000"'],
  ['\x01', '"\\u0001"'],
  ['\t', '"\\t"'],
  ['\n', '"\\n"'],
  [' ', '" "'],
  ['\x7f', '"\\u007f"'],
  ['\u200b', '"\\u200b"'],
  ['é', '"é"'],
  ['😀', '"😀"'],
  ['', '""'],
  ['ab', '"ab"'],
  ['s\0', '"s\\u0000"'],
];

t.test('a key is one printable ASCII character', async (t) => {
  const accepted: string[] = [];
  for (let code = 0; code < 0x80; code++) if (sysrqKeyError(String.fromCharCode(code)) === undefined) accepted.push(String.fromCharCode(code));
  t.equal(accepted.length, SYSRQ_KEY_LAST - SYSRQ_KEY_FIRST + 1, "'!' to '~', and nothing else below 0x80");
  t.equal(accepted[0], '!');
  t.equal(accepted.at(-1), '~');
  for (const key of ['s', 'b', 'h', '0', '?']) t.equal(sysrqKeyError(key), undefined, `${key} is a key`);
  for (const [key, shown] of REFUSED) {
    t.equal(sysrqKeyError(key), `a SysRq key is one printable character, such as s or b; ${shown} is not`, `${shown} is refused, shown escaped`);
  }
});

t.test('the toolstack socket refuses a request with such a key', async (t) => {
  for (const [key, shown] of REFUSED) {
    const line = JSON.stringify({ version: OWN_VERSION, action: 'sysrq', domain: 'guest', options: { key } });
    t.throws(() => parseRequest(line), new RequestError(`option 'key': a SysRq key is one printable character, such as s or b; ${shown} is not`), shown);
  }
  t.throws(() => parseRequest(JSON.stringify({ version: OWN_VERSION, action: 'sysrq', domain: 'guest' })), new RequestError("sysrq needs option 'key': one printable character, such as s or b"), 'and one without a key');
  t.same(parseRequest(JSON.stringify({ version: OWN_VERSION, action: 'sysrq', domain: 'guest', options: { key: 's' } })).options, { key: 's' }, 'a key is accepted');
});

t.test('the toolstack writes no such key into the domain', async (t) => {
  const written: string[] = [];
  const xs = { write: async (path: string, value: string) => void written.push(`${path}=${value}`) } as unknown as XenStoreClient;
  for (const [key, shown] of REFUSED) {
    await t.rejects(writeSysrq(xs, 2, key), new DomainActionError(`a SysRq key is one printable character, such as s or b; ${shown} is not`), shown);
  }
  t.same(written, [], 'nothing was written');
  await writeSysrq(xs, 2, 's');
  t.same(written, ['/local/domain/2/control/sysrq=s'], 'a key is');
});
