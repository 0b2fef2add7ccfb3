/**
 * Text someone sent, quoted for a message or a log line so that it reads
 * as it was sent: control characters (NUL, DEL, C1), format characters (a
 * zero-width space, a bidi override), line and paragraph separators and
 * lone surrogates are escaped (\n, \t and \r by name, the rest as
 * \uXXXX), as are the quote itself and the backslash. Anything else
 * printable, ASCII or not, is shown as it is.
 */
const UNSEEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/u;
const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\t': '\\t', '\r': '\\r', '\\': '\\\\' };

export function quoteText(text: string, quote: '"' | "'" = '"'): string {
  let out = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (NAMED[ch] !== undefined) out += NAMED[ch];
    else if (ch === quote) out += `\\${quote}`;
    else if (UNSEEN.test(ch)) out += cp > 0xffff ? `\\u{${cp.toString(16)}}` : `\\u${cp.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return `${quote}${out}${quote}`;
}
