// What `qemu-img amend -p` prints for qcow2: qcow2_amend_helper_cb's
// projection over the operations an amendment runs (upgrade, refcount width,
// downgrade), qemu-img's amend_status_cb (100.f * offset / total, in float)
// and qemu_progress_print's rule (print a value more than one point away
// from the last printed one, and every 0 and 100), as "%3.2f". Pure.

/** Qcow2AmendOperation values. */
export const AMEND_OP = { UPGRADING: 1, CHANGING_REFCOUNT_ORDER: 3, DOWNGRADING: 4 } as const;

const f = Math.fround;
/** The most L1 entries whose reports are replayed one by one. */
const MAX_EXACT = 1n << 24n;

/** printf("%3.2f") of a float (exact: float * 100 is exact in a double; ties to even). */
export function percent(x: number): string {
  const y = x * 100;
  let n = Math.floor(y);
  const frac = y - n;
  if (frac > 0.5 || (frac === 0.5 && n % 2 !== 0)) n += 1;
  const s = String(n).padStart(3, "0");
  return `${s.slice(0, -2)}.${s.slice(-2)}`;
}

export class AmendProgress {
  /** The values printed, formatted, in order (the caller drains it). */
  readonly out: string[] = [];
  private last = 0;
  private offsetCompleted = 0n;
  private opsCompleted = 0;
  private lastOp = 0;
  private lastWork = 0n;

  constructor(private readonly totalOps: number) {}

  /** qemu_progress_print(v, 0). */
  print(v: number) {
    let cur = f(v);
    if (cur > 100) cur = 100;
    if (cur > f(this.last + 1) || cur < f(this.last - 1) || cur === 100 || cur === 0) {
      this.last = cur;
      this.out.push(percent(cur));
    }
  }

  /** qcow2_amend_helper_cb during operation `op`, then amend_status_cb. */
  report(op: number, offset: bigint, work: bigint) {
    if (op !== this.lastOp) {
      if (this.lastOp !== 0) {
        this.offsetCompleted += this.lastWork;
        this.opsCompleted++;
      }
      this.lastOp = op;
    }
    this.lastWork = work;
    const current = this.offsetCompleted + work;
    const projected = current * BigInt(this.totalOps - this.opsCompleted - 1) / BigInt(this.opsCompleted + 1);
    this.print(f(f(100 * f(Number(this.offsetCompleted + offset))) / f(Number(current + projected))));
  }

  /** qcow2_upgrade's three reports. */
  upgrade() {
    for (const i of [0n, 1n, 2n]) this.report(AMEND_OP.UPGRADING, i, 2n);
  }

  /**
   * walk_over_reftable's reports: `allocWalks` allocating walks and the
   * writing one, each over `entries`; or, when the old table grew during a
   * walk, over the sizes `walks` says each saw (qemu reads the size live)
   * and `writeEntries` for the writing one.
   */
  refcountOrder(
    allocWalks: number,
    entries: bigint,
    walks?: { sizes: { from: bigint; size: bigint }[]; end: bigint }[],
    writeEntries?: bigint,
  ) {
    const walk = (index: number, total: number, sizes: { from: bigint; size: bigint }[], end: bigint) => {
      const w = BigInt(index), t = BigInt(total);
      let s = 0, size = sizes[0].size;
      for (let i = 0n; i < size; i++) {
        while (s + 1 < sizes.length && sizes[s + 1].from <= i) size = sizes[++s].size;
        if (i >= size) break;
        this.report(AMEND_OP.CHANGING_REFCOUNT_ORDER, w * size + i, t * size);
      }
      this.report(AMEND_OP.CHANGING_REFCOUNT_ORDER, (w + 1n) * end, t * end);
    };
    for (let i = 0; i < allocWalks; i++) {
      const ws = walks?.[i] ?? { sizes: [{ from: 0n, size: entries }], end: entries };
      walk(i, Math.max(i + 2, 3), ws.sizes, ws.end);
    }
    const we = writeEntries ?? entries;
    walk(allocWalks, allocWalks + 1, [{ from: 0n, size: we }], we);
  }

  /** expand_zero_clusters_in_l1's report after each of `entries` L1 entries. */
  downgrade(entries: bigint) {
    if (entries <= MAX_EXACT) {
      for (let i = 1n; i <= entries; i++) this.report(AMEND_OP.DOWNGRADING, i, entries);
      return;
    }
    // Past 2^24 entries (snapshots of huge images) the reports are sampled:
    // bounded work, the same values to within a hundredth of a point.
    for (let k = 1n; k <= 1n << 16n; k++) this.report(AMEND_OP.DOWNGRADING, (k * entries) >> 16n, entries);
  }
}
