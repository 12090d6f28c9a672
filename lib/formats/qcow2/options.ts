// qcow2's create options: the QemuOpts list qemu-img parses `-o` against
// (block/qcow2.c qcow2_create_opts, then the file protocol's options), and
// the step from parsed options to typed ones that qcow2_co_create_opts takes
// through QAPI, with its errors in the order its visitor meets them.
import { appendDescs, FILE_CREATE_OPTS, type OptDesc, optGet, type ParsedOpts } from "../options.ts";
import { fail, ok, type PlanResult } from "../plan.ts";
import type { Prealloc, Qcow2CreateOptions } from "./create_plan.ts";
import { encryptAliasError, qcow2EncryptOptions } from "./create_encrypt.ts";

/** qcow2's own create options, in qemu's list order. */
export const QCOW2_OWN: OptDesc[] = [
  {
    name: "encryption",
    type: "bool",
    help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
  },
  { name: "encrypt.format", type: "string", help: "Encrypt the image, format choices: 'aes', 'luks'" },
  {
    name: "encrypt.key-secret",
    type: "string",
    help: "ID of secret providing qcow AES key or LUKS passphrase",
  },
  { name: "encrypt.cipher-alg", type: "string", help: "Name of encryption cipher algorithm" },
  { name: "encrypt.cipher-mode", type: "string", help: "Name of encryption cipher mode" },
  { name: "encrypt.ivgen-alg", type: "string", help: "Name of IV generator algorithm" },
  { name: "encrypt.ivgen-hash-alg", type: "string", help: "Name of IV generator hash algorithm" },
  { name: "encrypt.hash-alg", type: "string", help: "Name of encryption hash algorithm" },
  { name: "encrypt.iter-time", type: "number", help: "Time to spend in PBKDF in milliseconds" },
  { name: "cluster_size", type: "size", help: "qcow2 cluster size", def: "65536" },
  { name: "extended_l2", type: "bool", help: "Extended L2 tables", def: "off" },
  {
    name: "preallocation",
    type: "string",
    help: "Preallocation mode (allowed values: off, metadata, falloc, full)",
  },
  {
    name: "compression_type",
    type: "string",
    help: "Compression method used for image cluster compression",
    def: "zlib",
  },
  { name: "size", type: "size", help: "Virtual disk size" },
  { name: "compat", type: "string", help: "Compatibility level (v2 [0.10] or v3 [1.1])" },
  { name: "backing_file", type: "string", help: "File name of a base image" },
  { name: "backing_fmt", type: "string", help: "Image format of the base image" },
  { name: "data_file", type: "string", help: "File name of an external data file" },
  { name: "data_file_raw", type: "bool", help: "The external data file must stay valid as a raw image" },
  { name: "lazy_refcounts", type: "bool", help: "Postpone refcount updates", def: "off" },
  { name: "refcount_bits", type: "number", help: "Width of a reference count entry in bits", def: "16" },
];

/** What `-o` is parsed against for `create -f qcow2 FILE`. */
export const QCOW2_CREATE_OPTS: OptDesc[] = appendDescs(QCOW2_OWN, FILE_CREATE_OPTS);

/** qemu's BlockdevDriver names (those built into Debian's qemu-img 7.2). */
const DRIVERS = [
  "blkdebug",
  "blklogwrites",
  "blkreplay",
  "blkverify",
  "bochs",
  "cloop",
  "compress",
  "copy-before-write",
  "copy-on-read",
  "dmg",
  "file",
  "snapshot-access",
  "ftp",
  "ftps",
  "gluster",
  "host_cdrom",
  "host_device",
  "http",
  "https",
  "iscsi",
  "luks",
  "nbd",
  "nfs",
  "null-aio",
  "null-co",
  "nvme",
  "parallels",
  "preallocate",
  "qcow",
  "qcow2",
  "qed",
  "quorum",
  "raw",
  "rbd",
  "replication",
  "ssh",
  "throttle",
  "vdi",
  "vhdx",
  "vmdk",
  "vpc",
  "vvfat",
];

const PREALLOC: Prealloc[] = ["off", "metadata", "falloc", "full"];

const notAccepted = (param: string, value: string) =>
  fail<Qcow2CreateOptions>("invalid_option", `Parameter '${param}' does not accept value '${value}'`);

/**
 * The typed options qcow2_co_create receives, or the first error qemu's
 * QAPI step reports (after "Formatting" has been printed and the file
 * created). External data files are refused: instar does not write them.
 * Encryption (create_encrypt.ts) is visited after backing-fmt, as the
 * member order of BlockdevCreateOptionsQcow2 has it.
 */
export function qcow2CreateOptions(o: ParsedOpts): PlanResult<Qcow2CreateOptions> {
  for (const name of ["data_file", "data_file_raw"]) {
    const v = optGet(o, name);
    if (v && v.bool !== false) {
      return fail("unsupported", `The qcow2 option '${name}' is not supported by instar`);
    }
  }
  const clash = encryptAliasError(o);
  if (clash !== undefined) return fail("invalid_option", clash);
  const compat = optGet(o, "compat")?.str;
  let version: 2 | 3 = 3;
  if (compat !== undefined) {
    const v = compat === "0.10" ? "v2" : compat === "1.1" ? "v3" : compat;
    if (v !== "v2" && v !== "v3") return notAccepted("version", compat);
    version = v === "v2" ? 2 : 3;
  }
  const backingFile = optGet(o, "backing_file")?.str;
  const backingFormat = optGet(o, "backing_fmt")?.str;
  if (backingFormat !== undefined && !DRIVERS.includes(backingFormat)) {
    return notAccepted("backing-fmt", backingFormat);
  }
  const encrypt = qcow2EncryptOptions(o);
  if (!encrypt.ok) return fail(encrypt.error.kind, encrypt.error.message);
  const prealloc = optGet(o, "preallocation")?.str ?? "off";
  if (!PREALLOC.includes(prealloc as Prealloc)) return notAccepted("preallocation", prealloc);
  const compression = optGet(o, "compression_type")?.str ?? "zlib";
  if (compression !== "zlib" && compression !== "zstd") return notAccepted("compression-type", compression);
  const bits = optGet(o, "refcount_bits")?.num ?? 16n;
  // qemu reads refcount-bits as a signed 64-bit integer.
  const signedBits = BigInt.asIntN(64, bits);
  return ok({
    size: optGet(o, "size")?.num ?? 0n,
    version,
    clusterSize: optGet(o, "cluster_size")?.num ?? 65536n,
    refcountBits: signedBits > 0n && signedBits <= 64n ? Number(signedBits) : signedBits > 64n ? 128 : -1,
    extendedL2: optGet(o, "extended_l2")?.bool ?? false,
    lazyRefcounts: optGet(o, "lazy_refcounts")?.bool ?? false,
    compressionType: compression,
    preallocation: prealloc as Prealloc,
    backingFile,
    backingFormat,
    encrypt: encrypt.value,
  });
}
