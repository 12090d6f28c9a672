// The fuzz harness in the normal test run: every target (C and TypeScript)
// builds and fuzzes for a second from a seed corpus made here by
// qemu-img (fuzz/make_corpus.sh) without a finding, every input in
// fuzz/regression/<target>/ replays cleanly, and the engine's libFuzzer
// dialect holds (status lines, corpus write-back, artifacts, exit codes) on
// a C target built from a scratch copy of the guest sources with a bug put
// back in. C targets need clang with ASan and libFuzzer (scripts/deps.sh
// installs them): without clang this test fails, it does not skip.
import { CLI_ENTRY } from "./support/kvm.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { DENO, REPO } from "./cli_helpers.ts";
import { listTargets } from "../fuzz/engine/targets.ts";
import { sweep } from "./support/full.ts";

const dec = new TextDecoder();

async function fuzz(args: string[], cwd: string, env: Record<string, string> = {}) {
  const out = await new Deno.Command(DENO, {
    args: ["run", "-A", `${REPO}/fuzz/engine/main.ts`, ...args],
    cwd,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, text: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

function files(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].filter((e) => e.isFile).map((e) => `${dir}/${e.name}`).sort();
  } catch {
    return [];
  }
}

Deno.test("fuzz targets build, fuzz briefly and replay their regression corpus", async (t) => {
  const targets = listTargets();
  const names = targets.map((x) => x.name);
  for (
    const want of [
      "qcow2_header",
      "qcow2_l1l2",
      "qcow2_refcount",
      "qcow2_decompress",
      "raw_partition",
      "measure_scan",
      "vpc",
      "vhdx",
      "vmdk_desc",
      "vmdk_sparse",
      "vmdk_stream",
      "vmdk_sesparse",
      "measure_calc",
      "create_emitters",
      "resize_planners",
      "repair_planner",
      "write_planner",
      "bitmap_planner",
      "inspect",
      "snapshot_planner",
      "empty_planner",
    ]
  ) {
    assert(names.includes(want), `target ${want} is missing`);
  }
  const list = await fuzz(["--list"], REPO);
  assertEquals(list.code, 0, list.text);
  for (const want of ["measure_scan", "vpc", "vhdx"]) {
    assert(new RegExp(`^${want} +c `, "m").test(list.text), list.text);
  }
  const clang = await new Deno.Command("clang", { args: ["--version"], stdout: "null", stderr: "null" })
    .output()
    .then((o) => o.success, () => false);
  assert(clang, "clang is not installed (scripts/deps.sh installs clang and libclang-rt-dev)");
  const dir = await Deno.makeTempDir({ prefix: "instar-fuzz-smoke-" });
  try {
    const mk = await new Deno.Command("bash", { args: [`${REPO}/fuzz/make_corpus.sh`, `${dir}/corpus`] })
      .output();
    assertEquals(mk.code, 0, dec.decode(mk.stderr));
    // measure_scan's seeds cover every selector (0 qcow2, 1 raw, 2 vpc, 3 vhdx, 4 vmdk).
    const selectors = new Set(files(`${dir}/corpus/measure_scan`).map((f) => Deno.readFileSync(f)[0]));
    assertEquals([...selectors].sort(), [0, 1, 2, 3, 4]);
    // Building a C target (clang, sanitizers) takes most of its step: the
    // default run builds every other target without regression inputs
    // (tests/support/full.ts); INSTAR_FULL_TESTS=1 and `deno task fuzz` all.
    const withRegressions = (name: string) => files(`${REPO}/fuzz/regression/${name}`).length > 0;
    const sampled = new Set([
      ...targets.filter((x) => withRegressions(x.name)),
      ...sweep(targets.filter((x) => !withRegressions(x.name)), 2),
    ]);
    for (const info of targets.filter((x) => sampled.has(x))) {
      await t.step(`${info.name}: a short run finds nothing`, async () => {
        const corpus = `${dir}/corpus/${info.name}`;
        const args = [info.name, "-max_total_time=1", "-seed=1", `-artifact_prefix=${dir}/`];
        try {
          if (Deno.statSync(corpus).isDirectory) args.push(corpus);
        } catch { /* TypeScript targets start from nothing */ }
        const r = await fuzz(args, dir);
        assertEquals(r.code, 0, r.text);
        assert(
          /#\d+\tINITED cov: \d+ ft: \d+ corp: \d+\/\d+[KM]?b exec\/s: \d+ rss: \d+Mb/.test(r.text),
          r.text,
        );
        assert(/#\d+\tDONE {3}cov: \d+ ft: \d+ corp: /.test(r.text), r.text);
        assert(/Done \d+ runs in \d+ second\(s\)/.test(r.text), r.text);
      });
      const regression = files(`${REPO}/fuzz/regression/${info.name}`);
      if (regression.length) {
        await t.step(`${info.name}: ${regression.length} regression inputs replay cleanly`, async () => {
          const r = await fuzz([info.name, ...regression], dir);
          assertEquals(r.code, 0, r.text);
          assert(r.text.includes("fuzzing was not performed"), r.text);
        });
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fuzz engine speaks libFuzzer's dialect on a planted bug", async () => {
  // A scratch copy of guest/ where qcow2_block_status no longer clamps a run
  // to the bytes asked for (seed 000's bug class: a run reaching past the
  // virtual size), built into a scratch output directory.
  const dir = await Deno.makeTempDir({ prefix: "instar-fuzz-bug-" });
  try {
    const cp = await new Deno.Command("cp", { args: ["-r", `${REPO}/guest`, `${dir}/guest`] }).output();
    assert(cp.success);
    const map = `${dir}/guest/qcow2/map.c`;
    const src = Deno.readTextFileSync(map);
    const clamp = "at = unit_end < end ? unit_end : end;";
    assert(src.includes(clamp), "the clamp this test removes is gone from guest/qcow2/map.c");
    Deno.writeTextFileSync(map, src.replace(clamp, "at = unit_end;"));
    const env = { FUZZ_GUEST_DIR: `${dir}/guest`, FUZZ_OUT: `${dir}/out` };
    // A qcow2 image whose size is not a multiple of its cluster size, its
    // last cluster allocated: the broken walk runs past the end at once.
    const mk = await new Deno.Command("bash", {
      args: [
        "-c",
        "qemu-img create -q -f qcow2 -o cluster_size=1024 img.qcow2 1536 && " +
        "qemu-io -f qcow2 -c 'write -P 1 1024 512' img.qcow2 >/dev/null && mkdir corpus && cp img.qcow2 corpus/",
      ],
      cwd: dir,
    }).output();
    assertEquals(mk.code, 0, dec.decode(mk.stderr));
    const r = await fuzz(
      ["qcow2_l1l2", "corpus", "-runs=1000", "-seed=5", "-artifact_prefix=art-"],
      dir,
      env,
    );
    assertEquals(r.code, 77, r.text); // libFuzzer's exit code for a deadly signal (the invariant's abort)
    assert(r.text.includes("invariant: len > 0 && len <= want"), r.text);
    const m = /Test unit written to (art-crash-[0-9a-f]{40})/.exec(r.text);
    assert(m, r.text);
    const crash = Deno.readFileSync(`${dir}/${m[1]}`);
    const sha = [...new Uint8Array(await crypto.subtle.digest("SHA-1", crash))].map((b) =>
      b.toString(16).padStart(2, "0")
    ).join("");
    assertEquals(m[1], `art-crash-${sha}`);
    // The artifact replays: in reproducer mode through the engine, and in the
    // target linked with clang's libFuzzer.
    const replay = await fuzz(["qcow2_l1l2", m[1]], dir, env);
    assertEquals(replay.code, 77, replay.text);
    const lf = await new Deno.Command(DENO, {
      args: ["run", "-A", `${REPO}/fuzz/engine/libfuzzer.ts`, "qcow2_l1l2", m[1]],
      cwd: dir,
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(lf.code, 77, dec.decode(lf.stderr));
    // The same image is fine for the real guest code.
    const clean = await fuzz(["qcow2_l1l2", m[1]], dir);
    assertEquals(clean.code, 0, clean.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("measure_scan's vpc and vhdx selectors reach the map guest's chain walk", async () => {
  // A scratch copy of guest/ whose map_chain_status reports a run one
  // sector longer than asked (past the virtual size at the last run): the
  // vpc (selector 2) and vhdx (selector 3) inputs trip the tiling invariant,
  // a qcow2 input (selector 0, its own walk) does not, and the real guest
  // code runs all three cleanly.
  const dir = await Deno.makeTempDir({ prefix: "instar-fuzz-scan-" });
  try {
    const cp = await new Deno.Command("cp", { args: ["-r", `${REPO}/guest`, `${dir}/guest`] }).output();
    assert(cp.success);
    const path = `${dir}/guest/chain/map_status.c`;
    const src = Deno.readTextFileSync(path);
    const line = "e->length = bytes;";
    assert(src.includes(line), "the line this test changes is gone from guest/chain/map_status.c");
    Deno.writeTextFileSync(path, src.replace(line, "e->length = bytes + 512;"));
    const env = { FUZZ_GUEST_DIR: `${dir}/guest`, FUZZ_OUT: `${dir}/out` };
    const mk = await new Deno.Command("bash", {
      args: [
        "-c",
        "qemu-img create -q -f vpc img.vpc 1M && qemu-io -f vpc -c 'write -P 7 4096 4096' img.vpc >/dev/null && " +
        "qemu-img create -q -f vhdx -o block_size=1M img.vhdx 8M && " +
        "qemu-io -f vhdx -c 'write -P 7 0 4096' img.vhdx >/dev/null && " +
        "qemu-img create -q -f qcow2 -o cluster_size=1024 img.qcow2 64K",
      ],
      cwd: dir,
    }).output();
    assertEquals(mk.code, 0, dec.decode(mk.stderr));
    const { vhdxSeed } = await import("../fuzz/vhdx_seed.ts");
    const input = (sel: number, body: Uint8Array) => {
      const out = new Uint8Array(2 + body.length);
      out.set([sel, 7]);
      out.set(body, 2);
      return out;
    };
    Deno.writeFileSync(`${dir}/vpc.in`, input(2, Deno.readFileSync(`${dir}/img.vpc`)));
    Deno.writeFileSync(`${dir}/vhdx.in`, input(3, vhdxSeed(Deno.readFileSync(`${dir}/img.vhdx`))));
    Deno.writeFileSync(`${dir}/qcow2.in`, input(0, Deno.readFileSync(`${dir}/img.qcow2`)));
    for (const f of ["vpc.in", "vhdx.in"]) {
      const r = await fuzz(["measure_scan", f], dir, env);
      assertEquals(r.code, 77, r.text);
      assert(r.text.includes("invariant: e.start == pos && e.length > 0 && e.length <= size - pos"), r.text);
    }
    const q = await fuzz(["measure_scan", "qcow2.in"], dir, env);
    assertEquals(q.code, 0, q.text);
    const clean = await fuzz(["measure_scan", "vpc.in", "vhdx.in", "qcow2.in"], dir);
    assertEquals(clean.code, 0, clean.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fuzz engine pieces: dictionary syntax, flags, seeded mutation", async () => {
  const { parseDict } = await import("../fuzz/engine/dict.ts");
  const { parseFlags } = await import("../fuzz/engine/flags.ts");
  const { Mutator } = await import("../fuzz/engine/mutate.ts");
  const { Rng } = await import("../fuzz/engine/rng.ts");
  assertEquals(parseDict('# c\nmagic="QFI\\xfb"\n"a\\"b\\\\"\n\n'), [
    new Uint8Array([0x51, 0x46, 0x49, 0xfb]),
    new TextEncoder().encode('a"b\\'),
  ]);
  let threw = false;
  try {
    parseDict("novalue\n");
  } catch {
    threw = true;
  }
  assert(threw, "a line without a quoted value is refused");
  const f = parseFlags(["dir", "-runs=5", "-max_len=64", "-artifact_prefix=x/", "-bogus=1", "-detect_leaks"]);
  assertEquals([f.flags.runs, f.flags.max_len, f.flags.artifact_prefix, f.flags.detect_leaks], [
    5,
    64,
    "x/",
    1,
  ]);
  assertEquals(f.positional, ["dir"]);
  assertEquals(f.warnings.length, 1);
  const run = (seed: number) => {
    const m = new Mutator(new Rng(seed), 32);
    m.dict = [new Uint8Array([1, 2, 3])];
    let d: Uint8Array = new Uint8Array([0x51, 0x46, 0x49, 0xfb]);
    const out: string[] = [];
    for (let i = 0; i < 500; i++) {
      d = m.mutate(d);
      assert(d.length >= 1 && d.length <= 32, `length ${d.length} outside [1, 32]`);
      out.push([...d].join(","));
    }
    return { out, ops: new Set(m.sequence) };
  };
  const a = run(7), b = run(7), c = run(8);
  assertEquals(a.out, b.out);
  assert(a.out.join() !== c.out.join(), "another seed gives other inputs");
  for (const op of ["ChangeBit", "EraseBytes", "InsertByte", "CopyPart", "InterestingInt", "ManualDict"]) {
    assert(a.ops.has(op), `mutation ${op} never chosen`);
  }
});

Deno.test("fuzz:diff replays a run exactly from its seed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "instar-fuzz-diff-" });
  try {
    let text = "";
    const runDiff = async (extra: string[]) => {
      const o = await new Deno.Command(DENO, {
        args: ["run", "-A", `${REPO}/fuzz/diff/main.ts`, "--seed", "7", "--out", `${dir}/reports`, ...extra],
        cwd: dir,
        env: { INSTAR_DIFF_CLI: CLI_ENTRY },
        stdout: "piped",
        stderr: "piped",
      }).output();
      text = dec.decode(o.stdout);
      assert(o.code === 0 || o.code === 1, dec.decode(o.stderr));
      assert(/\d+ iterations, \d+ divergences/.test(text), text);
      return text.split("\n").filter((l) => l.startsWith("iteration "));
    };
    const all = await runDiff(["--iterations", "3", "--ops", "measure,info"]);
    assertEquals(all.length, 3);
    // Iteration 2 alone draws the same picks as in the full run.
    assertEquals(await runDiff(["--only", "2", "--ops", "measure,info"]), [all[2]]);
    // vpc and vhdx inputs (qemu-img create and convert, qemu-io writes)
    // through info, check, map and compare agree with qemu-img.
    const vhd = await runDiff([
      "--iterations",
      "6",
      "--ops",
      "info,map,check,compare",
      "--formats",
      "vpc,vhdx",
    ]);
    assertEquals(vhd.length, 6);
    assert(vhd.some((l) => l.includes('"image_format":"vpc"')), vhd.join("\n"));
    assert(vhd.some((l) => l.includes('"image_format":"vhdx"')), vhd.join("\n"));
    assert(text.includes("6 iterations, 0 divergences"), text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
