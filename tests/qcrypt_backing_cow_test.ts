// convert -O qcow2 -o encrypt.format=aes|luks -B BACKING -F FMT where the
// source's top layer writes only part of a target cluster (its clusters are
// smaller than the target's), as qemu-img 7.2 does it: qcow2's COW copies the
// target backing file's bytes into the rest of a data cluster (then encrypts
// the cluster whole), a write-zeroes piece makes a zero cluster when the rest
// reads as zeroes through the backing file, else writes zeroes (COW again).
// The qcow2_encrypt guest reads the target's backing chain
// (guest/ops/backing_requests.c breq_partial, shared with plain targets).
// Each case runs one command line through qemu-img and instar: qemu-img info
// (but for the LUKS uuid and iterations; disk size within a block or two),
// map with the data clusters' offsets, check and the decrypted contents
// (qemu-img compare) equal. Not cmp: qemu's encrypted create lays the L1 and
// refcount tables out in another order than instar's packed output (so with
// or without -B; the data clusters sit where qemu's do). No passphrase in
// any output.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { exec, haveQemuImg, type Outcome, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { instarLuks } from "./support/instar_luks.ts";
import {
  noSecrets,
  qemuOk,
  recordingChildren,
  sameEncrypted,
  smallFilesIn,
} from "./support/qcrypt_compare.ts";

const PW = "instar-qbc-pw-2f6e81";
const PW2 = "instar-qbc-src-c04d5a";
const OBJ = ["--object", `secret,id=s,data=${PW}`, "--object", `secret,id=s2,data=${PW2}`];
const AES = "encrypt.format=aes,encrypt.key-secret=s";
const LUKS = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
const opened = (name: string) => `driver=qcow2,encrypt.key-secret=s,file.filename=${name}`;
const outs: Outcome[] = [];
const argvs: string[][] = [];

async function io(dir: string, file: string[], ...cmds: string[]): Promise<void> {
  const r = await exec("qemu-io", [...cmds.flatMap((c) => ["-c", c]), ...file], dir);
  assertEquals(r.code, 0, r.stderr);
}

/**
 * base: data in its first MiB and at 2 MiB + 32 KiB; other: another pattern,
 * 2 MiB; top (4 KiB clusters over base): data inside base's data, zeroes
 * inside it, zeroes where base reads as zeroes, two zero pieces in one
 * cluster, written zeroes, data past other's end; etop: top's writes in an
 * encrypted qcow2 (its own secret) over base.
 */
async function sources(dir: string): Promise<void> {
  await qemuOk(["create", "-q", "-f", "qcow2", "base.qcow2", "4M"], dir);
  await io(dir, ["base.qcow2"], "write -P 1 0 1M", "write -P 6 2080k 4k");
  await qemuOk(["create", "-q", "-f", "qcow2", "other.qcow2", "2M"], dir);
  await io(dir, ["other.qcow2"], "write -P 7 0 1536k");
  const writes = [
    "write -P 2 64k 4k",
    "write -z 256k 4k",
    "write -z 1088k 4k",
    "write -z 2M 4k",
    "write -z 1536k 4k",
    "write -z 1556k 8k",
    "write -P 0 3M 4k",
    "write -P 5 3080k 4k",
  ];
  const top = ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", ...OBJ];
  await qemuOk([...top, "-o", "cluster_size=4k", "top.qcow2", "4M"], dir);
  await io(dir, ["top.qcow2"], ...writes);
  await qemuOk(
    [...top, "-o", "cluster_size=4k,encrypt.format=aes,encrypt.key-secret=s2", "etop.qcow2", "4M"],
    dir,
  );
  await io(dir, [
    ...OBJ,
    "--image-opts",
    "driver=qcow2,encrypt.key-secret=s2,file.filename=etop.qcow2",
  ], ...writes);
}

/** The same convert through instar and qemu-img: alike in all qemu-img shows. */
async function same(dir: string, src: string[], o: string, extra: string[]): Promise<void> {
  const conv = (out: string) => ["convert", ...OBJ, ...extra, ...src, "-O", "qcow2", "-o", o, out];
  for (const f of ["i.qcow2", "q.qcow2"]) await Deno.remove(`${dir}/${f}`).catch(() => {});
  const what = `${extra.join(" ")} ${src.join(" ")} -o ${o}`;
  const r = await recordingChildren(argvs, () => instarLuks(conv("i.qcow2"), dir));
  outs.push(r);
  assertEquals(r, { stdout: "", stderr: "", code: 0 }, what);
  await qemuOk(conv("q.qcow2"), dir);
  await sameEncrypted(dir, OBJ, opened, "i.qcow2", "q.qcow2", what);
}

const B = (file: string, fmt: string) => ["-B", file, "-F", fmt];
const ETOP = ["--image-opts", "driver=qcow2,encrypt.key-secret=s2,file.filename=etop.qcow2"];

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("convert -B into an encrypted qcow2: target clusters partly written over the backing file", async () => {
    const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
    const before = new Set(await smallFilesIn(tmp));
    await withTempDir("instar-qbc-", async (dir) => {
      await sources(dir);
      await same(dir, ["top.qcow2"], AES, B("base.qcow2", "qcow2"));
      await same(dir, ["top.qcow2"], AES, B("other.qcow2", "qcow2"));
      await same(dir, ["top.qcow2"], AES + ",compat=0.10", B("base.qcow2", "qcow2"));
      await same(dir, ["top.qcow2"], AES, ["-S", "8k", ...B("base.qcow2", "qcow2")]);
      await same(dir, ETOP, AES, B("base.qcow2", "qcow2"));
      await same(dir, ["top.qcow2"], LUKS, B("other.qcow2", "qcow2"));
      const made = (await smallFilesIn(tmp)).filter((f) => !before.has(f));
      await noSecrets([PW, PW2], argvs, outs, [...(await smallFilesIn(dir)), ...made]);
    });
  });
}
