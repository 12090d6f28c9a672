// Turns the inspect guest's records into the answer an upload gate wants:
// the format, the virtual size, and the verdict with every reason. The
// records are untrusted: one INSPECT summary, last; its counts and codes
// checked against the findings actually sent and the enums in
// lib/abi/spec.ts; texts cut to their declared length and made printable.
import { formats, inspectFindings, inspectFlags, inspectFormats, nameKinds, records } from "../abi/spec.ts";
import { nameBytes, type Rec } from "../abi/records.ts";
import { driverForCode } from "../formats/mod.ts";
import { describeFinding, FORMAT_NAMES, formatList, type Reason } from "./findings.ts";

export interface InspectResult {
  filename: string;
  /** The content's format (format_inspector's name for it). */
  format: string;
  /** What qemu-img would open it as (its probe). */
  driver: string;
  /** Every format header found. */
  formats: string[];
  virtualSize?: bigint;
  fileSize: bigint;
  /** Bytes of the image the guest read. */
  bytesRead: bigint;
  /** A stream: how many bytes came through it. */
  streamBytes?: bigint;
  encrypted: boolean;
  verdict: "safe" | "unsafe";
  reasons: Reason[];
}

export class InspectRecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InspectRecordError";
  }
}

const TEXT_MAX = 256;
const FINDINGS_MAX = 4096;

/** Image bytes as printable text: printable ASCII kept, everything else as \xNN. */
export function printable(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) {
    s += b >= 0x20 && b < 0x7f && b !== 0x5c
      ? String.fromCharCode(b)
      : `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return s;
}

const KNOWN_BITS = Object.values(inspectFormats).reduce((m, c) => m | (1n << BigInt(c)), 0n);
const DRIVER_NAMES: Record<number, string> = {
  [formats.RAW]: "raw",
  [formats.QCOW2]: "qcow2",
  [formats.VPC]: "vpc",
  [formats.VHDX]: "vhdx",
  [formats.VMDK]: "vmdk",
};

export function decodeInspect(recs: Rec[], filename: string, fileSize: bigint): InspectResult {
  const summary = recs.filter((r) => r.type === records.INSPECT);
  if (summary.length !== 1 || recs[recs.length - 1] !== summary[0]) {
    throw new InspectRecordError("the inspect guest sent no summary");
  }
  const s = summary[0].fields;
  const format = FORMAT_NAMES[s.format as number];
  const driverCode = s.driver as number;
  if (!format) throw new InspectRecordError(`format code ${s.format} out of range`);
  const matches = BigInt(s.matches as number);
  if (matches & ~KNOWN_BITS) throw new InspectRecordError("unknown format bits");
  const flags = s.flags as number;
  if (flags & ~(inspectFlags.SIZE_KNOWN | inspectFlags.ENCRYPTED)) {
    throw new InspectRecordError("unknown flags");
  }
  const findings = recs.filter((r) => r.type === records.INSPECT_FINDING);
  if (findings.length !== s.findings || findings.length > FINDINGS_MAX) {
    throw new InspectRecordError("finding count does not match the summary");
  }
  const reasons: Reason[] = [];
  let lastError: Rec | undefined;
  let features: string[] = [];
  for (const r of recs) {
    if (r.type === records.ERROR) lastError = r;
    else if (
      r.type === records.NAME &&
      (r.fields.kind === nameKinds.INCOMPAT_FEATURE || r.fields.kind === nameKinds.ERROR_TEXT)
    ) features.push(new TextDecoder().decode(nameBytes(r)));
    if (r.type !== records.INSPECT_FINDING) continue;
    const len = r.fields.text_len as number;
    if (len > TEXT_MAX) throw new InspectRecordError(`finding text length ${len} > ${TEXT_MAX}`);
    const text = printable((r.fields.text as Uint8Array).subarray(0, len));
    // The ERROR record a parser sent before this finding says why qemu-img would refuse the open.
    const code = r.fields.code as number;
    let openError: string | undefined;
    if (code === inspectFindings.OPEN_FAILED || code === inspectFindings.INCOMPLETE) {
      if (lastError) {
        const f = lastError.fields;
        const driver = driverForCode(driverCode) ?? driverForCode(formats.QCOW2)!;
        try {
          openError = driver.openError?.(
            { code: f.code as number, a0: f.a0 as bigint, a1: f.a1 as bigint, a2: f.a2 as bigint },
            features,
            filename,
          );
        } catch {
          openError = undefined;
        }
      }
      lastError = undefined;
      features = [];
    }
    const reason = describeFinding(
      { code: r.fields.code as number, a: r.fields.a as bigint[], text },
      openError,
    );
    if (!reason) throw new InspectRecordError(`unknown finding ${r.fields.code}`);
    reasons.push(reason);
  }
  return {
    filename,
    format,
    driver: DRIVER_NAMES[driverCode] ?? (driverCode === 0 ? "none" : "unknown"),
    formats: formatList(matches),
    virtualSize: flags & inspectFlags.SIZE_KNOWN ? s.virtual_size as bigint : undefined,
    fileSize,
    bytesRead: s.bytes_read as bigint,
    encrypted: (flags & inspectFlags.ENCRYPTED) !== 0,
    verdict: reasons.length ? "unsafe" : "safe",
    reasons,
  };
}
