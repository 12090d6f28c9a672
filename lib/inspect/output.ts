// inspect's two printers: a few lines for people, one JSON object for
// programs (fields in docs/inspect.md).
import type { InspectResult } from "./verdict.ts";

export function inspectHuman(r: InspectResult): string {
  const lines = [
    `image: ${r.filename}`,
    `file format: ${r.format}`,
  ];
  if (r.formats.length > 1) lines.push(`headers found: ${r.formats.join(", ")}`);
  lines.push(`virtual size: ${r.virtualSize === undefined ? "unknown" : `${r.virtualSize} bytes`}`);
  lines.push(`file size: ${r.fileSize} bytes`);
  lines.push(`bytes read: ${r.bytesRead}`);
  if (r.encrypted) lines.push("encrypted: yes");
  lines.push(`verdict: ${r.verdict}`);
  for (const x of r.reasons) {
    lines.push(`  ${x.check}: ${x.message}${x.rule === "instar" ? " [instar]" : ""}`);
  }
  return lines.join("\n") + "\n";
}

export function inspectJson(r: InspectResult): string {
  const o: Record<string, unknown> = {
    filename: r.filename,
    format: r.format,
    driver: r.driver,
    formats: r.formats,
    "virtual-size": r.virtualSize ?? null,
    "file-size": r.fileSize,
    "bytes-read": r.bytesRead,
    encrypted: r.encrypted,
    verdict: r.verdict,
    reasons: r.reasons,
  };
  if (r.streamBytes !== undefined) o["stream-bytes"] = r.streamBytes;
  // Sizes are exact integers (bigint), never rounded through a double.
  const text = JSON.stringify(o, (_k, v) => typeof v === "bigint" ? `\u0000${v}` : v, 4);
  return text.replace(/"\\u0000(\d+)"/g, "$1") + "\n";
}
