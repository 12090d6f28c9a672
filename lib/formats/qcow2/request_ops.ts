// qemu-img convert's write requests (lib/convert/convert_requests.ts) as
// the in-place qcow2 writer's ops (write_plan.ts), one data op per request,
// so each allocates its own clusters as qcow2_co_pwritev_part does. A
// request reaches into whole target clusters: a data request's clusters
// are allocated by it unless the previous request already wrote the first
// one (then it is written in place, and the request's new clusters go right
// behind it where free: WriteOp.continues). A write-zeroes request zeroes the
// clusters it covers whole; a cluster it covers in part (block/io.c cuts
// the request at cluster boundaries) is zeroed whole by
// qcow2_co_pwrite_zeroes when the whole cluster reads as zeroes, else the
// block layer writes the zeroes as data (a bounce buffer), which allocates
// or rewrites the cluster like a data request. Pure.
import type { ClusterKind, ExistingRun, WriteOp } from "./write_plan.ts";
import type { Request } from "../../convert/convert_requests.ts";

export interface RequestOpsInput {
  requests: Request[];
  /** The target's clusters that are not unallocated, ascending. */
  existing: ExistingRun[];
  clusterBits: number;
  /** The target's virtual size: a request ending there ends a cluster (qcow2's tail rule). */
  virtualSize: bigint;
}

/** The ops, or undefined where this model does not reach (the caller falls back to whole clusters). */
export function requestOps(x: RequestOpsInput): WriteOp[] | undefined {
  const cb = BigInt(x.clusterBits), cs = 1n << cb;
  const ex = x.existing;
  const kindOf = (c: bigint): ClusterKind | "unallocated" => {
    let lo = 0, hi = ex.length - 1;
    while (lo <= hi) {
      const m = (lo + hi) >> 1;
      if (c < ex[m].cluster) hi = m - 1;
      else if (c >= ex[m].cluster + ex[m].count) lo = m + 1;
      else return ex[m].kind;
    }
    return "unallocated";
  };
  const ops: WriteOp[] = [];
  // The last cluster a request touched and what it holds now (earlier ones are done with).
  let last = -1n;
  let lastState = "data" as "data" | "zero";
  const zeroOp = (c: bigint) => {
    const p = ops[ops.length - 1];
    if (p && p.kind === "zero" && p.cluster + p.count === c) p.count++;
    else ops.push({ cluster: c, count: 1n, kind: "zero" });
    last = c;
    lastState = "zero";
  };
  /** Data into clusters [a, b]; false where the model stops. */
  const dataOp = (a: bigint, b: bigint): boolean => {
    // In the cluster the previous request wrote: written in place, the new
    // clusters behind it allocated right after it where free (`continues`).
    let continues = false;
    if (a === last && lastState === "data") {
      a++;
      continues = true;
    } else if (a === last) {
      // Zeroed in part by the previous request, now allocated: the zero op on it goes
      // (unallocated or a zero cluster stays so until this write allocates it).
      const k = kindOf(a);
      if (k !== "unallocated" && k !== "zero_plain") return false;
      const p = ops[ops.length - 1];
      if (!p || p.kind !== "zero" || p.cluster + p.count !== a + 1n) return false;
      if (--p.count === 0n) ops.pop();
    }
    if (a <= b) {
      ops.push(
        continues
          ? { cluster: a, count: b - a + 1n, kind: "data", continues }
          : { cluster: a, count: b - a + 1n, kind: "data" },
      );
    }
    last = b;
    lastState = "data";
    return true;
  };
  for (const r of x.requests) {
    if (r.end <= r.start || r.start < 0n) return undefined;
    const a = r.start >> cb, b = (r.end - 1n) >> cb;
    if (a < last) return undefined;
    if (r.kind === "data") {
      if (!dataOp(a, b)) return undefined;
      continue;
    }
    for (let c = a; c <= b; c++) {
      const c0 = c << cb;
      const whole = r.start <= c0 && (r.end >= c0 + cs || r.end === x.virtualSize);
      if (whole) {
        zeroOp(c);
        continue;
      }
      const reads = c === last
        ? lastState === "zero"
        : ["unallocated", "zero_plain", "zero_alloc"].includes(kindOf(c));
      if (c === last && reads) continue;
      if (reads) zeroOp(c);
      else if (!dataOp(c, c)) return undefined;
    }
  }
  return ops;
}
