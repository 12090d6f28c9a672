// The luks row of the format table: LUKS1 images read (info from the
// header alone, as qemu's info opens with QCRYPTO_BLOCK_OPEN_NO_IO; convert
// and compare through the convert_luks / compare_luks guests, which unlock
// a key slot with the passphrase of the image's key-secret), and LUKS2
// (qemu 7.2 has none: guest/luks2, luks2_model.ts, the convert_luks2 /
// compare_luks2 guests). No check (qemu has none for luks). create -f luks
// makes a LUKS1 image in the luks_write guest (create.ts, write.ts); resize
// changes the file's length past the payload (resize.ts); amend changes
// LUKS1 key slots (amend.ts); LUKS2 is read only (docs/encryption.md).
import { formats, guestErrors } from "../../abi/spec.ts";
import type { DecodedImage, FormatDriver } from "../types.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { luksErrorText } from "./errors.ts";
import { luksModel } from "./model.ts";
import { luks2ErrorText } from "./luks2_errors.ts";
import { luks2Length, luks2Model } from "./luks2_model.ts";
import { LUKS_CREATE_OPTS, LUKS_OWN_OPTS, luksParse } from "./create_options.ts";
import { fail, ok } from "../plan.ts";
import { optGet } from "../options.ts";
import { createLuks } from "./create.ts";
import { luksMeasure } from "./measure.ts";
import { luksResize } from "./resize.ts";

export const luksDriver: FormatDriver = {
  name: "luks",
  code: formats.LUKS,
  decode(recs, input, fileSize): DecodedImage {
    // LUKS2 (guest/luks2/): the data segment, in whole sectors of its sector size.
    const luks2 = luks2Model(recs, input);
    if (luks2) {
      const length = luks2Length(luks2, fileSize);
      return {
        virtualSize: length,
        length,
        dirty: false,
        namesDataFile: false,
        luks: luks2,
        encrypted: true,
      };
    }
    const luks = luksModel(recs, input);
    // block_crypto_co_getlength, rounded to whole sectors by refresh_total_sectors
    // (the guest refused a payload past the end of the file).
    const bytes = fileSize > luks.payloadOffset ? fileSize - luks.payloadOffset : 0n;
    const length = (bytes + 511n) / 512n * 512n;
    return { virtualSize: length, length, dirty: false, namesDataFile: false, luks, encrypted: true };
  },
  openError(e, quoted) {
    const text = e.code === guestErrors.FORMAT
      ? luksErrorText(e.a0, e.a1, e.a2, quoted[quoted.length - 1]) ??
        luks2ErrorText(e.a0, e.a1, e.a2, quoted[quoted.length - 1])
      : undefined;
    return text ?? qcow2ErrorMessage(e, []);
  },
  create: { options: LUKS_CREATE_OPTS, own: LUKS_OWN_OPTS, run: createLuks },
  resize: luksResize,
  measureSizeOnly: true,
  measure: luksMeasure,
  convertTarget: {
    spec(opts) {
      const prealloc = optGet(opts, "preallocation")?.str ?? "off";
      if (!["off", "metadata", "falloc", "full"].includes(prealloc)) {
        return fail("invalid_option", `invalid parameter value: ${prealloc}`);
      }
      const n = luksParse(opts);
      if (!n.ok) return n;
      // Every payload sector is written (encrypted zeroes too): preallocation changes nothing
      // a reader sees, so the file is written the one way.
      return ok({ writer: "luks", preallocation: "off", luks: n.value });
    },
  },
};
