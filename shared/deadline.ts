/**
 * Whether `work` settles (either way) within `ms`: for waiting on
 * something that must not hold up what comes next for ever. The timer does
 * not outlive the answer, so it keeps no process alive.
 */
export function settlesWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    const settled = () => {
      clearTimeout(timer);
      resolve(true);
    };
    work.then(settled, settled);
  });
}
