// Writes into qcow2 images with internal snapshots (commit into such a base,
// convert -n into such a target, safe rebase of such an overlay) against
// qemu-img 7.2: the L2 tables and data clusters a snapshot shares are copied
// on write (lib/formats/qcow2/write_plan.ts). Each case makes the images with
// qemu-img/qemu-io (snapshots by `qemu-img snapshot -c`) in two directories,
// runs the command as qemu-img in one and as instar in the other, and asserts
// identical stdout, stderr and exit code; `qemu-img check` clean; the files
// byte-identical where qemu's layout is deterministic; otherwise equal
// contents (`qemu-img compare`) and info; and every snapshot's contents
// (`qemu-img convert -l snapshot.name=...`) equal in both copies.
import { io } from "./cli_helpers.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

interface Case {
  name: string;
  make: string[];
  args: string[];
  /** The file written (its snapshots are compared). */
  target: string;
  /** Also byte-identical to qemu-img's (deterministic layouts). */
  exact: boolean;
  /** Snapshot names of the target. */
  snaps: string[];
}

const CASES: Case[] = [
  {
    name: "commit into a base with a snapshot: shared tables and clusters, compressed ones, zero writes",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 4M",
      io("base.qcow2", "write -P 1 0 1M", "write -P 2 2M 64k", "write -c -P 4 3M 128k"),
      "qemu-img snapshot -c s1 base.qcow2",
      io("base.qcow2", "write -P 7 128k 64k"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 3 512k 1M", "write -z 2M 64k", "write -z 3M 64k", "write -P 5 3584k 4k"),
    ],
    args: ["commit", "ov.qcow2"],
    target: "base.qcow2",
    // qemu's mirror job runs up to 16 requests at once: which of them
    // allocates first varies from run to run (docs/quirks.md).
    exact: false,
    snaps: ["s1"],
  },
  {
    name: "commit -d into a v2 base with two snapshots, 4 KiB clusters",
    make: [
      "qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 base.qcow2 2M",
      io("base.qcow2", "write -P 1 0 1M"),
      "qemu-img snapshot -c a base.qcow2",
      io("base.qcow2", "write -P 2 512k 64k"),
      "qemu-img snapshot -c b base.qcow2",
      "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 3 4k 300k", "write -z 700k 8k", "write -P 5 1500k 64k"),
    ],
    args: ["commit", "-d", "ov.qcow2"],
    target: "base.qcow2",
    exact: false,
    snaps: ["a", "b"],
  },
  {
    name: "commit into a smaller base with a snapshot: the base is grown first",
    make: [
      "qemu-img create -q -f qcow2 base.qcow2 1M",
      io("base.qcow2", "write -P 1 0 512k"),
      "qemu-img snapshot -c s base.qcow2",
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 4 768k 64k", "write -P 6 1536k 64k"),
    ],
    args: ["commit", "ov.qcow2"],
    target: "base.qcow2",
    // Two mirror requests race for the first new cluster (qemu varies).
    exact: false,
    snaps: ["s"],
  },
  {
    name: "convert -n into a target with a snapshot (compressed, shared and unshared clusters)",
    make: [
      "qemu-img create -q -f qcow2 t.qcow2 4M",
      io("t.qcow2", "write -P 1 0 1M", "write -P 2 2M 64k", "write -c -P 4 3M 128k"),
      "qemu-img snapshot -c s1 t.qcow2",
      io("t.qcow2", "write -P 7 128k 64k"),
      "qemu-img create -q -f qcow2 src.qcow2 4M",
      io("src.qcow2", "write -P 3 512k 1M", "write -P 5 3584k 4k"),
    ],
    args: ["convert", "-n", "-O", "qcow2", "src.qcow2", "t.qcow2"],
    target: "t.qcow2",
    exact: true,
    snaps: ["s1"],
  },
  {
    // The last cluster is written only up to the disk's end: the rest of
    // the new cluster is the shared old cluster's (qemu's COW region).
    name: "convert -n of a disk ending inside a shared cluster",
    make: [
      "qemu-img create -q -f qcow2 -o refcount_bits=4 t.qcow2 1000k",
      "qemu-io -f qcow2 -c 'write -P 1 0 1000k' t.qcow2 >/dev/null",
      "qemu-img snapshot -c s1 t.qcow2",
      "qemu-img create -q -f qcow2 src.qcow2 1000k",
      io("src.qcow2", "write -P 9 900k 100k", "write -P 3 0 64k"),
    ],
    args: ["convert", "-n", "-O", "qcow2", "src.qcow2", "t.qcow2"],
    target: "t.qcow2",
    exact: true,
    snaps: ["s1"],
  },
  {
    name: "safe rebase of an overlay with a snapshot",
    make: [
      "qemu-img create -q -f qcow2 old.qcow2 4M",
      io("old.qcow2", "write -P 1 0 2M"),
      "qemu-img create -q -f qcow2 new.qcow2 4M",
      io("new.qcow2", "write -P 1 0 512k"),
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2 4M",
      io("ov.qcow2", "write -P 9 64k 64k", "write -P 9 1M 64k"),
      "qemu-img snapshot -c s1 ov.qcow2",
      io("ov.qcow2", "write -P 8 3M 64k"),
    ],
    args: ["rebase", "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"],
    target: "ov.qcow2",
    exact: true,
    snaps: ["s1"],
  },
  {
    name: 'safe rebase -b "" of an overlay with two snapshots, 16 KiB clusters',
    make: [
      "qemu-img create -q -f qcow2 old.qcow2 2M",
      io("old.qcow2", "write -P 1 0 1M", "write -z 1M 64k"),
      "qemu-img create -q -f qcow2 -o cluster_size=16k -b old.qcow2 -F qcow2 ov.qcow2 2M",
      io("ov.qcow2", "write -P 9 16k 32k"),
      "qemu-img snapshot -c s1 ov.qcow2",
      "qemu-img snapshot -c s2 ov.qcow2",
      io("ov.qcow2", "write -P 8 1500k 16k"),
    ],
    args: ["rebase", "-b", "", "ov.qcow2"],
    target: "ov.qcow2",
    exact: true,
    snaps: ["s1", "s2"],
  },
];

async function make(dir: string, lines: string[]) {
  for (const l of lines) await sh(dir, "sh", "-c", l);
}

/** A snapshot's (or with "" the active layer's) raw contents, through qemu-img convert. */
async function contents(dir: string, file: string, snap: string, out: string) {
  const l = snap === "" ? [] : ["-l", `snapshot.name=${snap}`];
  await sh(dir, "qemu-img", "convert", "-U", "-f", "qcow2", ...l, "-O", "raw", file, out);
}

for (const c of CASES) {
  Deno.test({ name: `snapshot COW writes: ${c.name}`, ignore: !ready }, async () => {
    await withTempDir("instar-snapcow-", async (root) => {
      const q = `${root}/q`, i = `${root}/i`;
      await Deno.mkdir(q);
      await Deno.mkdir(i);
      await make(q, c.make);
      await sh(root, "sh", "-c", "cp -a q/. i/");
      const want = await qemuImg(c.args, q);
      const got = await instarHere(c.args, i);
      assertEquals(got, asInstar(want));
      const chk = await qemuImg(["check", c.target], i);
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
      if (c.exact) {
        const r = await exec("cmp", [`q/${c.target}`, `i/${c.target}`], root);
        assert(r.code === 0, `${c.target} differs from qemu-img's: ${r.stdout}`);
      } else {
        // (The snapshot table was copied with the file: its dates agree.)
        const info = async (d: string) =>
          (await qemuImg(["info", "-U", c.target], d)).stdout.replace(/^disk size: .*$/m, "");
        assertEquals(await info(i), await info(q));
        const cmp = await qemuImg(["compare", "-U", `q/${c.target}`, `i/${c.target}`], root);
        assertEquals(cmp.stdout, "Images are identical.\n", cmp.stdout + cmp.stderr);
      }
      // Every snapshot reads as it did, in both copies alike.
      for (const s of c.snaps) {
        await contents(q, c.target, s, `${root}/q-${s}.raw`);
        await contents(i, c.target, s, `${root}/i-${s}.raw`);
        const r = await exec("cmp", [`q-${s}.raw`, `i-${s}.raw`], root);
        assert(r.code === 0, `snapshot ${s} differs: ${r.stdout}`);
      }
    });
  });
}
