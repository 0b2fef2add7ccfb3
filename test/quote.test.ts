/** Quoting what a client sent, for messages and logs: the unseen is escaped, the rest shown as it is. */
import t from 'tap';
import { quoteText } from '../shared/quote.js';

t.test('control and format characters are escaped; printable text is not', async (t) => {
  const cases: [string, string][] = [
    ['halt', '"halt"'],
    ['é😀', '"é😀"'],
    ['\0', '"\\u0000"'],
    ['a\nb\tc\rd', '"a\\nb\\tc\\rd"'],
    ['\x7f\x85', '"\\u007f\\u0085"'],
    ['\u200b\u202e\u2028\u2029', '"\\u200b\\u202e\\u2028\\u2029"'],
    ['\ud800', '"\\ud800"'],
    ['\u{e0001}', '"\\u{e0001}"'],
    ['back\\slash "quoted"', '"back\\\\slash \\"quoted\\""'],
  ];
  for (const [text, quoted] of cases) t.equal(quoteText(text), quoted, quoted);
  t.equal(quoteText("it's", "'"), "'it\\'s'", 'the quote asked for is the one escaped');
});
