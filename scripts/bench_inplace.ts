// Benchmarks for the in-place qcow2 writers (issue 14): `commit` of a 1 GiB
// overlay with 512 MiB written, and a safe `rebase` across two 2 GiB
// backing files that differ in places. Each run makes fresh, identical
// chains for instar and qemu-img (qemu-img create -b, data by qemu-io),
// runs both alternately and prints medians and their ratio. After each run
// the results are checked: `qemu-img compare` of the two bases (commit) or
// of the two overlays (rebase) must say identical, and the rebased overlays
// must be the same bytes. Needs /dev/kvm (instar runs its guests in the VM).
//
// Both through the direct CLI and through the client and a warm service.
//
//   scripts/deno.sh task bench:inplace [--runs N]
import { parseArgs } from "node:util";
import { type Case, runCases } from "./bench_cases.ts";
import { startServiceBench } from "./bench_service_setup.ts";

const { values } = parseArgs({ args: Deno.args, options: { runs: { type: "string", default: "3" } } });
const runs = Number(values.runs);
const root = new URL("..", import.meta.url).pathname;

const io = (file: string, ...cmds: string[]) => `qemu-io ${cmds.map((c) => `-c '${c}'`).join(" ")} ${file}`;

const cases: Case[] = [
  {
    label: "`commit` of a 1 GiB overlay with 512 MiB written",
    setup: [
      "qemu-img create -q -f qcow2 base.qcow2 1G",
      io("base.qcow2", "write -P 1 0 256M"),
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 1G",
      io("ov.qcow2", "write -P 2 128M 384M", "write -P 3 768M 128M"),
    ],
    args: "commit -q ov.qcow2",
    check: "qemu-img compare -q i/base.qcow2 q/base.qcow2",
  },
  {
    label: "safe `rebase` across two 2 GiB backing files",
    setup: [
      "qemu-img create -q -f qcow2 old.qcow2 2G",
      io("old.qcow2", "write -P 1 0 1G", "write -P 4 1536M 256M"),
      "qemu-img create -q -f qcow2 new.qcow2 2G",
      io("new.qcow2", "write -P 1 0 512M", "write -P 5 1G 256M"),
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ov.qcow2 2G",
      io("ov.qcow2", "write -P 2 256M 64M"),
    ],
    args: "rebase -b new.qcow2 -F qcow2 ov.qcow2",
    check: "cmp i/ov.qcow2 q/ov.qcow2",
  },
];

console.log("instar through the direct CLI (`deno run -A main.ts`):\n");
await runCases(cases, runs, `${root}main.ts`, "instar-bench-inplace-");
// The same through the thin client and a warm `instar serve` (how callers
// under resource limits run it, docs/service.md): no Deno start per call.
const svc = await startServiceBench("instar-bench-inplace-svc-");
try {
  console.log("\ninstar through the client and a warm service:\n");
  await runCases(
    cases,
    runs,
    `${root}main.ts`,
    "instar-bench-inplace-",
    `env INSTAR_SOCKET=${svc.env.INSTAR_SOCKET} ${svc.client}`,
  );
} finally {
  await svc.stop();
}
