// qemu-img's progress line (util/qemu-progress.c) and instar's JSON
// progress. qemu keeps the percentage in a C float and prints
// "    (%3.2f/100%%)\r" whenever it moved by more than min_skip, hit 0 or
// 100, then "\n" at the end; Math.fround keeps our arithmetic in the same
// precision. The intermediate values depend on how the work is chunked and
// are not promised to match qemu's (docs/quirks.md); the first and last are.
import type { Io } from "./common.ts";

export type ProgressMode = "off" | "line" | "json";

export class Progress {
  #current = 0;
  #lastPrint = 0;
  constructor(readonly mode: ProgressMode, readonly minSkip: number, readonly io: Io) {}

  /** qemu_progress_print(delta, max) with max == 0: set the percentage. */
  set(percent: number) {
    if (this.mode !== "line") return;
    let current = Math.fround(percent);
    if (current > 100) current = 100;
    this.#current = current;
    if (
      current > Math.fround(this.#lastPrint + this.minSkip) ||
      current < Math.fround(this.#lastPrint - this.minSkip) ||
      current === 100 || current === 0
    ) {
      this.#lastPrint = current;
      this.io.out(`    (${current.toFixed(2)}/100%)\r`);
    }
  }

  /** Bytes done of total: the line as a percentage, JSON as numbers. */
  bytes(done: bigint, total: bigint) {
    if (this.mode === "json") {
      this.io.err(`{"done": ${done}, "total": ${total}}\n`);
      return;
    }
    if (total > 0n) this.set(Number((done * 1000000n) / total) / 10000);
  }

  end() {
    if (this.mode === "line") this.io.out("\n");
  }
}
