// amend against qemu-img 7.2: copies of the same qcow2 (data and an internal
// snapshot; v3, v2, 4 KiB clusters with lazy refcounts, an overlay) in two
// directories, one amended by qemu-img, one by instar: stdout, stderr
// (program-name prefix aside: qemu's hints keep their text) and exit code
// must be the same, and the files byte for byte. What instar does not carry
// out yet (a downgrade, a refcount width change, a new size) is refused with
// the file unchanged.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, type Outcome, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** qemu-img's output as instar prints it: only error_report's program-name prefix differs. */
function prefixAsInstar(o: Outcome): Outcome {
  return { ...o, stderr: o.stderr.replace(/^qemu-img:/gm, "instar:") };
}

const LAYOUTS = [[], ["-o", "compat=0.10"], ["-o", "lazy_refcounts=on,cluster_size=4096"], [
  "-b",
  "base.qcow2",
  "-F",
  "qcow2",
]];

const ARGS: string[][] = [
  ["-o", "lazy_refcounts=on"],
  ["-o", "lazy_refcounts=off"],
  ["-o", "compat=1.1"],
  ["-o", "compat=1.1,lazy_refcounts=on"],
  ["-o", "size=64M"],
  ["-o", "backing_file=base.qcow2,backing_fmt=qcow2"],
  ["-p", "-o", "lazy_refcounts=on"],
  // qemu's refusals and option errors
  ["-o", "compat=2"],
  ["-o", "cluster_size=4096"],
  ["-o", "refcount_bits=3"],
  ["-o", "refcount_bits=16"],
  ["-o", "backing_file=base.qcow2"],
  ["-o", "bogus=1"],
  ["-o", "data_file=x"],
  ["-o", "data_file_raw=on"],
  ["-o", "encrypt.state=active"],
  ["-o", "lazy_refcounts=maybe"],
  ["-o", ""],
  ["-o", "compat=v3", "-o", "lazy_refcounts=on"],
  ["-q", "-p", "-o", "lazy_refcounts=on"],
  // help and other formats
  ["-o", "help"],
  ["-f", "qcow2", "-o", "help"],
  ["-f", "raw", "-o", "help"],
  ["-f", "raw", "-o", "size=1G"],
];

Deno.test({ name: "amend does what qemu-img amend does, byte for byte", ignore: !ready }, async (t) => {
  const root = await Deno.makeTempDir({ prefix: "instar-amend-" });
  try {
    for (const [li, layout] of LAYOUTS.entries()) {
      // every case on the first layout, the header-changing ones and a refusal on the others
      for (const args of li === 0 ? ARGS : [...ARGS.slice(0, 5), ARGS[7]]) {
        await t.step(`${layout.join(" ") || "default"}: amend ${args.join(" ")}`, async () => {
          const [qd, id] = [`${root}/q`, `${root}/i`];
          for (const d of [qd, id]) {
            await Deno.remove(d, { recursive: true }).catch(() => {});
            await Deno.mkdir(d);
            await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "64M");
          }
          await sh(qd, "qemu-img", "create", "-q", "-f", "qcow2", ...layout, "o.qcow2", "64M");
          await sh(qd, "qemu-io", "-c", "write -P 1 0 1M", "o.qcow2");
          await sh(qd, "qemu-img", "snapshot", "-c", "s1", "o.qcow2");
          await Deno.copyFile(`${qd}/o.qcow2`, `${id}/o.qcow2`);
          const cmd = ["amend", ...args, "o.qcow2"];
          const q = await qemuImg(cmd, qd);
          assertEquals(await instarHere(cmd, id), prefixAsInstar(q), `instar ${cmd.join(" ")}`);
          assertEquals(
            await Deno.readFile(`${id}/o.qcow2`),
            await Deno.readFile(`${qd}/o.qcow2`),
            "files differ",
          );
        });
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "amend refuses what instar does not carry out yet, writing nothing", ignore: !ready },
  async (t) => {
    const root = await Deno.makeTempDir({ prefix: "instar-amend-" });
    try {
      for (const o of ["compat=0.10", "refcount_bits=8", "size=128M"]) {
        await t.step(o, async () => {
          await sh(root, "qemu-img", "create", "-q", "-f", "qcow2", "img", "64M");
          const before = await Deno.readFile(`${root}/img`);
          const r = await instarHere(["amend", "-o", o, "img"], root);
          assertEquals(r.code, 1, r.stderr);
          assert(/^instar: Could not amend 'img': .*; nothing was written\n$/.test(r.stderr), r.stderr);
          assertEquals(await Deno.readFile(`${root}/img`), before, "the image changed");
        });
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
