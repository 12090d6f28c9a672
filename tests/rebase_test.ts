// rebase -u against qemu-img 7.2: copies of the same overlay (with data and
// an internal snapshot) in two directories, one rebased by qemu-img, one by
// instar: stdout, stderr (program name aside), exit code and the file bytes
// must be the same, for qcow2 v2 and v3 layouts and every backing-name case
// (a new name and format, none, a relative path, qemu's refusals). Headers
// instar does not rewrite (bitmaps, an external data file) are refused with
// the file unchanged (safe mode too; tests/rebase_safe_test.ts tests its copying).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instarHere, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const LAYOUTS = [[], ["-o", "compat=0.10"], ["-o", "cluster_size=4096"], [
  "-o",
  "lazy_refcounts=on,extended_l2=on,compression_type=zstd",
]];

const ARGS: string[][] = [
  ["-u", "-b", "other.qcow2", "-F", "qcow2"],
  ["-u", "-b", "../x/y.raw", "-F", "raw"],
  ["-u", "-b", ""],
  ["-u"],
  ["-u", "-b", "", "-F", "qcow2"],
  ["-p", "-u", "-b", "b3", "-F", "raw"],
  ["-q", "-u", "-b", "b3", "-F", "raw", "-t", "none", "-T", "writeback"],
  ["-U", "-u", "-b", "b3", "-F", "vmdk"],
  // qemu's refusals
  ["-u", "-b", "other.qcow2"],
  ["-u", "-b", "b3", "-F", "foo"],
  ["-u", "-b", "b3", "-F", "raw", "-t", "bogus"],
  ["-u", "-b", "a".repeat(1100), "-F", "raw"],
  ["-u", "-b", "b3", "-F", "raw", "-f", "raw"],
  [],
];

Deno.test(
  { name: "rebase -u rewrites the header as qemu-img does, byte for byte", ignore: !ready },
  async (t) => {
    const root = await Deno.makeTempDir({ prefix: "instar-rebase-" });
    try {
      await sh(root, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "64M");
      for (const [li, layout] of LAYOUTS.entries()) {
        // every layout with the first cases, the first layout with all of them
        for (const args of li === 0 ? ARGS : ARGS.slice(0, 3)) {
          await t.step(
            `${layout.join(" ") || "default"}: rebase ${args.join(" ").slice(0, 60)}`,
            async () => {
              const [qd, id] = [`${root}/q`, `${root}/i`];
              for (const d of [qd, id]) await Deno.remove(d, { recursive: true }).catch(() => {});
              await Deno.mkdir(qd);
              await Deno.mkdir(id);
              await sh(
                qd,
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                ...layout,
                "-b",
                "../base.qcow2",
                "-F",
                "qcow2",
                "o.qcow2",
              );
              await sh(qd, "qemu-io", "-c", "write -P 1 0 1M", "o.qcow2");
              await sh(qd, "qemu-img", "snapshot", "-c", "s1", "o.qcow2");
              await Deno.copyFile(`${qd}/o.qcow2`, `${id}/o.qcow2`);
              const cmd = ["rebase", ...args, "o.qcow2"];
              const q = await qemuImg(cmd, qd);
              const i = await instarHere(cmd, id);
              assertEquals(i, asInstar(q), `instar ${cmd.join(" ")}`);
              assertEquals(
                await Deno.readFile(`${id}/o.qcow2`),
                await Deno.readFile(`${qd}/o.qcow2`),
                "files differ",
              );
            },
          );
        }
      }
      await t.step("formats without a backing file: qemu's refusal", async () => {
        for (const fmt of ["raw", "vpc", "vhdx"]) {
          await sh(root, "qemu-img", "create", "-q", "-f", fmt, `x.${fmt}`, "1M");
          const cmd = ["rebase", "-u", "-b", "b", "-F", "raw", "-f", fmt, `x.${fmt}`];
          assertEquals(await instarHere(cmd, root), asInstar(await qemuImg(cmd, root)));
        }
        const missing = ["rebase", "-u", "-b", "b", "-F", "raw", "nonexistent.qcow2"];
        assertEquals(await instarHere(missing, root), asInstar(await qemuImg(missing, root)));
        const safeNoB = ["rebase", "o.qcow2"];
        assertEquals(await instarHere(safeNoB, root), asInstar(await qemuImg(safeNoB, root)));
      });
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  { name: "rebase refuses what instar does not rewrite, writing nothing", ignore: !ready },
  async (t) => {
    const root = await Deno.makeTempDir({ prefix: "instar-rebase-" });
    try {
      const cases: [string, string[], string[], RegExp][] = [
        [
          "safe mode, an enabled persistent bitmap (rebase -u carries bitmaps: bitmaps_kept_test.ts)",
          ["bitmap"],
          ["-b", "", "-F", "raw"],
          /^instar: Could not rebase 'img': .*bitmaps/,
        ],
        [
          "an external data file",
          ["-o", "data_file=img.data"],
          ["-u", "-b", "", "-F", "raw"],
          /^instar: Could not rebase/,
        ],
      ];
      for (const [name, make, args, want] of cases) {
        await t.step(name, async () => {
          if (make[0] === "bitmap") {
            await sh(root, "qemu-img", "create", "-q", "-f", "qcow2", "img", "8M");
            await sh(root, "qemu-img", "bitmap", "--add", "img", "b0");
          } else {
            await sh(root, "qemu-img", "create", "-q", "-f", "qcow2", ...make, "img", "8M");
          }
          const before = await Deno.readFile(`${root}/img`);
          const r = await instarHere(["rebase", ...args, "img"], root);
          assertEquals(r.code, 1, r.stderr);
          assert(want.test(r.stderr), r.stderr);
          assertEquals(await Deno.readFile(`${root}/img`), before, "the image changed");
        });
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
