// `rebase` and `snapshot` with --image-opts against qemu-img 7.2: the image
// operand is a QemuOpts string (driver=, file.filename=), parsed as the other
// commands parse it (lib/cli/image_ref.ts). Two copies of each image made by
// qemu-img/qemu-io; qemu-img runs on one, instar on the other; stdout, stderr
// and exit codes must match, the files be byte-identical (snapshot -c: the
// same `qemu-img info` but for the snapshot dates), and the errors
// (missing file, unknown option, -f with --image-opts, -U on a write, raw
// named by driver= without the probing warning) read as qemu's. An encrypted
// qcow2 is unlocked by encrypt.key-secret (--object secret) for snapshot.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { qemuImgCreate } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** Runs `args` (FILE standing for the copy) as qemu-img on q.* and instar on i.*; asserts the same output. */
async function both(dir: string, args: (who: string) => string[]) {
  const q = await qemuImg(args("q"), dir);
  const i = await instarHere(args("i"), dir);
  const norm = (s: string, who: string) => s.replaceAll(`${who}.`, "X.");
  assertEquals(
    { ...i, stdout: norm(i.stdout, "i"), stderr: norm(i.stderr, "i") },
    { ...asInstar(q), stdout: norm(q.stdout, "q"), stderr: norm(asInstar(q).stderr, "q") },
    `instar ${args("i").join(" ")}`,
  );
}

async function same(dir: string, a: string, b: string) {
  const r = await exec("cmp", [a, b], dir);
  assertEquals(r.code, 0, `${a} and ${b} differ: ${r.stdout}`);
}

async function infoNoDates(dir: string, f: string): Promise<unknown> {
  const j = JSON.parse((await qemuImg(["info", "--output=json", f], dir)).stdout);
  delete j.filename;
  delete j["actual-size"];
  for (const s of j.snapshots ?? []) {
    delete s["date-sec"];
    delete s["date-nsec"];
  }
  return j;
}

Deno.test({
  name: "snapshot --image-opts: -c/-l/-a/-d and the errors as qemu-img",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-io-snap-", async (dir) => {
      await qemuImgCreate(dir, "qcow2", "q.qcow2", "8M");
      await sh(dir, "qemu-io", "-c", "write -P 1 0 1M", "q.qcow2");
      await sh(dir, "qemu-img", "snapshot", "-c", "s0", "q.qcow2");
      await sh(dir, "qemu-io", "-c", "write -P 2 512k 1M", "q.qcow2");
      await sh(dir, "cp", "q.qcow2", "i.qcow2");
      await qemuImgCreate(dir, "raw", "q.raw", "1M");
      await sh(dir, "cp", "q.raw", "i.raw");
      const opts = (who: string, extra = "") => `driver=qcow2,file.filename=${who}.qcow2${extra}`;
      // -c: the same table but for the dates.
      await both(dir, (w) => ["snapshot", "--image-opts", "-c", "s1", opts(w)]);
      assertEquals(await infoNoDates(dir, "i.qcow2"), await infoNoDates(dir, "q.qcow2"));
      // -a and -d: byte-identical (the tables' dates are copies of the same s0).
      await sh(dir, "cp", "q.qcow2", "i.qcow2");
      await both(dir, (w) => ["snapshot", "--image-opts", "-a", "s0", opts(w)]);
      await same(dir, "q.qcow2", "i.qcow2");
      await both(dir, (w) => ["snapshot", "--image-opts", "-d", "s1", `file.filename=${w}.qcow2`]);
      await same(dir, "q.qcow2", "i.qcow2");
      // -l, driver probed.
      const l = (await qemuImg(["snapshot", "--image-opts", "-l", "file.filename=q.qcow2"], dir)).stdout;
      assertEquals(
        (await instarHere(["snapshot", "--image-opts", "-l", "file.filename=i.qcow2"], dir)).stdout,
        l,
      );
      // No action: opened and closed.
      await both(dir, (w) => ["snapshot", "--image-opts", opts(w)]);
      await same(dir, "q.qcow2", "i.qcow2");
      // Errors.
      await both(dir, (w) => ["snapshot", "--image-opts", "-l", `driver=qcow2,file.filename=${w}.none`]);
      await both(dir, (w) => ["snapshot", "--image-opts", "-l", opts(w, ",foo=1")]);
      await both(dir, () => ["snapshot", "--image-opts", "-l", `driver=qcow2`]);
      await both(dir, (w) => ["snapshot", "--image-opts", "-U", "-c", "x", opts(w)]);
      await both(dir, (w) => ["snapshot", "--image-opts", "-l", `driver=nope,file.filename=${w}.qcow2`]);
      // raw named by driver=: no probing warning (instar refuses to probe an unpartitioned raw).
      await both(dir, (w) => ["snapshot", "--image-opts", "-c", "x", `driver=raw,file.filename=${w}.raw`]);
      await both(dir, (w) => ["snapshot", "--image-opts", "-l", `driver=raw,file.filename=${w}.raw`]);
      await same(dir, "q.raw", "i.raw");
    });
  },
});

Deno.test({
  name: "rebase --image-opts: -u and safe mode byte-identical, errors as qemu-img",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-io-rebase-", async (dir) => {
      await qemuImgCreate(dir, "qcow2", "old.qcow2", "4M");
      await sh(dir, "qemu-io", "-c", "write -P 1 0 2M", "old.qcow2");
      await qemuImgCreate(dir, "qcow2", "new.qcow2", "4M");
      await sh(dir, "qemu-io", "-c", "write -P 2 1M 2M", "new.qcow2");
      await qemuImgCreate(dir, "qcow2", "-b", "old.qcow2", "-F", "qcow2", "q.qcow2", "4M");
      await sh(dir, "qemu-io", "-c", "write -P 3 1536k 64k", "q.qcow2");
      await sh(dir, "cp", "q.qcow2", "i.qcow2");
      const opts = (who: string) => `driver=qcow2,file.filename=${who}.qcow2`;
      // Safe mode: the clusters that differ copied, then the header.
      await both(dir, (w) => ["rebase", "--image-opts", "-b", "new.qcow2", "-F", "qcow2", opts(w)]);
      await same(dir, "q.qcow2", "i.qcow2");
      // -u, the driver probed.
      await both(
        dir,
        (w) => ["rebase", "--image-opts", "-u", "-b", "old.qcow2", "-F", "qcow2", `file.filename=${w}.qcow2`],
      );
      await same(dir, "q.qcow2", "i.qcow2");
      await both(dir, (w) => ["rebase", "--image-opts", "-u", "-b", "", opts(w)]);
      await same(dir, "q.qcow2", "i.qcow2");
      // Errors.
      await both(dir, (w) => ["rebase", "--image-opts", "-f", "qcow2", "-u", "-b", "", opts(w)]);
      await both(
        dir,
        (w) => ["rebase", "--image-opts", "-u", "-b", "", `driver=qcow2,file.filename=${w}.none`],
      );
      await both(dir, (w) => ["rebase", "--image-opts", "-u", "-b", "", `${opts(w)},bar=2`]);
      await both(dir, (w) => ["rebase", "--image-opts", "-b", "", `driver=qcow2,file.filename=${w}.none`]);
      await same(dir, "q.qcow2", "i.qcow2");
    });
  },
});

Deno.test({
  name: "snapshot --image-opts of an encrypted qcow2: encrypt.key-secret unlocks it as qemu's open does",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-io-snap-enc-", async (dir) => {
      const obj = ["--object", "secret,id=s0,data=pw"];
      await qemuImgCreate(
        dir,
        "qcow2",
        ...obj,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        "q.qcow2",
        "4M",
      );
      await sh(
        dir,
        "qemu-io",
        ...obj,
        "--image-opts",
        "-c",
        "write -P 1 0 64k",
        "driver=qcow2,encrypt.key-secret=s0,file.filename=q.qcow2",
      );
      await sh(dir, "cp", "q.qcow2", "i.qcow2");
      const opts = (w: string, id = "s0") => `driver=qcow2,encrypt.key-secret=${id},file.filename=${w}.qcow2`;
      await both(dir, (w) => ["snapshot", ...obj, "--image-opts", "-c", "s1", opts(w)]);
      assertEquals(await infoNoDates(dir, "i.qcow2"), await infoNoDates(dir, "q.qcow2"));
      await sh(dir, "cp", "q.qcow2", "i.qcow2");
      await both(dir, (w) => ["snapshot", ...obj, "--image-opts", "-d", "s1", opts(w)]);
      await same(dir, "q.qcow2", "i.qcow2");
      // Errors: no key, an unknown secret, a wrong passphrase.
      await both(dir, (w) => ["snapshot", "-c", "s2", `${w}.qcow2`]);
      await both(dir, (w) => ["snapshot", ...obj, "--image-opts", "-c", "s2", opts(w, "nope")]);
      await both(dir, (w) => [
        "snapshot",
        "--object",
        "secret,id=s0,data=wrong",
        "--image-opts",
        "-c",
        "s2",
        opts(w),
      ]);
      await same(dir, "q.qcow2", "i.qcow2");
    });
  },
});
