// The words for each reason the inspect guest gives (INSPECT_FINDING codes,
// lib/abi/spec.ts inspectFindings): the check's name, whose rule it is
// (OpenStack format_inspector's, or instar's stricter one; docs/inspect.md)
// and the message. format_inspector's own messages are kept where it has one.
import { inspectFindings as F, inspectFormats, signatures } from "../abi/spec.ts";

export type Rule = "format_inspector" | "instar";

export interface FindingFields {
  code: number;
  a: bigint[];
  /** Image bytes (a name, a descriptor line), already made printable. */
  text: string;
}

export interface Reason {
  check: string;
  rule: Rule;
  message: string;
}

/** inspectFormats code -> the name inspect prints (format_inspector's names where it has one). */
export const FORMAT_NAMES: Record<number, string> = {
  [inspectFormats.RAW]: "raw",
  [inspectFormats.QCOW2]: "qcow2",
  [inspectFormats.VPC]: "vpc",
  [inspectFormats.VHDX]: "vhdx",
  [inspectFormats.VMDK]: "vmdk",
  [inspectFormats.ISO]: "iso",
  [inspectFormats.GPT]: "gpt",
  [inspectFormats.MBR]: "mbr",
  [inspectFormats.LUKS]: "luks",
  [inspectFormats.QED]: "qed",
  [inspectFormats.VDI]: "vdi",
  [inspectFormats.QCOW1]: "qcow",
  [inspectFormats.PARALLELS]: "parallels",
  [inspectFormats.BOCHS]: "bochs",
  [inspectFormats.CLOOP]: "cloop",
  [inspectFormats.DMG]: "dmg",
};

/** Every format named by the bits of an INSPECT.matches value, in code order. */
export function formatList(bits: bigint | number): string[] {
  const b = BigInt(bits);
  return Object.keys(FORMAT_NAMES).map(Number).filter((c) => (b >> BigInt(c)) & 1n).map((c) =>
    FORMAT_NAMES[c]
  );
}

const SIGNATURE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(signatures).map(([k, v]) => [v, k.toLowerCase()]),
);

const VMDK_FOOTER = [
  "",
  "Header and footer signature do not match",
  "Header and footer versions do not match",
  "Footer specifies a different descriptor than header",
  "Footer indicates another footer",
  "Footer marker is invalid",
  "End-of-stream marker is invalid",
];
const VHDX_RT = [
  "",
  "has no 'regi' signature",
  "has a wrong checksum",
  "has more than 2047 entries",
  "differs from the first copy",
  "has a region not aligned to 1 MiB (or inside the first MiB)",
  "has a region past the end of the file",
];
const GPT_H = [
  "",
  "no 'EFI PART' signature at LBA 1",
  "a wrong header checksum",
  "a header that is not at LBA 1",
];

function quoted(text: string): string {
  return text ? ` '${text}'` : "";
}

/** The reason for one finding; undefined for a code the guest does not send. */
export function describeFinding(f: FindingFields, openError: string | undefined): Reason | undefined {
  const [a0, a1, a2] = f.a;
  const fi = (check: string, message: string): Reason => ({ check, rule: "format_inspector", message });
  const own = (check: string, message: string): Reason => ({ check, rule: "instar", message });
  switch (f.code) {
    case F.MULTIPLE_FORMATS:
      return fi("format", `Multiple formats detected: ${formatList(a0).join(",")}`);
    case F.INCOMPLETE:
      return fi(
        "format",
        `Incomplete file cannot be safety checked (byte ${a0} was not in the inspected window)`,
      );
    case F.OPEN_FAILED:
      return own("open", `qemu-img would refuse to open it: ${openError ?? "the image is invalid"}`);
    case F.UNSUPPORTED_FORMAT:
      return Number(a0) === inspectFormats.QED
        ? fi("banned", "This file format is not allowed")
        : own("format", `instar does not read the ${FORMAT_NAMES[Number(a0)] ?? "unknown"} format`);
    case F.RAW_SIGNATURE:
      return own(
        "raw_signature",
        `Raw image carries a ${SIGNATURE_NAMES[Number(a0)] ?? "foreign"} signature that another reader ` +
          "takes for that format",
      );
    case F.QCOW2_BACKING_FILE:
      return fi("backing_file", `Image has a backing file${quoted(f.text)}`);
    case F.QCOW2_DATA_FILE:
      return fi("data_file", `Image has data_file set${quoted(f.text)}`);
    case F.QCOW2_UNKNOWN_FEATURES:
      return fi("unknown_features", `Unknown QCOW2 features found (incompatible bits 0x${a0.toString(16)})`);
    case F.QCOW2_VERSION:
      return fi("unknown_features", `Unsupported qcow2 version (${a0})`);
    case F.QCOW2_COMPRESSION_TYPE:
      return own(
        "compression_type",
        a2 === 1n
          ? "Compression type feature bit set in a header without the compression type field"
          : a1 === 1n
          ? `Compression type ${a0} set without the compression type feature bit`
          : `Unknown compression type ${a0}`,
      );
    case F.QCOW2_L1_PAST_END:
      return own(
        "l1_table",
        `L1 table (offset ${a0}, ${a1} bytes) reaches past the end of the file (${a2} bytes)`,
      );
    case F.QCOW2_REFTABLE_PAST_END:
      return own(
        "refcount_table",
        `Refcount table (offset ${a0}, ${a1} bytes) reaches past the end of the file (${a2} bytes)`,
      );
    case F.QCOW2_ENCRYPTED:
      return own("encrypted", `Image is encrypted (crypt_method ${a0})`);
    case F.QCOW2_CORRUPT:
      return own("corrupt", "Image is marked corrupt");
    case F.VMDK_NO_DESCRIPTOR:
      return fi("descriptor", a0 === 1n ? "Invalid VMDK descriptor data (not ASCII)" : "No descriptor found");
    case F.VMDK_SUBFORMAT:
      return fi("descriptor", `Unsupported subformat${quoted(f.text)}`);
    case F.VMDK_BAD_LINE:
      return fi("descriptor", `Invalid VMDK descriptor data${quoted(f.text)}`);
    case F.VMDK_EXTENT_PATH:
      return fi("descriptor", `Invalid extent filenames found${quoted(f.text)}`);
    case F.VMDK_NO_EXTENTS:
      return fi("descriptor", "No extents found");
    case F.VMDK_EXTENT_FILE:
      return own("extent_file", `An extent names another file${quoted(f.text)}`);
    case F.VMDK_DESC_TOO_LONG:
      return own("descriptor_length", `Descriptor is ${a0} bytes long (more than ${a1})`);
    case F.VMDK_DESC_LOCATION:
      return fi("descriptor", `Wrong descriptor location (offset ${a0})`);
    case F.VMDK_VERSION:
      return fi("descriptor", `Unsupported format version ${a0}`);
    case F.VMDK_FOOTER:
      return VMDK_FOOTER[Number(a0)] ? fi("footer", VMDK_FOOTER[Number(a0)]) : undefined;
    case F.VMDK_PARENT:
      return own("parent", `Image names a parent${quoted(f.text)}`);
    case F.VPC_PARENT:
      return own(
        "parent",
        a0 === 4n ? "Image is a differencing disk (it has a parent)" : `Image has ${a1} parent locator(s)`,
      );
    case F.VHDX_PARENT:
      return own("parent", "Image is a differencing disk (it has a parent)");
    case F.VHDX_REGION_TABLE:
      if (Number(a0) === 4) return own("region_table", "The two region table copies differ");
      if (!VHDX_RT[Number(a0)]) return undefined;
      return own(
        "region_table",
        `Region table ${Number(a0) >= 5 ? `entry ${a1}` : `copy ${a1 + 1n}`} ${VHDX_RT[Number(a0)]}`,
      );
    case F.MBR_BOOT_FLAG:
      return fi("mbr", `MBR PTE ${a0} has invalid boot flag`);
    case F.GPT_START_CHS:
      return fi("mbr", "GPT MBR has invalid start CHS");
    case F.GPT_START_LBA:
      return fi("mbr", "GPT MBR has invalid start LBA");
    case F.GPT_EXTRA_PARTITIONS:
      return fi("mbr", "GPT MBR defines invalid extra partitions");
    case F.MBR_NO_PARTITIONS:
      return fi("mbr", "GPT MBR has no partitions defined");
    case F.GPT_HEADER:
      if (Number(a0) === 4) return own("gpt_header", "GPT backup header is missing, broken or misplaced");
      return GPT_H[Number(a0)] ? own("gpt_header", `Protective MBR with ${GPT_H[Number(a0)]}`) : undefined;
    case F.LUKS_VERSION:
      return fi("version", `LUKS version ${a0} is not supported`);
  }
  return undefined;
}
