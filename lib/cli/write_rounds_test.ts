// splitMoves: the two halves copy_runs guests share cover every byte once, in order.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { type Move, splitMoves } from "./write_rounds.ts";

const M = 1n << 20n;

Deno.test("splitMoves: small lists stay whole unless two guests are forced", () => {
  const moves: Move[] = [{ from: 0n, to: 8n * M, at: 100n * M }];
  assertEquals(splitMoves(moves, M), [moves]);
  assertEquals(splitMoves(moves, M, "2"), [[{ from: 0n, to: 4n * M, at: 100n * M }], [{
    from: 4n * M,
    to: 8n * M,
    at: 104n * M,
  }]]);
  assertEquals(splitMoves(moves, M, "1"), [moves]);
});

Deno.test("splitMoves: the cut lies on the alignment inside the move that crosses the middle", () => {
  const moves: Move[] = [
    { from: 0n, to: 10n * M, at: 50n * M },
    { from: 20n * M, to: 150n * M, at: 200n * M },
  ];
  const [a, b] = splitMoves(moves, 3n * M);
  // 140 MiB in all: the half (70 MiB) falls 60 MiB into the second move, on a multiple of 3 MiB.
  assertEquals(a, [moves[0], { from: 20n * M, to: 78n * M, at: 200n * M }]);
  assertEquals(b, [{ from: 78n * M, to: 150n * M, at: 258n * M }]);
});

Deno.test("splitMoves: a list that cannot be cut in two stays whole", () => {
  const one: Move[] = [{ from: 0n, to: 512n, at: 0n }];
  assertEquals(splitMoves(one, M, "2"), [one]);
});
