// `qemu-img check` output (qemu-img.c dump_human_image_check and the
// ImageCheck QDict of dump_json_image_check).
import { QDict, toJsonPretty } from "./qdict.ts";
import { formatF2 } from "./numbers.ts";

export interface CheckFacts {
  filename: string;
  format: string;
  checkErrors: bigint;
  corruptions: bigint;
  leaks: bigint;
  corruptionsFixed: bigint;
  leaksFixed: bigint;
  imageEndOffset: bigint;
  totalClusters: bigint;
  allocatedClusters: bigint;
  fragmentedClusters: bigint;
  compressedClusters: bigint;
}

export function checkJson(c: CheckFacts): string {
  const d = new QDict();
  d.put("filename", c.filename);
  d.put("format", c.format);
  d.put("check-errors", c.checkErrors);
  // Optional members are present only when non-zero (collect_image_check).
  const opt: [string, bigint][] = [
    ["image-end-offset", c.imageEndOffset],
    ["corruptions", c.corruptions],
    ["leaks", c.leaks],
    ["corruptions-fixed", c.corruptionsFixed],
    ["leaks-fixed", c.leaksFixed],
    ["total-clusters", c.totalClusters],
    ["allocated-clusters", c.allocatedClusters],
    ["fragmented-clusters", c.fragmentedClusters],
    ["compressed-clusters", c.compressedClusters],
  ];
  for (const [k, v] of opt) if (v !== 0n) d.put(k, v);
  return toJsonPretty(d) + "\n";
}

/** printf("%0.2f", a * 100.0 / b) with qemu's int64 -> double arithmetic. */
function percent(a: bigint, b: bigint): string {
  return formatF2((Number(a) * 100.0) / Number(b));
}

export function checkHuman(c: CheckFacts): string {
  let out = "";
  if (c.corruptions === 0n && c.leaks === 0n && c.checkErrors === 0n) {
    out += "No errors were found on the image.\n";
  } else {
    if (c.corruptions !== 0n) {
      out += `\n${c.corruptions} errors were found on the image.\n` +
        "Data may be corrupted, or further writes to the image may corrupt it.\n";
    }
    if (c.leaks !== 0n) {
      out += `\n${c.leaks} leaked clusters were found on the image.\n` +
        "This means waste of disk space, but no harm to data.\n";
    }
    if (c.checkErrors !== 0n) out += `\n${c.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (c.totalClusters !== 0n && c.allocatedClusters !== 0n) {
    out +=
      `${c.allocatedClusters}/${c.totalClusters} = ${
        percent(c.allocatedClusters, c.totalClusters)
      }% allocated, ` +
      `${percent(c.fragmentedClusters, c.allocatedClusters)}% fragmented, ` +
      `${percent(c.compressedClusters, c.allocatedClusters)}% compressed clusters\n`;
  }
  if (c.imageEndOffset !== 0n) out += `Image end offset: ${c.imageEndOffset}\n`;
  return out;
}
