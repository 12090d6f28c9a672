// amend where qemu 7.2 has to lay out refcount structures in the image it
// amends: qcow2_change_refcount_order's allocations in the old structures
// needing a new refcount block or a larger old table (qcow2_refcount_area),
// and qcow2_expand_zero_clusters allocating the plain zero clusters of an
// overlay (new blocks, a moved table, and L2 tables a snapshot shares: the
// new cluster gets the table's refcount). 512-byte clusters keep refcount
// blocks small, so a few MiB of data bring the file to a block's or the
// table's edge. Each case runs qemu-img amend -p on one copy and instar on
// another and asserts: the same stdout (the progress), stderr and exit
// code; the files byte-identical (cmp); `qemu-img check` clean; `qemu-img
// info --output=json` the same but for actual-size (the file system's
// allocation); the raw contents of the active layer and every snapshot the
// same; and that qemu's own command did grow what the case is about (a new
// entry in the refcount table it started with, or a moved table), so no
// case passes without the growth.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { sameContents, sameFiles } from "./support/growth.ts";

await useHostedGuestsWithoutKvm();
const ready = built() && haveQemuImg();

/** The header's refcount table offset, and the table's first cluster (512-byte clusters). */
async function reftable(path: string): Promise<{ offset: bigint; first: Uint8Array; entries: number }> {
  const b = await Deno.readFile(path);
  const offset = new DataView(b.buffer).getBigUint64(48);
  const first = b.slice(Number(offset), Number(offset) + 512);
  const dv = new DataView(first.buffer);
  let entries = 0;
  for (let i = 0; i < 512; i += 8) if (dv.getBigUint64(i) !== 0n) entries++;
  return { offset, first, entries };
}

/** Whether a copy of `cluster` lies in the file at another 512-byte-aligned offset than `not`. */
async function copiedElsewhere(path: string, cluster: Uint8Array, not: bigint): Promise<boolean> {
  const b = await Deno.readFile(path);
  for (let at = 512; at + 512 <= b.length; at += 512) {
    if (BigInt(at) === not) continue;
    let k = 0;
    while (k < 512 && b[at + k] === cluster[k]) k++;
    if (k === 512) return true;
  }
  return false;
}

async function same(dir: string, label: string) {
  await sameFiles(dir, label);
  await sameContents(dir, label);
}

interface Case {
  name: string;
  create: string;
  /** An overlay of a 16 MiB base full of data. */
  overlay?: boolean;
  /** qemu-io commands, or "snap:NAME" for qemu-img snapshot -c. */
  setup: string[];
  amend: string;
  /** What qemu must have done: moved the table, or added an entry to it. */
  grows: "table" | "block";
}

const CASES: Case[] = [
  {
    // The file ends 2 clusters short of a 64-cluster block: the 16-bit
    // blocks' allocations need a new 64-bit block, hooked into the table.
    name: "refcount_bits 64 -> 16: a new block in the old structures",
    create: "cluster_size=512,refcount_bits=64",
    setup: ["write -P 1 0 985k"],
    amend: "refcount_bits=16",
    grows: "block",
  },
  {
    // The file ends at the 2 MiB the one-cluster table covers.
    name: "refcount_bits 64 -> 16: the old table moves",
    create: "cluster_size=512,refcount_bits=64",
    setup: ["write -P 1 0 1980k"],
    amend: "refcount_bits=16",
    grows: "table",
  },
  {
    // Widening: 250-odd new blocks of 64 entries take the file past the
    // 8 MiB the old table covers, in the middle of a walk.
    name: "refcount_bits 16 -> 64: the old table moves during a walk",
    create: "cluster_size=512,refcount_bits=16",
    setup: ["write -P 1 0 7920k"],
    amend: "refcount_bits=64",
    grows: "table",
  },
  {
    // Plain zero clusters in L2 tables the snapshot shares (each new
    // cluster gets refcount 2), past a refcount block's edge.
    name: "compat=0.10 of an overlay: zero clusters in shared L2 tables",
    create: "cluster_size=512",
    overlay: true,
    setup: [
      "write -P 1 0 1M",
      "write -z 512k 64k",
      "write -z 2M 64k",
      "snap:s1",
      "write -P 3 2M 8k",
      "snap:s2",
    ],
    amend: "compat=0.10",
    grows: "block",
  },
  {
    // 512 zero clusters to allocate from just under 8 MiB: the table moves.
    name: "compat=0.10 of an overlay: the zero clusters move the table",
    create: "cluster_size=512",
    overlay: true,
    setup: ["write -P 1 0 7900k", "write -z 12M 256k"],
    amend: "compat=0.10",
    grows: "table",
  },
];

for (const c of CASES) {
  Deno.test({
    name: `amend with new refcount structures as qemu-img: ${c.name}`,
    ignore: !ready,
    fn: () =>
      withTempDir("instar-amendgrow-", async (dir) => {
        const backing: string[] = [];
        if (c.overlay) {
          await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "16M");
          await sh(dir, "qemu-io", "-c", "write -P 9 0 16M", "b.qcow2");
          backing.push("-b", "b.qcow2", "-F", "qcow2");
        }
        await sh(
          dir,
          "qemu-img",
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          c.create,
          ...backing,
          "q.qcow2",
          "16M",
        );
        for (const s of c.setup) {
          if (s.startsWith("snap:")) await sh(dir, "qemu-img", "snapshot", "-c", s.slice(5), "q.qcow2");
          else await sh(dir, "qemu-io", "-c", s, "q.qcow2");
        }
        await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
        const before = await reftable(`${dir}/q.qcow2`);
        const q = await qemuImg(["amend", "-p", "-o", c.amend, "q.qcow2"], dir);
        const i = await instarHere(["amend", "-p", "-o", c.amend, "i.qcow2"], dir);
        assertEquals(i, { ...q, stderr: q.stderr.replaceAll("qemu-img", "instar") }, c.name);
        assertEquals(q.code, 0, c.name);
        // What qemu did to the table it started with (its bytes stay in the file).
        if (c.grows === "block") {
          const b = await Deno.readFile(`${dir}/q.qcow2`);
          const old = b.subarray(Number(before.offset), Number(before.offset) + 512);
          const dv = new DataView(old.buffer, old.byteOffset, 512);
          let entries = 0;
          for (let k = 0; k < 512; k += 8) if (dv.getBigUint64(k) !== 0n) entries++;
          assert(entries > before.entries, `${c.name}: qemu added no refcount block`);
        } else if (c.amend === "compat=0.10") {
          // The downgraded image keeps the table where qemu moved it.
          assert((await reftable(`${dir}/q.qcow2`)).offset !== before.offset, `${c.name}: the table stayed`);
        } else {
          // A width change leaves a new table anyway; the old-width one qemu
          // moved to (qcow2_refcount_area) starts with the entries the old
          // table held when it filled up: as before the amend (the old table's
          // clusters may be reused once it moved), or as after (when qemu
          // first hooked the last block into it).
          const b = await Deno.readFile(`${dir}/q.qcow2`);
          const now = b.slice(Number(before.offset), Number(before.offset) + 512);
          const full = (x: Uint8Array) => {
            const dv = new DataView(x.buffer, x.byteOffset, 512);
            for (let k = 0; k < 512; k += 8) if (dv.getBigUint64(k) === 0n) return false;
            return true;
          };
          let found = false;
          for (const t of [before.first, now]) {
            if (full(t) && await copiedElsewhere(`${dir}/q.qcow2`, t, before.offset)) found = true;
          }
          assert(found, `${c.name}: qemu did not move the old table`);
        }
        await same(dir, c.name);
      }),
  });
}
