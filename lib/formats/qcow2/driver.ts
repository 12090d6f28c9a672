// The qcow2 row of the format table: decode of the info guest's records,
// qemu's open-error texts, create (qcow2_co_create_opts: the file is made
// empty first and removed again when creation fails), measure, convert.
import { formats, records } from "../../abi/spec.ts";
import type { CreateHost, DecodedImage, FormatDriver } from "../types.ts";
import { CreateError } from "../types.ts";
import type { ParsedOpts } from "../options.ts";
import { fail, ok } from "../plan.ts";
import { qcow2ErrorMessage } from "./errors.ts";
import { qcow2Model } from "./model.ts";
import { qcow2Bitmaps, qcow2Snapshots } from "./snapshots.ts";
import { QCOW2_CREATE_OPTS, QCOW2_OWN, qcow2CreateOptions } from "./options.ts";
import { qcow2CreatePlan, validateCreate } from "./create_plan.ts";
import { qcow2Measure } from "./measure.ts";
import { qcow2Resize } from "./resize.ts";
import { qcow2CryptErrorText, qcow2Encryption } from "./crypt.ts";
import { qcow2EncryptPrepare, type Qcow2EncryptReady, qcow2EncryptWrite } from "./create_encrypt_run.ts";
import { qcow2StatusLayer } from "./block_status.ts";

async function createQcow2(filename: string, opts: ParsedOpts, host: CreateHost): Promise<void> {
  await host.createFile();
  let ready: Qcow2EncryptReady | undefined;
  try {
    const typed = qcow2CreateOptions(opts);
    if (!typed.ok) throw new CreateError(typed.error.message);
    const plan = qcow2CreatePlan(typed.value);
    if (!plan.ok) throw new CreateError(plan.error.message);
    const encrypt = typed.value.encrypt;
    if (encrypt) ready = await qcow2EncryptPrepare(encrypt, host);
    try {
      for (const step of plan.value.steps) await host.applyPlan(step);
      const range = plan.value.allocate;
      if (range) await host.allocate(range.offset, range.length, typed.value.preallocation);
    } catch (e) {
      if (e instanceof CreateError) throw e;
      const text = host.describe(e);
      if (/File too large/.test(text)) {
        throw new CreateError(
          "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
        );
      }
      throw new CreateError(`Could not write qcow2 image: ${text}`);
    }
    const at = plan.value.cryptHeader;
    if (encrypt && ready && at) await qcow2EncryptWrite(filename, encrypt, ready, at.offset);
  } catch (e) {
    await host.remove();
    throw e;
  } finally {
    ready?.passphrase.fill(0);
  }
}

export const qcow2Driver: FormatDriver = {
  name: "qcow2",
  code: formats.QCOW2,
  statusLayer: qcow2StatusLayer,
  decode(recs, input): DecodedImage {
    const q = qcow2Model(recs, input);
    // The lists come only from an info run (snapshots outside check mode); none at all means not listed.
    const listed = (type: number) => recs.some((r) => r.type === type && r.fields.input === input);
    if (q.nbSnapshots > 0 && listed(records.SNAPSHOT)) {
      q.snapshots = qcow2Snapshots(recs, input, q.nbSnapshots);
    }
    if (q.nbBitmaps > 0 && listed(records.BITMAP)) q.bitmaps = qcow2Bitmaps(recs, input, q.nbBitmaps);
    q.encrypt = qcow2Encryption(recs, input, q.layout.cryptMethod);
    return {
      virtualSize: q.virtualSize,
      // bdrv_getlength: qcow2 keeps whole sectors (total_sectors = size / 512).
      length: q.virtualSize / 512n * 512n,
      clusterSize: q.clusterSize,
      dirty: q.dirty,
      backingFile: q.backingFile,
      backingFormat: q.backingFormat,
      namesDataFile: q.dataFile !== undefined || q.hasDataFileBit,
      qcow2: q,
      encrypted: q.layout.cryptMethod !== 0,
    };
  },
  openError: (e, features) => qcow2CryptErrorText(e, features) ?? qcow2ErrorMessage(e, features),
  check: true,
  create: { options: QCOW2_CREATE_OPTS, own: QCOW2_OWN, run: createQcow2 },
  measure: qcow2Measure,
  convertTarget: {
    spec(opts) {
      const typed = qcow2CreateOptions(opts);
      // Every refusal of the options themselves gets bdrv_create's prefix.
      if (!typed.ok) return fail("invalid_option", typed.error.message);
      const t = typed.value;
      // qcow2_co_create's checks, in its order (the backing ones included).
      const bad = validateCreate(t);
      if (bad !== undefined) return fail("invalid_option", bad);
      return ok({
        writer: "qcow2",
        preallocation: t.preallocation,
        qcow2Create: t,
        qcow2: {
          clusterSize: t.clusterSize,
          // Out-of-range widths reach the planner, which words qemu's refusal.
          refcountBits: t.refcountBits,
          compat: t.version === 2 ? "0.10" : "1.1",
          extendedL2: t.extendedL2,
          lazyRefcounts: t.lazyRefcounts,
          compressionType: t.compressionType,
          // convert -B / -o backing_file: the name stored as given, never opened by the planner.
          backingFile: t.backingFile === undefined ? undefined : new TextEncoder().encode(t.backingFile),
          backingFormat: t.backingFormat,
        },
      });
    },
  },
  resize: qcow2Resize,
};
