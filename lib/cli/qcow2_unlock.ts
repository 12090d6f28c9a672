// What qemu's open of an encrypted qcow2 does when the command reads (every
// command but info, which opens with BDRV_O_NO_IO): `encrypt.key-secret` is
// required, its secret must exist and be UTF-8, and for LUKS one key slot of
// the header in the image's header clusters must unlock. The unlock runs in
// the convert_qcrypt guest over an empty range (the master key stays there);
// the legacy AES method has nothing to check (any passphrase is a key). On
// success img.secret holds the passphrase for the guests that read.
import { formats, nameKinds, ops, records } from "../abi/spec.ts";
import { nameBytes } from "../abi/records.ts";
import { runGuest } from "../vmm/guest.ts";
import { ObjectError, type SecretStore } from "../secrets/objects.ts";
import { CRYPT_LUKS, keySecretRequired } from "../formats/qcow2/crypt.ts";
import { kdfMaxIters, type OpenedImage, OpenError } from "./image.ts";

export async function unlockQcow2(
  img: OpenedImage,
  keySecret: string | undefined,
  secrets: SecretStore,
  /** unlockForRead's `defer`: the reading guests unlock (and report a failure as the open error). */
  defer = false,
): Promise<void> {
  if (keySecret === undefined) throw new OpenError(img.filename, keySecretRequired(false));
  let pass: Uint8Array;
  try {
    pass = secrets.passphrase(keySecret);
  } catch (e) {
    if (e instanceof ObjectError) throw new OpenError(img.filename, e.lines.join(" "));
    throw e;
  }
  // (An empty image has no reading guest to try the passphrase: unlocked here.)
  if (defer && img.length > 0n && img.qcow2?.layout.cryptMethod === CRYPT_LUKS) img.unlockPending = true;
  else if (img.qcow2?.layout.cryptMethod === CRYPT_LUKS) {
    let result;
    try {
      result = await runGuest({
        op: "convert_qcrypt",
        opCode: ops.CONVERT,
        inputs: [{ path: img.openPath, format: formats.QCOW2, nofollow: false, secret: pass }],
        // raw mode over the empty range [length, length) (origin there too): nothing is written.
        args: [0n, 0n, 0n, 0n, img.length, img.length, img.length],
        kdfMaxIters: kdfMaxIters(),
        timeoutMs: 24 * 3600 * 1000,
      });
    } catch (e) {
      throw new OpenError(img.filename, `Sandbox failure: ${e instanceof Error ? e.message : String(e)}`);
    }
    const input = result.inputs[0];
    if (!input || input.dev !== img.dev || input.ino !== img.ino) {
      throw new OpenError(img.filename, "File changed while it was being opened");
    }
    const err = result.records.find((r) => r.type === records.ERROR);
    if (err) {
      const quoted = result.records
        .filter((r) => r.type === records.NAME && r.fields.kind === nameKinds.ERROR_TEXT)
        .map((r) => new TextDecoder().decode(nameBytes(r)));
      const f = err.fields;
      const fields = { code: f.code as number, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint };
      throw new OpenError(img.filename, img.driver.openError!(fields, quoted, img.filename));
    }
    if (result.guestStatus !== 0n) {
      throw new OpenError(img.filename, "Sandbox failure: guest reported an error without a reason");
    }
  }
  img.secret = pass;
}
