// measure of a LUKS1 source (qemu-img made it) against qemu-img 7.2: the
// same output and exit code for qcow2 (plain, encrypted, other cluster
// sizes), raw and luks targets, human and JSON, and the open errors (no
// key-secret, a wrong passphrase) in qemu's words.
import { qemuRetry } from "./support/qcrypt_compare.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, haveQemuImg, type Outcome, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { qemuLuksImage } from "./support/luks_images.ts";
import { run } from "../lib/cli/run.ts";

const PW = "instar-lmeas-pw-2f61c0";
const OBJ = ["--object", `secret,id=s,data=${PW}`, "--object", "secret,id=bad,data=wrong"];

async function instar(args: string[], cwd: string): Promise<Outcome> {
  let stdout = "", stderr = "";
  const code = await run(args, { out: (t) => (stdout += t), err: (t) => (stderr += t), context: { cwd } });
  return { stdout, stderr, code };
}

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("measure of a LUKS source: qemu-img's numbers and errors", async () => {
    await withTempDir("instar-lmeas-", async (dir) => {
      await qemuLuksImage(dir, "l.luks", "3M", "", PW);
      const targets = [
        ["-O", "qcow2"],
        ["-O", "qcow2", "-o", "cluster_size=4k"],
        ["-O", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10"],
        ["-O", "raw"],
        ["-O", "luks", "-o", "key-secret=s,iter-time=10"],
      ];
      const sources = [
        ["--image-opts", "driver=luks,key-secret=s,file.filename=l.luks"],
        ["-f", "luks", "l.luks"],
        ["--image-opts", "driver=luks,key-secret=bad,file.filename=l.luks"],
      ];
      // Every target with the unlocked source; the open errors and JSON with the first.
      const cases = [
        ...targets.map((t) => [...t, ...sources[0]]),
        ...sources.slice(1).map((src) => [...targets[0], ...src]),
        ["--output=json", ...targets[2], ...sources[0]],
      ];
      for (const c of cases) {
        const args = ["measure", ...OBJ, ...c];
        assertEquals(await instar(args, dir), asInstar(await qemuRetry(args, dir)), args.join(" "));
      }
    });
  });
}
