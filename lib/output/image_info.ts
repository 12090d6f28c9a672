// `qemu-img info` output: the ImageInfo QDict (keys inserted in QAPI schema
// order, so the hash order matches qemu's), its JSON form and the human form
// of block/qapi.c bdrv_image_info_dump.
import { ChunkWriter, dumpHuman, QDict, QLazyList, type QValue, writeJsonPretty } from "./qdict.ts";
import { sizeToStr } from "./size.ts";
import type { Qcow2Model } from "../formats/qcow2/model.ts";
import type { LuksModel } from "../formats/luks/model.ts";
import { hasChildren, hasDirtyFlagAndPresent, type Profile } from "./profile.ts";
import { bitmapInfoDict, snapshotInfoDict, snapshotInfoJson, writeSnapshotTable } from "./snapshots.ts";

/** Everything info prints about one image, already decided by the caller. */
export interface ImageFacts {
  filename: string;
  format: string;
  virtualSize: bigint;
  actualSize: bigint | null;
  fileSize: bigint;
  clusterSize?: bigint;
  dirty: boolean;
  backingFilename?: string;
  fullBackingFilename?: string | null;
  backingFormat?: string;
  qcow2?: Qcow2Model;
  vmdk?: VmdkFacts;
  luks?: LuksModel;
  encrypted?: boolean;
}

/** QCryptoBlockInfoLUKS as a QDict (fields in schema order). */
export function luksSpecificData(l: LuksModel, d = new QDict()): QDict {
  d.put("cipher-alg", l.cipherAlg);
  d.put("cipher-mode", l.cipherMode);
  d.put("ivgen-alg", l.ivgenAlg);
  if (l.ivgenHashAlg !== undefined) d.put("ivgen-hash-alg", l.ivgenHashAlg);
  d.put("hash-alg", l.hashAlg);
  // LUKS2 (no qemu 7.2 output to match): the shape of later qemu's LUKS info, which has this member.
  if (l.luks2) d.put("detached-header", false);
  d.put("payload-offset", l.payloadOffset);
  d.put("master-key-iters", l.masterKeyIters);
  d.put("uuid", l.uuid);
  d.put(
    "slots",
    l.slots.map((s) => {
      const e = new QDict();
      e.put("active", s.active);
      if (s.active) {
        e.put("iters", s.iters);
        e.put("stripes", s.stripes);
      }
      e.put("key-offset", s.keyOffset);
      return e;
    }),
  );
  return d;
}

/** ImageInfoSpecificVmdk as info prints it (filenames already resolved). */
export interface VmdkFacts {
  createType: string;
  cid: bigint;
  parentCid: bigint;
  extents: {
    filename: string;
    format: string;
    virtualSize: bigint;
    clusterSize?: bigint;
    compressed: boolean;
  }[];
}

/** ImageInfoSpecificVmdk as a QDict (fields in schema order). */
export function vmdkSpecificData(v: VmdkFacts): QDict {
  const d = new QDict();
  d.put("create-type", v.createType);
  d.put("cid", v.cid);
  d.put("parent-cid", v.parentCid);
  d.put(
    "extents",
    v.extents.map((x) => {
      const e = new QDict();
      e.put("filename", x.filename);
      e.put("format", x.format);
      e.put("virtual-size", x.virtualSize);
      if (x.clusterSize !== undefined) e.put("cluster-size", x.clusterSize);
      if (x.compressed) e.put("compressed", true);
      return e;
    }),
  );
  return d;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** ImageInfoSpecificQCow2Encryption: the flat union's base member, then the LUKS variant's. */
function qcow2EncryptData(e: NonNullable<Qcow2Model["encrypt"]>): QDict {
  if (e.format === "aes") return new QDict().put("format", "aes");
  return luksSpecificData(e.luks, new QDict().put("format", "luks"));
}

/** ImageInfoSpecificQCow2 as a QDict (fields in schema order). */
export function qcow2SpecificData(q: Qcow2Model): QDict {
  const d = new QDict();
  if (q.version === 2) {
    d.put("compat", "0.10");
    d.put("refcount-bits", BigInt(q.refcountBits));
    if (q.encrypt) d.put("encrypt", qcow2EncryptData(q.encrypt));
    d.put("compression-type", q.compressionType);
    return d;
  }
  d.put("compat", "1.1");
  if (q.dataFile) d.put("data-file", text(q.dataFile));
  if (q.hasDataFileBit) d.put("data-file-raw", q.dataFileRaw);
  d.put("extended-l2", q.extendedL2);
  d.put("lazy-refcounts", q.lazyRefcounts);
  d.put("corrupt", q.corrupt);
  d.put("refcount-bits", BigInt(q.refcountBits));
  if (q.encrypt) d.put("encrypt", qcow2EncryptData(q.encrypt));
  // qcow2_get_specific_info lists bitmaps only when there are any.
  if (q.bitmaps?.length) d.put("bitmaps", q.bitmaps.map(bitmapInfoDict));
  d.put("compression-type", q.compressionType);
  return d;
}

function fileChildInfo(f: ImageFacts, profile: Profile): QDict {
  const d = new QDict();
  d.put("filename", f.filename);
  d.put("format", "file");
  if (hasDirtyFlagAndPresent(profile)) d.put("dirty-flag", false);
  if (f.actualSize !== null) d.put("actual-size", f.actualSize);
  d.put("virtual-size", f.fileSize);
  d.put("format-specific", new QDict().put("type", "file").put("data", new QDict()));
  d.put("children", []);
  return d;
}

export function imageInfoDict(f: ImageFacts, profile: Profile): QDict {
  const d = new QDict();
  d.put("filename", f.filename);
  d.put("format", f.format);
  if (hasDirtyFlagAndPresent(profile)) d.put("dirty-flag", f.dirty);
  if (f.actualSize !== null) d.put("actual-size", f.actualSize);
  d.put("virtual-size", f.virtualSize);
  if (f.clusterSize !== undefined) d.put("cluster-size", f.clusterSize);
  if (f.encrypted) d.put("encrypted", true);
  if (f.backingFilename !== undefined) {
    d.put("backing-filename", f.backingFilename);
    if (f.fullBackingFilename) d.put("full-backing-filename", f.fullBackingFilename);
    if (f.backingFormat) d.put("backing-filename-format", f.backingFormat);
  }
  const sn = f.qcow2?.snapshots;
  if (sn?.length) {
    d.put(
      "snapshots",
      new QLazyList(
        sn.length,
        (i) => snapshotInfoDict(sn.at(i)),
        (i, depth) => snapshotInfoJson(sn.at(i), depth),
      ),
    );
  }
  if (f.qcow2) {
    d.put("format-specific", new QDict().put("type", "qcow2").put("data", qcow2SpecificData(f.qcow2)));
  }
  if (f.vmdk) {
    d.put("format-specific", new QDict().put("type", "vmdk").put("data", vmdkSpecificData(f.vmdk)));
  }
  if (f.luks) {
    d.put("format-specific", new QDict().put("type", "luks").put("data", luksSpecificData(f.luks)));
  }
  if (hasChildren(profile)) {
    const child = new QDict().put("name", "file").put("info", fileChildInfo(f, profile));
    d.put("children", [child]);
  }
  return d;
}

/** info's JSON; with `sink` it is handed on in chunks and "" returned. */
export function infoJson(
  list: ImageFacts[],
  chain: boolean,
  profile: Profile,
  sink?: (chunk: string) => void,
): string {
  const v: QValue = chain ? list.map((f) => imageInfoDict(f, profile)) : imageInfoDict(list[0], profile);
  const w = new ChunkWriter(sink);
  writeJsonPretty(v, w);
  w.push("\n");
  w.flush();
  return w.text();
}

function infoHumanOne(f: ImageFacts, profile: Profile, w: ChunkWriter): void {
  let out = `image: ${f.filename}\n` +
    `file format: ${f.format}\n` +
    `virtual size: ${sizeToStr(f.virtualSize)} (${f.virtualSize} bytes)\n` +
    `disk size: ${f.actualSize === null ? "unavailable" : sizeToStr(f.actualSize)}\n`;
  if (f.encrypted) out += "encrypted: yes\n";
  if (f.clusterSize !== undefined) out += `cluster_size: ${f.clusterSize}\n`;
  if (f.dirty) out += "cleanly shut down: no\n";
  if (f.backingFilename !== undefined) {
    out += `backing file: ${f.backingFilename}`;
    if (!f.fullBackingFilename) out += " (cannot determine actual path)";
    else if (f.fullBackingFilename !== f.backingFilename) out += ` (actual path: ${f.fullBackingFilename})`;
    out += "\n";
    if (f.backingFormat) out += `backing file format: ${f.backingFormat}\n`;
  }
  if (f.qcow2?.snapshots?.length) {
    w.push(out);
    writeSnapshotTable(f.qcow2.snapshots, w);
    out = "";
  }
  if (f.qcow2) {
    out += "Format specific information:\n";
    out += dumpHuman(qcow2SpecificData(f.qcow2), 1);
  }
  if (f.vmdk) {
    out += "Format specific information:\n";
    out += dumpHuman(vmdkSpecificData(f.vmdk), 1);
  }
  if (f.luks) {
    out += "Format specific information:\n";
    out += dumpHuman(luksSpecificData(f.luks), 1);
  }
  if (hasChildren(profile)) {
    out += "Child node '/file':\n";
    out += `    filename: ${f.filename}\n`;
    out += "    protocol type: file\n";
    out += `    file length: ${sizeToStr(f.fileSize)} (${f.fileSize} bytes)\n`;
    out += `    disk size: ${f.actualSize === null ? "unavailable" : sizeToStr(f.actualSize)}\n`;
  }
  w.push(out);
}

/** dump_human_image_info_list: images separated by a blank line. With `sink` the
 * text is handed on in chunks and "" returned. */
export function infoHuman(list: ImageFacts[], profile: Profile, sink?: (chunk: string) => void): string {
  const w = new ChunkWriter(sink);
  list.forEach((f, i) => {
    if (i) w.push("\n");
    infoHumanOne(f, profile, w);
  });
  w.flush();
  return w.text();
}
