// The slowest sweeps (every refcount width, layout and preallocation mode of
// resize, ...) run whole with INSTAR_FULL_TESTS=1 (`deno task test:full`);
// the default run (scripts/test.sh, CI) takes every n-th case of each, so it
// stays within its time budget on two cores while every code path keeps a
// case. Which cases are taken is fixed (a stride, not a random draw).
export const FULL_TESTS = Deno.env.get("INSTAR_FULL_TESTS") === "1";

/** All of `cases` under INSTAR_FULL_TESTS=1, else cases 0, n, 2n, ... */
export function sweep<T>(cases: readonly T[], n: number): T[] {
  return FULL_TESTS ? [...cases] : cases.filter((_, i) => i % n === 0);
}
