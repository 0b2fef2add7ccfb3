/** The views still to transfer after `done` bytes of them moved (a short read or write). */
export function advance(views: Uint8Array[], done: number): Uint8Array[] {
  let skip = done;
  let first = 0;
  while (first < views.length && skip >= views[first]!.length) skip -= views[first++]!.length;
  const rest = views.slice(first);
  if (rest.length > 0 && skip > 0) rest[0] = rest[0]!.subarray(skip);
  return rest;
}
