// commit (without -d) of an overlay with internal snapshots against
// qemu-img 7.2: qcow2_make_empty cannot empty such an overlay completely and
// discards every cluster instead (lib/formats/qcow2/make_empty_discard.ts):
// L2 tables shared with a snapshot are replaced, clusters a snapshot still
// maps lose one reference, the others are freed and punched. Each chain is
// made by qemu-img/qemu-io, copied to two directories; qemu-img commits one,
// instar the other; stdout, stderr and the exit code must match, the
// overlay be byte-identical (the base: the same contents and check), `qemu-img check` clean, and every
// snapshot of the overlay still read the same.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, exec, haveQemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { commitEmptiedBoth, io } from "./support/commit_pair.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  make: string[];
  /** Snapshot names whose contents are compared after the commit. */
  snaps: string[];
}

const CASES: Case[] = [
  {
    name: "one snapshot, writes after it (a COPIED table with shared entries), a new cluster freed",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 3 512k 1M"),
      "qemu-img snapshot -c s1 ov.qcow2",
      io("ov.qcow2", "write -P 4 3M 128k", "write -P 5 512k 64k"),
    ],
    snaps: ["s1"],
  },
  {
    name: "4 KiB clusters, several tables, missing L1 entries, compressed and zero clusters, two snapshots",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 8M",
      io("base.qcow2", "write -P 1 0 6M"),
      "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ov.qcow2 8M",
      io("ov.qcow2", "write -P 3 100k 300k", "write -c -P 6 2M 64k", "write -z 2200k 64k"),
      "qemu-img snapshot -c s1 ov.qcow2",
      io("ov.qcow2", "write -P 7 120k 8k", "write -c -P 8 4200k 32k", "discard 2M 8k"),
      "qemu-img snapshot -c s2 ov.qcow2",
      io("ov.qcow2", "write -P 9 7M 16k", "write -z 300k 4k"),
    ],
    snaps: ["s1", "s2"],
  },
  {
    name: "compat=0.10 overlay with a snapshot, refcount_bits=4 base",
    make: [
      "qemu-img create -q -f qcow2 -o refcount_bits=4 base.qcow2 2M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ov.qcow2 3M",
      io("ov.qcow2", "write -P 2 64k 192k", "write -P 3 2M 64k"),
      "qemu-img snapshot -c s1 ov.qcow2",
      io("ov.qcow2", "write -P 4 1M 64k"),
    ],
    snaps: ["s1"],
  },
  {
    name: "snapshot taken on an empty overlay, every cluster written after it",
    make: [
      "qemu-img create -q -f qcow2 -o refcount_bits=2 base.qcow2 4M",
      "qemu-img create -q -f qcow2 -o refcount_bits=2,cluster_size=16384 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      "qemu-img snapshot -c empty ov.qcow2",
      io("ov.qcow2", "write -P 5 0 1M", "write -c -P 6 2M 64k"),
    ],
    snaps: ["empty"],
  },
  {
    name: "512 B clusters: 64 L2 tables, most shared, some rewritten after the snapshot",
    make: [
      "qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 2M",
      "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 3 0 768k", "write -P 4 1536k 128k"),
      "qemu-img snapshot -c s ov.qcow2",
      io("ov.qcow2", "write -P 5 128k 128k", "write -P 6 1900k 8k"),
    ],
    snaps: ["s"],
  },
];

async function same(dir: string, a: string, b: string) {
  const r = await exec("cmp", [a, b], dir);
  assertEquals(r.code, 0, `${a} and ${b} differ: ${r.stdout}`);
}

for (const c of CASES) {
  Deno.test({
    name: `commit of an overlay with internal snapshots: ${c.name}`,
    ignore: !ready,
    async fn() {
      await withTempDir("instar-commit-snap-", async (dir) => {
        await commitEmptiedBoth(dir, c.make);
        for (const s of c.snaps) {
          for (const d of ["i", "q"]) {
            await sh(
              `${dir}/${d}`,
              "qemu-img",
              "convert",
              "-l",
              `snapshot.name=${s}`,
              "-O",
              "raw",
              "ov.qcow2",
              `${s}.raw`,
            );
          }
          await same(dir, `q/${s}.raw`, `i/${s}.raw`);
        }
      });
    },
  });
}
