// `rebase` of a LUKS-encrypted qcow2 against qemu-img 7.2. Unsafe mode (-u)
// with --object secret and --image-opts encrypt.key-secret=: qemu opens the
// image with its key and rewrites only the header (the crypto header
// extension kept), so the file must be byte-identical to qemu-img's; a wrong
// passphrase, an unknown secret and a plain file name (no key) fail with
// qemu's open errors and exit code, nothing written. Safe mode (no -u) into
// an encrypted image is refused by instar after the same key check (qemu
// would copy encrypted clusters; see docs/rebase.md), nothing written. The
// passphrase never shows in instar's output nor in a file it leaves.
import { qemuRetry } from "./support/qcrypt_compare.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();
const PASS = "rebase-pw-0f3a9c";
const OBJ = ["--object", `secret,id=sec0,data=${PASS}`];

async function same(dir: string, a: string, b: string) {
  const r = await exec("cmp", [a, b], dir);
  assertEquals(r.code, 0, `${a} and ${b} differ: ${r.stdout}`);
}

/** base (data), new (other data), top.qcow2: encrypted overlay of base with data of its own. */
async function setup(dir: string) {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M");
  await sh(dir, "qemu-io", "-c", "write -P 1 0 128k", "base.qcow2");
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "new.qcow2", "1M");
  await sh(dir, "qemu-io", "-c", "write -P 2 64k 64k", "new.qcow2");
  const c = await qemuRetry([
    "create",
    "-q",
    "-f",
    "qcow2",
    ...OBJ,
    "-o",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
    "-b",
    "base.qcow2",
    "-F",
    "qcow2",
    "top.qcow2",
    "1M",
  ], dir);
  assertEquals(c.code, 0, c.stderr);
  await sh(
    dir,
    "qemu-io",
    ...OBJ,
    "--image-opts",
    "-c",
    "write -P 3 256k 64k",
    "driver=qcow2,encrypt.key-secret=sec0,file.filename=top.qcow2",
  );
}

const opts = (w: string, id = "sec0") => `driver=qcow2,encrypt.key-secret=${id},file.filename=${w}.qcow2`;

/** Runs `args(who)` as qemu-img on q.qcow2 and instar on i.qcow2 (copies of top.qcow2); same output. */
async function both(dir: string, args: (who: string) => string[]) {
  await sh(dir, "cp", "top.qcow2", "q.qcow2");
  await sh(dir, "cp", "top.qcow2", "i.qcow2");
  const q = await qemuRetry(args("q"), dir);
  const i = await instarHere(args("i"), dir);
  const norm = (s: string, who: string) => s.replaceAll(`${who}.qcow2`, "X.qcow2");
  assertEquals(
    { ...i, stdout: norm(i.stdout, "i"), stderr: norm(i.stderr, "i") },
    { ...asInstar(q), stdout: norm(q.stdout, "q"), stderr: norm(asInstar(q).stderr, "q") },
    `instar ${args("i").join(" ")}`,
  );
  if (i.stderr.includes(PASS) || i.stdout.includes(PASS)) {
    throw new Error("the passphrase leaked into output");
  }
  await same(dir, "q.qcow2", "i.qcow2");
  return i;
}

Deno.test({
  name:
    "rebase of an encrypted qcow2: -u with encrypt.key-secret as qemu does; open errors; safe mode refused",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-rebase-enc-", async (dir) => {
      await setup(dir);
      // The header rewrite, a new backing file and none at all.
      await both(
        dir,
        (w) => ["rebase", ...OBJ, "--image-opts", "-u", "-b", "new.qcow2", "-F", "qcow2", opts(w)],
      );
      const info = await qemuImg(["info", "--output=json", ...OBJ, "--image-opts", opts("i")], dir);
      assertEquals(JSON.parse(info.stdout)["backing-filename"], "new.qcow2");
      assertEquals(JSON.parse(info.stdout).format, "qcow2");
      await both(dir, (w) => ["rebase", ...OBJ, "--image-opts", "-u", "-b", "", opts(w)]);
      // Errors, nothing written: wrong passphrase, unknown secret, no key (plain name).
      await both(dir, (w) => [
        "rebase",
        "--object",
        "secret,id=sec0,data=wrong",
        "--image-opts",
        "-u",
        "-b",
        "new.qcow2",
        "-F",
        "qcow2",
        opts(w),
      ]);
      await both(
        dir,
        (w) => ["rebase", ...OBJ, "--image-opts", "-u", "-b", "new.qcow2", "-F", "qcow2", opts(w, "x")],
      );
      await both(dir, (w) => ["rebase", "-u", "-b", "new.qcow2", "-F", "qcow2", `${w}.qcow2`]);
      // Safe mode (no -u).
      // No key, an unknown secret: qemu's open errors (a wrong passphrase: the -u test's path).
      await both(dir, (w) => ["rebase", "-b", "new.qcow2", "-F", "qcow2", `${w}.qcow2`]);
      await both(
        dir,
        (w) => ["rebase", ...OBJ, "--image-opts", "-b", "new.qcow2", "-F", "qcow2", opts(w, "x")],
      );
      // With the key: one line, exit 1, the file untouched.
      await sh(dir, "cp", "top.qcow2", "i.qcow2");
      const i = await instarHere([
        "rebase",
        ...OBJ,
        "--image-opts",
        "-b",
        "new.qcow2",
        "-F",
        "qcow2",
        opts("i"),
      ], dir);
      assertEquals(i.code, 1);
      assertEquals(
        i.stderr,
        "instar: Could not rebase 'i.qcow2': instar does not copy clusters into an encrypted image (use -u); " +
          "nothing was written\n",
      );
      await same(dir, "top.qcow2", "i.qcow2");
      const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assertEquals(left, ["base.qcow2", "i.qcow2", "new.qcow2", "q.qcow2", "top.qcow2"]);
    });
  },
});
