// LUKS test images made by qemu-img, shared by the tests that need one.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { exec, qemuImg } from "../cli_helpers.ts";

/** qemu-img create -f luks with the passphrase `pw` (its flaky PBKDF2 calibration is retried by exec). */
export async function qemuLuksImage(
  dir: string,
  name: string,
  size: string,
  opts: string,
  pw: string,
): Promise<void> {
  const args = ["create", "-q", "-f", "luks", "--object", `secret,id=s,data=${pw}`];
  const r = await qemuImg([...args, "-o", `key-secret=s,iter-time=10${opts}`, name, size], dir);
  if (r.code !== 0) throw new Error(`qemu-img create -f luks ${opts}: ${r.stderr}`);
}

/** Whether cryptsetup runs here (scripts/deps.sh installs cryptsetup-bin). */
export const haveCryptsetup = (() => {
  try {
    return new Deno.Command("cryptsetup", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

/**
 * A LUKS1 file of `size` bytes made by cryptsetup luksFormat with 1000
 * PBKDF2 iterations and the passphrase `pw` (aes-xts-plain64 and sha256
 * unless `extra` says otherwise).
 */
export function cryptsetupLuks1Image(
  dir: string,
  name: string,
  size: number,
  pw: string,
  extra: string[] = [],
): Promise<void> {
  return cryptsetupLuksImage(dir, name, size, pw, [
    "--type",
    "luks1",
    "--pbkdf-force-iterations",
    "1000",
    ...extra,
  ]);
}

/**
 * A LUKS file of `size` bytes made by cryptsetup luksFormat (`--type luks1`
 * or luks2 in `extra`; 1000 PBKDF2 iterations unless `extra` says other),
 * the passphrase `pw` given on stdin.
 */
export async function cryptsetupLuksImage(
  dir: string,
  name: string,
  size: number,
  pw: string,
  extra: string[] = ["--type", "luks1", "--pbkdf-force-iterations", "1000"],
): Promise<void> {
  await Deno.writeFile(`${dir}/${name}`, new Uint8Array(0));
  await Deno.truncate(`${dir}/${name}`, size);
  const p = new Deno.Command("cryptsetup", {
    args: ["luksFormat", "--batch-mode", "--key-file", "-", ...extra, name],
    cwd: dir,
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(pw));
  await w.close();
  const r = await p.output();
  if (!r.success) throw new Error(`cryptsetup ${extra.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

/**
 * cryptsetup reencrypt --encrypt --type luks2 of `dir`/`name` in place (its
 * data moved up past a 2 MiB reduction, 1 MiB of it the header), the
 * passphrase from `dir`/key; `options`: the key slot's PBKDF and its cost,
 * and any cipher, key or sector size.
 */
export async function cryptsetupReencryptLuks2(dir: string, name: string, options: string[]): Promise<void> {
  const cs = await exec("cryptsetup", [
    "reencrypt",
    "--encrypt",
    "--type",
    "luks2",
    "--reduce-device-size",
    "2M",
    ...options,
    name,
    "-q",
    "--batch-mode",
    "--key-file",
    "key",
  ], dir);
  assertEquals(cs.code, 0, cs.stderr);
}
