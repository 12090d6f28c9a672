// Benchmarks for encrypted images (issue 15): convert of a 1 GiB LUKS1
// (aes-256-xts) image to raw, raw to LUKS1, and the PBKDF2 unlock alone
// (convert of a 1 MiB LUKS1 image whose key slot was calibrated by qemu-img
// with the default iter-time: both tools derive the same iteration count),
// each against qemu-img in the same run. Each run makes fresh inputs, runs
// both tools alternately and prints medians and their ratio; the outputs are
// then checked (the raw outputs must be the same bytes, the LUKS outputs must
// read back as the source under qemu-img). Needs /dev/kvm; `--cli
// tests/support/hosted_main.ts --size-mib 16` runs the hosted stand-in (a
// smoke run of the script, not instar's numbers).
//
//   scripts/deno.sh task bench:luks [--runs N] [--size-mib M] [--cli PATH]
import { parseArgs } from "node:util";
import { type Case, runCases } from "./bench_cases.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "3" },
    "size-mib": { type: "string", default: "1024" },
    cli: { type: "string", default: "main.ts" },
  },
});
const runs = Number(values.runs);
const mib = Number(values["size-mib"]);
const root = new URL("..", import.meta.url).pathname;
const cli = values.cli.startsWith("/") ? values.cli : `${root}${values.cli}`;

const SECRET = "--object secret,id=sec0,data=bench-passphrase";
const opts = (f: string) => `--image-opts driver=luks,key-secret=sec0,file.filename=${f}`;
// Half random data, half holes, as the other convert benchmarks' image.
const RAW = [
  `qemu-img create -q -f raw src.raw ${mib}M`,
  `head -c ${(mib / 2) << 20} /dev/urandom | dd of=src.raw conv=notrunc status=none`,
];
// qemu-img's LUKS create calibrates PBKDF2 and flakes here at random
// ("Unable to get accurate CPU usage"): retried.
const luks = (src: string, out: string) =>
  `for i in 1 2 3 4 5 6 7 8; do qemu-img convert ${SECRET} -O luks -o key-secret=sec0 ${src} ${out} && break; done`;

const cases: Case[] = [
  {
    label: `convert ${mib} MiB LUKS1 (aes-256-xts) → raw`,
    setup: [...RAW, luks("src.raw", "src.luks"), "rm src.raw"],
    args: `convert ${SECRET} ${opts("src.luks")} -O raw out.raw`,
    check: "cmp i/out.raw q/out.raw",
  },
  {
    label: `convert raw → ${mib} MiB LUKS1 (aes-256-xts)`,
    setup: RAW,
    args: `convert ${SECRET} -f raw -O luks -o key-secret=sec0 src.raw out.luks`,
    retryOn: "Unable to get accurate CPU usage",
    check: ["i", "q"]
      .map((d) => `qemu-img compare ${SECRET} ${opts(`${d}/out.luks`)} driver=raw,file.filename=${d}/src.raw`)
      .join(" && "),
  },
  {
    label: "PBKDF2 unlock (convert of a 1 MiB LUKS1 image, default iter-time)",
    setup: ["qemu-img create -q -f raw small.raw 1M", luks("small.raw", "small.luks")],
    args: `convert ${SECRET} ${opts("small.luks")} -O raw out.raw`,
    check: "cmp i/out.raw q/out.raw",
  },
];

await runCases(cases, runs, cli, "instar-bench-luks-");
