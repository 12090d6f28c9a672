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
