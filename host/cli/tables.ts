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
    wordWrap: true,
    wrapOnWordBoundary: true,
  });
  for (const row of rows) table.push([...row]);
  return table
    .toString()
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n');
}
