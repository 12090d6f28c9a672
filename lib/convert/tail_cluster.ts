// `convert -n` into a qcow2 target larger than the source, when the source
// ends inside one of the target's clusters: qemu-img writes only up to the
// source's end, so the target's bytes past it in that last cluster stay as
// they read (qcow2's copy-on-write in handle_alloc/perform_cow copies them
// from the old cluster when the write allocates a new one; written in place,
// they are simply kept). A write-zeroes request into part of that cluster
// zeroes it whole only when the whole cluster reads as zeroes
// (qcow2_co_pwrite_zeroes' is_zero test); otherwise the block layer writes
// the zeroes as data. Pure: it marks the data op that reaches the last
// cluster as a partial write (WriteOp.only) of just the bytes qemu's
// requests cover there; the write planner does the copy-on-write.
import type { ClusterKind, WriteOp } from "../formats/qcow2/write_plan.ts";
import type { Request } from "./convert_requests.ts";

export interface TailInput {
  /** The write ops in qemu's order (whole clusters). */
  ops: WriteOp[];
  /** The source's size: not a multiple of the cluster size, less than the target's. */
  size: bigint;
  clusterBits: number;
  /** What the target's last written cluster is before the write. */
  kind: ClusterKind | "unallocated";
  /** qemu-img's requests, when `ops` were made from them (request_ops.ts). */
  requests?: Request[];
}

export interface TailResult {
  ops: WriteOp[];
  /** The guest byte ranges of the last cluster that are written (for the applier), if it is written as data. */
  piece?: [bigint, bigint][];
}

export function tailOps(x: TailInput): TailResult {
  const cb = BigInt(x.clusterBits);
  const t = x.size >> cb, base = t << cb;
  if (x.size <= base) throw new Error("tailOps: the source ends on a cluster boundary");
  const readsZero = x.kind === "unallocated" || x.kind === "zero_plain" || x.kind === "zero_alloc";
  const out: WriteOp[] = [];
  let piece: [bigint, bigint][] | undefined;
  for (const op of x.ops) {
    const last = op.cluster + op.count - 1n;
    if (op.cluster > t || last < t || op.kind === "discard" || (op.kind === "zero" && readsZero)) {
      out.push(op);
      continue;
    }
    if (last > t || op.only) throw new Error("tailOps: an op past the source's end");
    // The bytes of the last cluster qemu's requests write (zeroes included:
    // the source reads as zeroes there), or all of it up to the source's end.
    let ranges: [bigint, bigint][] = [];
    for (const r of x.requests ?? []) {
      const a = r.start > base ? r.start : base, b = r.end < x.size ? r.end : x.size;
      if (b <= a) continue;
      const p = ranges[ranges.length - 1];
      if (p && p[1] >= a) {
        if (b > p[1]) p[1] = b;
      } else ranges.push([a, b]);
    }
    if (ranges.length === 0 || !x.requests) ranges = [[base, x.size]];
    piece = ranges;
    if (op.kind === "zero") {
      // Zeroes into a cluster that holds data: the whole clusters before it
      // are zeroed, the last one written with zeroes.
      if (op.count > 1n) out.push({ cluster: op.cluster, count: op.count - 1n, kind: "zero" });
      out.push({ cluster: t, count: 1n, kind: "data", only: ranges });
      continue;
    }
    const only: [bigint, bigint][] = op.cluster < t ? [[op.cluster << cb, base], ...ranges] : ranges;
    out.push({ ...op, kind: "data", only });
  }
  return { ops: out, piece };
}
