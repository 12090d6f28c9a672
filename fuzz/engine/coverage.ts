// Coverage features in libFuzzer's sense: a counter index plus the bucket
// of its hit count (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+). "cov" is the
// number of counters ever hit, "ft" the number of (counter, bucket) pairs.

const BUCKET = new Uint8Array(256);
for (let c = 1; c < 256; c++) {
  BUCKET[c] = c === 1
    ? 1
    : c === 2
    ? 2
    : c === 3
    ? 4
    : c < 8
    ? 8
    : c < 16
    ? 16
    : c < 32
    ? 32
    : c < 128
    ? 64
    : 128;
}

export class Coverage {
  #seen: Uint8Array;
  cov = 0;
  ft = 0;

  constructor(size = 0) {
    this.#seen = new Uint8Array(Math.max(size, 64));
  }

  /** Adds the features of one run; returns how many were new. */
  addCounters(counters: Uint8Array): number {
    if (counters.length > this.#seen.length) this.#grow(counters.length);
    const seen = this.#seen;
    let fresh = 0;
    for (let i = 0; i < counters.length; i++) {
      const c = counters[i];
      if (c === 0) continue;
      const b = BUCKET[c];
      const s = seen[i];
      if ((s & b) === 0) {
        if (s === 0) this.cov++;
        seen[i] = s | b;
        fresh++;
      }
    }
    this.ft += fresh;
    return fresh;
  }

  /** Number of features in one run's counters (the unit's "ft"). */
  static count(counters: Uint8Array): number {
    let n = 0;
    for (let i = 0; i < counters.length; i++) if (counters[i]) n++;
    return n;
  }

  #grow(n: number) {
    const next = new Uint8Array(Math.max(n, this.#seen.length * 2));
    next.set(this.#seen);
    this.#seen = next;
  }
}

/**
 * Structural coverage for the in-process TypeScript targets: the target
 * names what it observed (which planner branch, which error kind, value
 * classes) and each distinct name is one counter.
 */
export class StructuralCoverage {
  #ids = new Map<string, number>();
  #hits: number[] = [];
  counters = new Uint8Array(0);

  reset() {
    this.#hits.length = 0;
  }

  hit(feature: string) {
    let id = this.#ids.get(feature);
    if (id === undefined) {
      id = this.#ids.size;
      this.#ids.set(feature, id);
    }
    this.#hits.push(id);
  }

  /** The counters of the run since reset(). */
  collect(): Uint8Array {
    if (this.counters.length < this.#ids.size) this.counters = new Uint8Array(this.#ids.size * 2 + 64);
    else this.counters.fill(0);
    for (const id of this.#hits) if (this.counters[id] < 255) this.counters[id]++;
    return this.counters;
  }
}
