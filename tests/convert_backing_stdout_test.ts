// convert -B BACKING -F FMT -O qcow2 SRC - (the overlay on stdout, an instar
// extension: qemu-img 7.2 has no stdout target). Each case first runs the
// command into a file through qemu-img and instar (tests/support/convert_compare.ts:
// same output, qemu-img compare, info, map without offsets, check, cluster
// counts), then instar again into a file and through a real pipe to stdout:
// the streamed bytes must be the file's, byte for byte, also with the
// stream's window set below the disk (one guest takes an overlay's disk).
// A raw image on stdin with -B is spooled, not read in one pass, and gives
// what the same bytes in a (non-sparse) file give.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { built, haveQemuImg, instarHere, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { convertQcow2Steps, io } from "./support/convert_compare.ts";
import { nothingLeft, pipeline } from "./support/pipeline.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

// base 4 MiB; top (4 KiB clusters, 6 MiB) over it: data, zeroes beside
// base's data in one 64 KiB cluster (copy-on-write), data past base's end.
const MAKE = [
  "qemu-img create -q -f qcow2 base.qcow2 4M",
  io("base.qcow2", "write -P 1 0 1M", "write -P 6 2080k 4k"),
  "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 6M",
  io(
    "top.qcow2",
    "write -P 2 64k 4k",
    "write -z 1088k 4k",
    "write -z 2M 4k",
    "write -P 5 3080k 4k",
    "write -P 4 5M 12k",
  ),
];

const B = ["-B", "base.qcow2", "-F", "qcow2", "top.qcow2"];
const CASES: { name: string; args: string[] }[] = [
  { name: "plain", args: B },
  { name: "-c", args: ["-c", ...B] },
  { name: "extended L2 entries", args: ["-o", "extended_l2=on", ...B] },
];

/** instar into a file and to stdout (1 MiB stream windows): the same bytes. */
async function streamEqualsFile(dir: string, args: string[]) {
  const cmd = ["convert", "-O", "qcow2", ...args];
  const f = await instarHere([...cmd, "file.qcow2"], dir);
  assertEquals(f.code, 0, f.stderr);
  await Deno.mkdir(`${dir}/spool`, { recursive: true });
  const p = await pipeline(dir, `$I ${cmd.join(" ")} - > piped.qcow2`, { INSTAR_STREAM_WINDOW_MIB: "1" });
  assertEquals(p.code, 0, p.stderr);
  assertEquals(p.stderr, "");
  await sh(dir, "cmp", "file.qcow2", "piped.qcow2");
  nothingLeft(dir, ["base.qcow2", "top.qcow2", "file.qcow2", "piped.qcow2"]);
  for (const n of ["file.qcow2", "piped.qcow2"]) await Deno.remove(`${dir}/${n}`);
}

Deno.test(
  { name: "convert -B to stdout: the file's bytes, which match qemu-img's", ignore: !ready },
  async (t) => {
    await withTempDir(
      "instar-convert-bout-",
      (root) => convertQcow2Steps(t, root, MAKE, CASES, (args) => streamEqualsFile(`${root}/i`, args)),
    );
  },
);

Deno.test(
  { name: "convert -B from a raw stdin: spooled, as the same bytes from a file", ignore: !ready },
  async () => {
    await withTempDir("instar-convert-bin-", async (dir) => {
      for (const l of MAKE) await sh(dir, "sh", "-c", l);
      await sh(dir, "qemu-img", "convert", "-O", "raw", "top.qcow2", "top.raw");
      await sh(dir, "cp", "--sparse=never", "top.raw", "full.raw");
      await Deno.mkdir(`${dir}/spool`);
      const cmd = "convert -f raw -O qcow2 -B base.qcow2 -F qcow2";
      // qemu-img from the non-sparse file (its zeroes read as data, as a spool's do).
      await sh(dir, "sh", "-c", `qemu-img ${cmd} full.raw q.qcow2`);
      const p = await pipeline(dir, `cat top.raw | $I ${cmd} - piped.qcow2`);
      assertEquals(p.code, 0, p.stderr);
      const f = await instarHere([...cmd.split(" "), "full.raw", "file.qcow2"], dir);
      assertEquals(f.code, 0, f.stderr);
      await sh(dir, "cmp", "file.qcow2", "piped.qcow2");
      await sh(dir, "qemu-img", "compare", "q.qcow2", "piped.qcow2");
      await sh(dir, "qemu-img", "check", "piped.qcow2");
      // stdin to stdout too.
      const s = await pipeline(dir, `cat top.raw | $I ${cmd} - - > both.qcow2`);
      assertEquals(s.code, 0, s.stderr);
      await sh(dir, "cmp", "file.qcow2", "both.qcow2");
    });
  },
);
