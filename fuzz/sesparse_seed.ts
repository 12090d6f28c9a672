// Seeds for the vmdk_sesparse fuzz target: seSparse extent files from the
// tests' builder (tests/support/sesparse_image.ts), which qemu-img 7.2 reads
// cleanly: data, zero and unmapped grains in one and two grain tables, an
// empty disk, and a partial last grain.
// usage: scripts/deno.sh run -A fuzz/sesparse_seed.ts OUT_DIR
import { type SeGrain, seSparseExtent } from "../tests/support/sesparse_image.ts";

const out = Deno.args[0] ?? ".";
const seeds: [string, bigint, [number, SeGrain][]][] = [
  ["empty", 2048n, []],
  ["one_table", 8192n, [[0, { kind: "data", fill: 0x11 }], [3, { kind: "zero" }], [5, { kind: "unmapped" }]]],
  ["two_tables", 32776n, [[1, { kind: "data", fill: 0x22 }], [4096, { kind: "data", fill: 0x33 }], [4097, {
    kind: "zero",
  }]]],
  ["partial", 8197n, [[1024, { kind: "data", fill: 0x44 }], [1023, { kind: "unmapped" }]]],
];
for (const [name, sectors, grains] of seeds) {
  Deno.writeFileSync(`${out}/sesparse_${name}.vmdk`, seSparseExtent({ sectors, grains: new Map(grains) }));
}
