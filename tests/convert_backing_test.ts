// convert -B BACKING -F FMT -O qcow2 (the target as an overlay) against
// qemu-img 7.2: the source's top layer decides (what it leaves unallocated
// stays so, what reads as zeroes becomes zero clusters, not past the backing
// file's end), the header names the backing file as given. Every case runs
// the same command line through qemu-img and instar (tests/support/convert_compare.ts):
// stdout, stderr, exit code, qemu-img compare, info and map (without the
// target's own offsets: instar lays out its qcow2 differently) and check.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  built,
  CLI_ENTRY,
  DENO,
  exec,
  haveQemuImg,
  instarHere,
  qemuImg,
  sh,
  withTempDir,
} from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { compareIn, io, setUp } from "./support/convert_compare.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

const BASE = ["qemu-img create -q -f qcow2 base.qcow2 4M", io("base.qcow2", "write -P 1 0 1M")];
// Data, a zero-flagged cluster, a cluster of written zeroes, a 4 KiB write, all over the base.
const TOP = [
  ...BASE,
  "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
  io("top.qcow2", "write -P 2 64k 64k", "write -z 256k 64k", "write -P 0 512k 64k", "write -P 3 1M 4k"),
];
// A backing file shorter than the image: zeroes past its end stay unallocated.
const SMALL = ["qemu-img create -q -f qcow2 small.qcow2 1M", io("small.qcow2", "write -P 7 0 64k")];
// 512-byte clusters written off qemu's 4 KiB -S alignment: qemu widens the data writes to it.
const FINE = [
  "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 fine.qcow2 4M",
  io("fine.qcow2", "write -P 9 485376 48640", "write -z 2M 3k", "write -P 0 3M 2k", "write -P 8 3147264 512"),
];
const RAW = [
  "qemu-img create -q -f raw src.raw 4M",
  io("-f raw src.raw", "write -P 5 0 100k", "write -P 6 1M 64k"),
];

const OK: { name: string; args: string[]; sameCounts?: boolean }[] = [
  { name: "a chain's top layer over its own base", args: ["-B", "base.qcow2", "-F", "qcow2", "top.qcow2"] },
  { name: "-S 0", args: ["-S", "0", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"] },
  {
    name: "-o backing_file and backing_fmt",
    args: ["-o", "backing_file=base.qcow2,backing_fmt=qcow2", "top.qcow2"],
  },
  {
    name: "compat=0.10 (zeroes written as data)",
    args: ["-o", "compat=0.10", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
  },
  { name: "a backing file named as raw", args: ["-B", "base.qcow2", "-F", "raw", "top.qcow2"] },
  {
    name: "512-byte clusters, data widened to -S's alignment",
    args: ["-o", "cluster_size=512", "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
  },
  {
    name: "a raw source over a shorter backing file",
    args: ["-f", "raw", "-B", "small.qcow2", "-F", "qcow2", "src.raw"],
  },
  {
    name: "a standalone qcow2 source (unallocated reads as zeroes)",
    args: ["-B", "small.qcow2", "-F", "qcow2", "small.qcow2"],
  },
  // -c: the data clusters compressed, the zero clusters as without -c.
  { name: "-c", args: ["-c", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"], sameCounts: true },
  {
    name: "-c -S 0 (zeroes compressed too)",
    args: ["-c", "-S", "0", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    sameCounts: true,
  },
  {
    name: "-c, compat=0.10 (zeroes written plain)",
    args: ["-c", "-o", "compat=0.10", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    sameCounts: true,
  },
  {
    // A short run makes its whole cluster data, read from the source chain (no partial clusters to refuse).
    name: "-c, 64 KiB clusters partly written by a 512-byte-cluster top",
    args: ["-c", "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
    sameCounts: true,
  },
  {
    name: "-c, 1 KiB clusters: zero clusters one by one",
    args: ["-c", "-o", "cluster_size=1024", "-B", "base.qcow2", "-F", "qcow2", "fine.qcow2"],
    sameCounts: true,
  },
  {
    name: "-c, 1-bit refcounts (a host cluster per stream)",
    args: ["-c", "-o", "refcount_bits=1", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    sameCounts: true,
  },
];

Deno.test({ name: "convert -B: targets equal to qemu-img's", ignore: !ready }, async (t) => {
  await withTempDir("instar-convert-b-", async (root) => {
    await setUp(root, [...TOP, ...SMALL, ...RAW, ...FINE]);
    for (const c of OK) {
      await t.step(c.name, async () => {
        await compareIn(root, {
          make: [],
          args: ["convert", "-O", "qcow2", ...c.args, "out.qcow2"],
          sameCounts: c.sameCounts,
        });
      });
    }
  });
});

const ERRORS: { name: string; args: string[] }[] = [
  { name: "-B without -F", args: ["-O", "qcow2", "-B", "base.qcow2"] },
  { name: "-o backing_file without backing_fmt", args: ["-O", "qcow2", "-o", "backing_file=base.qcow2"] },
  { name: "-F without -B", args: ["-O", "qcow2", "-F", "qcow2"] },
  { name: "-F for raw", args: ["-O", "raw", "-F", "qcow2"] },
  { name: "-B for raw", args: ["-O", "raw", "-B", "base.qcow2", "-F", "qcow2"] },
  { name: "-B for vpc", args: ["-O", "vpc", "-B", "base.qcow2", "-F", "qcow2"] },
  { name: "-B for vmdk", args: ["-O", "vmdk", "-B", "base.qcow2", "-F", "qcow2"] },
  { name: "a bad -F", args: ["-O", "qcow2", "-B", "base.qcow2", "-F", "foo"] },
  { name: "a missing backing file", args: ["-O", "qcow2", "-B", "nonexist", "-F", "qcow2"] },
  { name: "a backing file of another format", args: ["-O", "qcow2", "-B", "base.qcow2", "-F", "vpc"] },
  {
    name: "with preallocation",
    args: ["-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata"],
  },
];

Deno.test({ name: "convert -B: qemu-img's refusals, word for word", ignore: !ready }, async () => {
  await withTempDir("instar-convert-b-", async (root) => {
    await setUp(root, TOP);
    for (const c of ERRORS) {
      const { want } = await compareIn(root, {
        make: [],
        args: ["convert", ...c.args, "top.qcow2", "out.qcow2"],
      });
      assertEquals(want.code, 1, c.name);
    }
  });
});

Deno.test({ name: "convert -n -B --target-is-zero: qemu's message, exit 0", ignore: !ready }, async () => {
  await withTempDir("instar-convert-b-", async (dir) => {
    for (const l of [...TOP, "qemu-img create -q -f qcow2 out.qcow2 4M"]) await sh(dir, "sh", "-c", l);
    const args = [
      "convert",
      "-n",
      "--target-is-zero",
      "-O",
      "qcow2",
      "-B",
      "base.qcow2",
      "top.qcow2",
      "out.qcow2",
    ];
    const want = await qemuImg(args, dir);
    const got = await instarHere(args, dir);
    assertEquals(got, { ...want, stderr: want.stderr.replaceAll("qemu-img", "instar") });
  });
});

Deno.test(
  { name: "convert -B: an encrypted overlay to stdout is the file target's image", ignore: !ready },
  async () => {
    // (Target clusters partly written over the backing file: tests/convert_backing_cow_test.ts;
    // extended L2 entries: tests/convert_backing_ext_l2_test.ts; plain stdout: convert_backing_stdout_test.ts.)
    // Encrypted targets go to stdout whole (lib/convert/encrypted_stdout.ts), -B included.
    await withTempDir("instar-convert-b-crypt-", async (dir) => {
      for (const l of TOP) await sh(dir, "sh", "-c", l);
      const args = [
        "convert",
        "--object",
        "secret,id=s,data=pass",
        "-O",
        "qcow2",
        "-B",
        "base.qcow2",
        "-F",
        "qcow2",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s",
        "top.qcow2",
      ];
      const got = await exec(
        "sh",
        ["-c", `"$0" run -A "$@" - > out.qcow2`, DENO, CLI_ENTRY, ...args],
        dir,
      );
      assertEquals(got.code, 0, got.stderr);
      // AES keys are the passphrase: the stream is the file target byte for byte.
      assertEquals((await instarHere([...args, "file.qcow2"], dir)).code, 0);
      assertEquals(
        (await exec("cmp", ["out.qcow2", "file.qcow2"], dir)).code,
        0,
        "stdout differs from the file",
      );
      const info = await qemuImg(["info", "--output=json", "out.qcow2"], dir);
      assertEquals(JSON.parse(info.stdout)["backing-filename"], "base.qcow2");
      // Read through its backing file, it is the top's disk.
      const opts = "driver=qcow2,encrypt.key-secret=s,file.filename=out.qcow2";
      const obj = ["--object", "secret,id=s,data=pass"];
      await sh(dir, "qemu-img", "convert", ...obj, "--image-opts", opts, "-O", "raw", "out.raw");
      await sh(dir, "qemu-img", "convert", "-O", "raw", "top.qcow2", "top.raw");
      assertEquals((await qemuImg(["compare", "-f", "raw", "-F", "raw", "out.raw", "top.raw"], dir)).code, 0);
    });
  },
);
