/**
 * The command line's tables (list, block-list, status), through cli-table3:
 * plain columns without rules, as xl prints them, fitted to a terminal's
 * width by wrapping the widest cells rather than running off the edge.
 */
import Table from 'cli-table3';

/** The width tables are fitted to: a classic terminal's, what xl's output keeps to. */
export const TABLE_WIDTH = 80;

/** Between two columns. */
const GAP = 2;

/** A column is never squeezed below this, so that a word or a state name stays whole. */
const MIN_COLUMN = 8;

const NO_RULES = {
  top: '', 'top-mid': '', 'top-left': '', 'top-right': '',
  bottom: '', 'bottom-mid': '', 'bottom-left': '', 'bottom-right': '',
  left: '', 'left-mid': '', mid: '', 'mid-mid': '', right: '', 'right-mid': '', middle: '',
};

/**
 * The rows under their heading, each column as wide as its widest line
 * (cells may hold several lines), the widest columns narrowed and wrapped
 * until the table fits `width`.
 */
export function renderTable(head: readonly string[], rows: readonly (readonly string[])[], width = TABLE_WIDTH): string {
  const widths = head.map((title, i) => Math.max(...[title, ...rows.map((row) => row[i] ?? '')].flatMap((cell) => cell.split('\n')).map((line) => line.length)) + GAP);
  const total = () => widths.reduce((sum, w) => sum + w, 0) - GAP;
  while (total() > width) {
    const widest = widths.indexOf(Math.max(...widths));
    if (widths[widest]! <= MIN_COLUMN + GAP) break;
    widths[widest]! -= 1;
  }
  const table = new Table({
    head: [...head],
    chars: NO_RULES,
    style: { head: [], border: [], 'padding-left': 0, 'padding-right': GAP },
    colWidths: widths,
  });
  for (const row of rows) table.push(row.map((cell, i) => wrapCell(cell, widths[i]! - GAP)));
  return table
    .toString()
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n');
}

/**
 * A cell's lines wrapped to `width`: at spaces, and a word longer than the
 * width (an image's path) after a `/` where it can, else wherever it must;
 * nothing is cut off.
 */
export function wrapCell(cell: string, width: number): string {
  const out: string[] = [];
  for (const line of cell.split('\n')) {
    let current = '';
    for (const word of line.split(' ')) {
      const joined = current === '' ? word : `${current} ${word}`;
      if (joined.length <= width) {
        current = joined;
        continue;
      }
      if (current !== '') out.push(current);
      current = '';
      let rest = word;
      while (rest.length > width) {
        const slash = rest.lastIndexOf('/', width);
        const cut = slash > 0 ? slash + 1 : width;
        out.push(rest.slice(0, cut));
        rest = rest.slice(cut);
      }
      current = rest;
    }
    out.push(current);
  }
  return out.join('\n');
}
