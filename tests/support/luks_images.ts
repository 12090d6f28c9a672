// LUKS test images made by qemu-img, shared by the tests that need one.
import { qemuImg } from "../cli_helpers.ts";

/**
 * qemu-img create -f luks with the passphrase `pw`. Its PBKDF2 calibration
 * fails at random on this machine ("Unable to get accurate CPU usage"), so
 * the create is retried; only eight failures in a row are an error.
 */
export async function qemuLuksImage(
  dir: string,
  name: string,
  size: string,
  opts: string,
  pw: string,
): Promise<void> {
  let last = "";
  for (let i = 0; i < 8; i++) {
    const r = await qemuImg(
      [
        "create",
        "-q",
        "-f",
        "luks",
        "--object",
        `secret,id=s,data=${pw}`,
        "-o",
        `key-secret=s,iter-time=10${opts}`,
        name,
        size,
      ],
      dir,
    );
    if (r.code === 0) return;
    last = r.stderr;
  }
  throw new Error(`qemu-img create -f luks ${opts}: ${last}`);
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
export async function cryptsetupLuks1Image(
  dir: string,
  name: string,
  size: number,
  pw: string,
  extra: string[] = [],
): Promise<void> {
  await Deno.writeFile(`${dir}/${name}`, new Uint8Array(0));
  await Deno.truncate(`${dir}/${name}`, size);
  const p = new Deno.Command("cryptsetup", {
    args: [
      "luksFormat",
      "--batch-mode",
      "--type",
      "luks1",
      "--pbkdf-force-iterations",
      "1000",
      "--key-file",
      "-",
      ...extra,
      name,
    ],
    cwd: dir,
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(pw));
  await w.close();
  const r = await p.output();
  if (!r.success) {
    throw new Error(`cryptsetup luksFormat ${extra.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  }
}
