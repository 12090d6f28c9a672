// instar create for vpc, vhdx and vmdk against qemu-img create: the same
// "Formatting ..." line, refusals and exit codes, and images whose
// `qemu-img info` (and `check` where qemu has one) equal those of qemu-img's
// own. The planners' byte-level tests live beside them in lib/formats/.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instar, qemuImg } from "./cli_helpers.ts";

const ready = built() && haveQemuImg();

async function info(dir: string, file: string) {
  const r = await qemuImg(["info", "--output=json", file], dir);
  assertEquals(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  delete j["actual-size"];
  delete j.filename;
  // vmdk: the CID is random in both, and the extent is named after the file.
  const data = j["format-specific"]?.data;
  if (data?.cid !== undefined) delete data.cid;
  for (const e of data?.extents ?? []) delete e.filename;
  return j;
}

Deno.test({ name: "create: vpc, vhdx and vmdk images equal qemu-img's", ignore: !ready }, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "instar-create-fmt-" });
  try {
    const cases: [string, string[], string][] = [
      ["vpc", [], "10M"],
      ["vpc", ["-o", "subformat=fixed"], "3M"],
      ["vpc", ["-o", "force_size=on"], "1000M"],
      ["vpc", [], "2041G"],
      ["vhdx", [], "64M"],
      ["vhdx", ["-o", "block_size=8M,log_size=2M"], "1G"],
      ["vhdx", ["-o", "block_size=3M"], "1G"],
      ["vmdk", [], "100M"],
      ["vmdk", ["-o", "subformat=streamOptimized"], "10M"],
      ["vmdk", ["-o", "adapter_type=lsilogic,hwversion=6"], "5G"],
      ["vmdk", ["-o", "adapter_type=floppy"], "1M"],
    ];
    for (const [fmt, opts, size] of cases) {
      await t.step(`${fmt} ${opts.join(" ")} ${size}`, async () => {
        const q = await qemuImg(["create", "-f", fmt, ...opts, `q.${fmt}`, size], dir);
        const i = await instar(["create", "-f", fmt, ...opts, `i.${fmt}`, size], dir);
        assertEquals(i.code, q.code, i.stderr);
        assertEquals(i.stderr, asInstar(q).stderr.replaceAll(`q.${fmt}`, `i.${fmt}`));
        assertEquals(i.stdout, q.stdout.replaceAll(`q.${fmt}`, `i.${fmt}`));
        if (q.code === 0) {
          assertEquals(await info(dir, `i.${fmt}`), await info(dir, `q.${fmt}`));
          if (fmt !== "vpc") {
            const [qc, ic] = [
              await qemuImg(["check", `q.${fmt}`], dir),
              await qemuImg(["check", `i.${fmt}`], dir),
            ];
            assertEquals(ic.code, qc.code);
            assertEquals(ic.stdout.replaceAll(`i.${fmt}`, "F"), qc.stdout.replaceAll(`q.${fmt}`, "F"));
          }
        }
        for (const f of [`q.${fmt}`, `i.${fmt}`]) await Deno.remove(`${dir}/${f}`).catch(() => {});
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "create --preallocation MODE is -o preallocation=MODE", ignore: !ready }, async () => {
  const dir = await Deno.makeTempDir({ prefix: "instar-create-prealloc-" });
  try {
    for (const [fmt, mode] of [["qcow2", "metadata"], ["qcow2", "full"], ["raw", "falloc"]]) {
      const q = await qemuImg(["create", "-f", fmt, "-o", `preallocation=${mode}`, `q.${fmt}`, "3M"], dir);
      const i = await instar(["create", "-f", fmt, `--preallocation=${mode}`, `i.${fmt}`, "3M"], dir);
      assertEquals(i.code, 0, i.stderr);
      assertEquals(i.stdout, q.stdout.replaceAll(`q.${fmt}`, `i.${fmt}`));
      const [a, b] = [await Deno.readFile(`${dir}/q.${fmt}`), await Deno.readFile(`${dir}/i.${fmt}`)];
      assertEquals(a.length, b.length);
      assertEquals(a.every((x, k) => x === b[k]), true, `${fmt} ${mode}: bytes differ`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "measure -O vpc|vhdx|vmdk: qemu-img's conversion lies within the numbers (seed 004)",
  ignore: !ready,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "instar-measure-fmt-" });
  try {
    const mk = await qemuImg(["create", "-q", "-f", "qcow2", "in.qcow2", "64M"], dir);
    assertEquals(mk.code, 0, mk.stderr);
    for (const cmd of ["write -P 1 0 3M", "write -P 2 40M 1M", "write -z 10M 2M"]) {
      const r = await new Deno.Command("qemu-io", {
        args: ["-f", "qcow2", "-c", cmd, "in.qcow2"],
        cwd: dir,
        stdout: "null",
      }).output();
      assertEquals(r.code, 0);
    }
    for (
      const [fmt, sub] of [["vpc", "dynamic"], ["vpc", "fixed"], ["vhdx", "dynamic"], [
        "vmdk",
        "monolithicSparse",
      ], ["vmdk", "streamOptimized"]]
    ) {
      const m = await instar(
        ["measure", "--output=json", "-O", fmt, "-o", `subformat=${sub}`, "in.qcow2"],
        dir,
      );
      assertEquals(m.code, 0, m.stderr);
      const { required, "fully-allocated": full } = JSON.parse(m.stdout);
      const c = await qemuImg(
        ["convert", "-O", fmt, "-o", `subformat=${sub}`, "in.qcow2", `out.${fmt}`],
        dir,
      );
      assertEquals(c.code, 0, c.stderr);
      const size = (await Deno.stat(`${dir}/out.${fmt}`)).size;
      // streamOptimized compresses every grain: "required" is then the least
      // a stream takes (a sector per grain), "fully allocated" the most.
      assertEquals(
        required <= size && size <= full,
        true,
        `${fmt} ${sub}: ${size} not in [${required}, ${full}]`,
      );
      await Deno.remove(`${dir}/out.${fmt}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
