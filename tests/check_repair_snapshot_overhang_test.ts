// check on overhanging snapshots: more than 65,536 (QCOW_MAX_SNAPSHOTS), or
// entries that take the table past 64 MiB (QCOW_MAX_SNAPSHOTS_SIZE).
// Without -r and with -r leaks qemu 7.2 fails with its hint; with -r all
// qcow2_check_read_snapshot_table drops them, writes the header's count at
// once, and the refcount repair frees their clusters as leaks (the table
// is written anew only beside an incomplete entry or too much extra data).
// The tables are made with tests/support/many_snapshots.ts from images
// qemu-img made, each once; qemu-img checks one copy, instar another:
// stdout, stderr (program name aside), exit code and the files must match.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { makeSnapshotImage, refusedAsQemu, repairBoth } from "./support/check_repair.ts";
import { type ManyOptions, manySnapshots } from "./support/many_snapshots.ts";
import { resizeSnapshotExtras, setBitmapsInUse, setRefcount } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Image {
  /** Snapshots qemu-img makes, and the edit of their table. */
  snapshots: number;
  poke?: (path: string) => void;
  /** Entries of the table manySnapshots makes from them. */
  n: number;
  many: ManyOptions;
  /** A persistent bitmap added before the table is made, every bitmap marked in use. */
  bitmapInUse?: boolean;
}

/** Long names: 1,024 entries of 64 KiB make exactly 64 MiB, the most qemu reads. */
const BIG = 65536;

const IMAGES: Record<string, Image> = {
  // the real snapshot is the one dropped: its L1 table and its share of
  // the data are leaks, the active layer's cluster gets OFLAG_COPIED back
  countEnd: { snapshots: 1, n: 65537, many: { realAt: "end" } },
  // both limits: one snapshot dropped for the count, then the kept entries
  // of 1 KiB of extra data pass 64 MiB some 3,800 before the end; an incomplete
  // entry kept: the table is written anew after the leaks
  countSize: {
    snapshots: 2,
    poke: (p) => resizeSnapshotExtras(p, new Map([[1, 8]])),
    n: 65537,
    many: { realAt: "start", extraLength: 1024 },
  },
  sizeEnd: { snapshots: 1, n: 1030, many: { realAt: "end", entryLength: BIG } },
  // the entry just past 64 MiB has too much extra data: qemu drops (and
  // counts) that before it finds the entry overhanging, and writes the
  // table anew
  sizeEdgeExtra: {
    snapshots: 1,
    poke: (p) => resizeSnapshotExtras(p, new Map([[0, 2000]])),
    n: 1025,
    many: { realAt: "end", entryLength: BIG },
  },
  // a refcount zeroed under the active layer's data: the count is written,
  // then the refcount structures are rebuilt without the dropped snapshots
  sizeRebuild: {
    snapshots: 1,
    poke: (p) => setRefcount(p, 6, 0n),
    n: 1030,
    many: { realAt: "end", entryLength: BIG },
  },
  // 80 MiB of entries, but qemu counts each one's extra data as the 1024
  // bytes it keeps: nothing overhangs, the extra data is dropped
  hugeExtra: { snapshots: 1, n: 6, many: { realAt: "end", extraLength: 16 << 20 } },
  // bitmaps all in use: qemu neither marks nor stores them (with one not
  // in use it would drop every snapshot: instar refuses, snapshot_more_test)
  sizeBitmapsInUse: { snapshots: 1, n: 1030, many: { realAt: "end", entryLength: BIG }, bitmapInUse: true },
  // too much extra data in an entry kept: dropped, the table written anew
  sizeExtra: {
    snapshots: 2,
    poke: (p) => resizeSnapshotExtras(p, new Map([[1, 2000]])),
    n: 1030,
    many: { realAt: "start", entryLength: BIG },
  },
};

// qemu-img takes seconds on each -r all of 65,536 snapshots: json once, on the smaller table.
const CASES: [string, string[]][] = [
  ["countEnd", []],
  ["countEnd", ["-r", "leaks"]],
  ["countSize", ["-r", "all"]],
  ["sizeEnd", []],
  ["sizeEnd", ["-r", "leaks"]],
  ["sizeEnd", ["-r", "all"]],
  ["sizeEnd", ["-r", "all", "--output=json"]],
  ["sizeExtra", ["-r", "all"]],
  ["sizeEdgeExtra", ["-r", "all"]],
  ["sizeRebuild", ["-r", "all"]],
  ["sizeBitmapsInUse", ["-r", "all"]],
  ["hugeExtra", []],
  ["hugeExtra", ["-r", "all"]],
];

Deno.test(
  { name: "check handles overhanging snapshots as qemu-img does", ignore: !ready },
  async (t) => {
    const cache = await Deno.makeTempDir({ prefix: "instar-overhang-" });
    try {
      const made = new Set<string>();
      const image = async (key: string): Promise<string> => {
        const path = `${cache}/${key}.qcow2`;
        if (made.has(key)) return path;
        const im = IMAGES[key], dir = `${cache}/${key}`;
        await Deno.mkdir(dir);
        await makeSnapshotImage(dir, im.snapshots, im.poke ?? (() => {}));
        if (im.bitmapInUse) {
          await sh(dir, "qemu-img", "bitmap", "--add", "img.qcow2", "b0");
          await sh(dir, "qemu-io", "-c", "write -P 7 1M 64k", "img.qcow2");
          setBitmapsInUse(`${dir}/img.qcow2`);
        }
        await manySnapshots(`${dir}/img.qcow2`, path, im.n, im.many);
        await Deno.remove(dir, { recursive: true });
        // qemu-img refuses the table as made
        const q = await qemuImg(["snapshot", "-l", path], cache);
        assertEquals([q.code, /Snapshot table (too large|is too big)|Too much extra/.test(q.stderr)], [
          1,
          true,
        ]);
        made.add(key);
        return path;
      };
      for (const [key, args] of CASES) {
        await t.step(`${key}, ${args.join(" ") || "no -r"}`, async () => {
          const src = await image(key);
          if (args.includes("all")) {
            // (the output ends with qemu's second check of the repaired file)
            const ms = await repairBoth(
              "instar-overhang-",
              args,
              (dir) => Deno.copyFile(src, `${dir}/img.qcow2`),
            );
            // Writing a 64 MiB table of 64 KiB entries anew once took instar
            // 34 s (each entry's write joined to the last by a new copy)
            // where qemu-img takes 0.5 s; now ~3 s.
            if (key === "sizeExtra") {
              assert(
                ms.instarMs < 10 * ms.qemuMs + 10000,
                `instar ${ms.instarMs} ms, qemu-img ${ms.qemuMs} ms`,
              );
            }
            return;
          }
          // qemu fails with its hint naming qemu-img (instar prints it as
          // qemu does); the file stays as it was.
          const dir = await Deno.makeTempDir({ prefix: "instar-overhang-" });
          try {
            await Deno.copyFile(src, `${dir}/img.qcow2`);
            await refusedAsQemu(dir, args);
          } finally {
            await Deno.remove(dir, { recursive: true });
          }
        });
      }
    } finally {
      await Deno.remove(cache, { recursive: true });
    }
  },
);
