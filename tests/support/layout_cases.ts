// The convert -n layout matrix both layout tests run (convert_n_layout_test.ts:
// raw and qcow2 sources; convert_n_layout_formats_test.ts: vpc, vhdx, vmdk,
// extended L2): each source into each target with each option, through
// qemu-img and instar on copies of the same files; the outputs and the
// targets' bytes must be identical and `qemu-img check` clean. The default
// run takes the `quick` cases, INSTAR_FULL_TESTS=1 every combination.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, instarHere, io, qemuImg, sh, withTempDir } from "../cli_helpers.ts";
import { FULL_TESTS } from "./full.ts";

export const LAYOUT_OPTIONS: Record<string, string[]> = {
  default: [],
  "-S 0": ["-S", "0"],
  "--target-is-zero": ["--target-is-zero"],
  "-S 64k": ["-S", "64k"],
};

/** qemu-io lines for `dst`: data in the first MiB only, with gaps freed in it (the source's runs past it are all allocated anew). */
export const headGaps = (cs: number) => [
  io("dst", "write -P 9 0 1M"),
  io("dst", `discard ${cs} ${cs}`, `discard ${3 * cs} ${2 * cs}`, `discard ${7 * cs} ${3 * cs}`),
];

export interface LayoutMatrix {
  /** Each source: its -f format and the shell lines that make `src`. */
  sources: Record<string, { fmt: string; make: string[] }>;
  /** Each target: the shell lines that make `dst`. */
  targets: Record<string, string[]>;
  /** Source -> target -> option names the default run takes. */
  quick: Record<string, Record<string, string[]>>;
  prefix: string;
  ready: boolean;
}

export function layoutTests(m: LayoutMatrix): void {
  for (const [src, { fmt, make: makeSrc }] of Object.entries(m.sources)) {
    for (const [dst, makeDst] of Object.entries(m.targets)) {
      const opts = FULL_TESTS ? Object.keys(LAYOUT_OPTIONS) : m.quick[src]?.[dst] ?? [];
      if (opts.length === 0) continue;
      Deno.test(
        { name: `convert -n layout: ${src} source into ${dst} target`, ignore: !m.ready },
        async () => {
          await withTempDir(m.prefix, async (root) => {
            await Deno.mkdir(`${root}/base`);
            for (const l of [...makeSrc, ...makeDst]) await sh(`${root}/base`, "sh", "-c", l);
            for (const name of opts) {
              for (const d of ["q", "i"]) await sh(root, "sh", "-c", `rm -rf ${d} && cp -a base ${d}`);
              const args = ["convert", "-n", ...LAYOUT_OPTIONS[name], "-f", fmt, "-O", "qcow2", "src", "dst"];
              const [want, got] = await Promise.all([
                qemuImg(args, `${root}/q`),
                instarHere(args, `${root}/i`),
              ]);
              assertEquals(got, asInstar(want), name);
              assertEquals(want.code, 0, want.stderr);
              const same = await new Deno.Command("cmp", { args: ["q/dst", "i/dst"], cwd: root }).output();
              assert(same.success, `${name}: ${new TextDecoder().decode(same.stdout)}`);
              const chk = await qemuImg(["check", "dst"], `${root}/i`);
              assert(chk.code === 0, chk.stdout + chk.stderr);
            }
          });
        },
      );
    }
  }
}
