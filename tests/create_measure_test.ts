// `instar create` and `instar measure` against qemu-img 7.2. create: the
// same command runs in two empty directories, one per tool; stdout, stderr
// (with our name) and exit codes must match and the files left behind must
// be byte-identical (qemu-img's create is deterministic). measure: numbers
// and text for --size sweeps and for raw/qcow2 inputs made here by
// qemu-img/qemu-io, including the seed-000 image with an L2 entry past the
// virtual size. Input measures need the built sandbox (`deno task build`).
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instar, type Outcome, qemuImg, sh } from "./cli_helpers.ts";
import { run } from "../lib/cli/run.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { sweep } from "./support/full.ts";

await useHostedGuestsWithoutKvm();

/** instar in this process (pure commands only: no files, no sandbox), as an Outcome. */
async function instarHere(args: string[]): Promise<Outcome> {
  let stdout = "", stderr = "";
  const code = await run(args, { out: (t) => (stdout += t), err: (t) => (stderr += t) });
  return { stdout, stderr, code };
}

const haveQemu = haveQemuImg();

/** File names and lengths in a directory (contents are compared with cmp: they may be huge and sparse). */
async function files(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) out.set(e.name, (await Deno.stat(`${dir}/${e.name}`)).size);
  }
  return out;
}

/** Runs `args` with both tools in fresh directories (after `setup` in each); compares everything. */
async function sameCreate(args: string[], setup?: (dir: string) => Promise<void>): Promise<Outcome> {
  const dq = await Deno.makeTempDir({ prefix: "instar_cq_" });
  const di = await Deno.makeTempDir({ prefix: "instar_ci_" });
  try {
    if (setup) {
      await setup(dq);
      await setup(di);
    }
    const q = await qemuImg(args, dq);
    const i = await instar(args, di);
    assertEquals(i, asInstar(q), `instar ${args.join(" ")}`);
    const fq = await files(dq);
    const fi = await files(di);
    assertEquals([...fi.keys()].sort(), [...fq.keys()].sort(), `files after ${args.join(" ")}`);
    for (const [name, length] of fq) {
      assertEquals(fi.get(name), length, `${name} length after ${args.join(" ")}`);
      const cmp = await new Deno.Command("cmp", {
        args: [`${dq}/${name}`, `${di}/${name}`],
        stdout: "piped",
        stderr: "piped",
      })
        .output();
      assert(cmp.success, `${name} bytes after ${args.join(" ")}: ${new TextDecoder().decode(cmp.stdout)}`);
    }
    return q;
  } finally {
    await Deno.remove(dq, { recursive: true });
    await Deno.remove(di, { recursive: true });
  }
}

const SIZES = ["0", "1", "512", "1000", "1M", "6320647", "2T"];

const QCOW2_OPTS = [
  "",
  "cluster_size=512",
  "cluster_size=4k,refcount_bits=1",
  "cluster_size=2M,refcount_bits=2",
  "refcount_bits=4",
  "refcount_bits=8,lazy_refcounts=on",
  "cluster_size=1k,refcount_bits=32",
  "cluster_size=512,refcount_bits=64",
  "compat=0.10",
  "compat=1.1,compression_type=zstd",
  "extended_l2=on",
  "extended_l2=on,cluster_size=16k,refcount_bits=1",
  "preallocation=off,nocow=off",
];

Deno.test({
  name: "create -f qcow2 writes qemu-img's bytes for a sweep of sizes and options",
  ignore: !haveQemu,
  async fn(t) {
    for (const o of QCOW2_OPTS) {
      // Every size with the defaults; the edge sizes with the rest.
      for (const size of o === "" ? SIZES : sweep(["0", "1000", "6320647", "2T"], 2)) {
        const args = ["create", "-f", "qcow2", ...(o ? ["-o", o] : []), "img.qcow2", size];
        await t.step(args.join(" "), async () => {
          await sameCreate(args);
        });
      }
    }
    // Preallocation: metadata replays qemu's allocator through L2 tables
    // and data runs; falloc/full lay refcount structures out first.
    for (
      const o of [
        "preallocation=metadata",
        "preallocation=metadata,cluster_size=512,refcount_bits=64",
        "preallocation=metadata,extended_l2=on,lazy_refcounts=on",
        "preallocation=falloc,cluster_size=4k",
        "preallocation=full,refcount_bits=1,cluster_size=1k",
        "preallocation=full,compat=0.10",
      ]
    ) {
      for (const size of sweep(["0", "1000", "1M", "6320647", "33M"], 2)) {
        const args = ["create", "-f", "qcow2", "-o", o, "img.qcow2", size];
        await t.step(args.join(" "), async () => {
          await sameCreate(args);
        });
      }
    }
    await t.step("metadata preallocation of 3G", async () => {
      await sameCreate(["create", "-f", "qcow2", "-o", "preallocation=metadata", "img.qcow2", "3G"]);
    });
    // The largest sizes and one past them.
    for (
      const [o, size] of [
        ["", "2P"],
        ["", "2251799813685760"],
        ["cluster_size=512", "128G"],
        ["cluster_size=512", "137438953984"],
        ["cluster_size=2M", "8E"],
        ["cluster_size=512,refcount_bits=64", "8G"],
      ]
    ) {
      const args = ["create", "-f", "qcow2", ...(o ? ["-o", o] : []), "img.qcow2", size];
      await t.step(args.join(" "), async () => {
        await sameCreate(args);
      });
    }
  },
});

Deno.test({
  name: "create -f qcow2 with backing files",
  ignore: !haveQemu,
  async fn(t) {
    const base = async (dir: string) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "base.raw", "3M");
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "5M");
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "mid.qcow2");
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.raw",
        "-F",
        "raw",
        "broken.qcow2",
        "1M",
      );
    };
    const cases = [
      ["-u", "-b", "missing.img", "-F", "raw", "img.qcow2", "1G"],
      ["-u", "-b", "missing.img", "-F", "qcow2", "img.qcow2"],
      ["-u", "-b", "missing.img", "img.qcow2", "1G"],
      ["-b", "base.raw", "-F", "raw", "img.qcow2"],
      ["-b", "base.qcow2", "-F", "qcow2", "img.qcow2"],
      ["-b", "base.qcow2", "-F", "qcow2", "img.qcow2", "7M"],
      ["-b", "mid.qcow2", "-F", "qcow2", "img.qcow2"],
      ["-b", "broken.qcow2", "-F", "qcow2", "img.qcow2"],
      ["-b", "base.raw", "img.qcow2"],
      ["-b", "base.raw", "-F", "qcow2", "img.qcow2"],
      ["-b", "missing.img", "-F", "raw", "img.qcow2"],
      ["-b", "img.qcow2", "-F", "raw", "-u", "img.qcow2", "1M"],
      ["-o", "backing_file=base.raw,backing_fmt=raw", "img.qcow2"],
      ["-o", "backing_fmt=raw", "img.qcow2", "1M"],
      ["-o", "backing_file=,backing_fmt=raw", "img.qcow2", "1M"],
      ["-u", "-b", "b".repeat(400), "-F", "raw", "-o", "cluster_size=512", "img.qcow2", "1M"],
      ["-u", "-b", "with,comma", "-F", "raw", "img.qcow2", "1M"],
      ["-u", "-b", "x", "-F", "nonsense", "img.qcow2", "1M"],
      ["-u", "-b", "x", "-F", "raw", "-o", "preallocation=metadata", "img.qcow2", "1M"],
      ["-u", "-b", "x", "-F", "raw", "-o", "preallocation=metadata,extended_l2=on", "img.qcow2", "3M"],
      ["-u", "-b", "x", "-F", "qcow2", "-o", "preallocation=full,extended_l2=on", "img.qcow2", "1M"],
    ];
    for (const c of cases) {
      const args = ["create", "-f", "qcow2", ...c];
      await t.step(args.join(" "), async () => {
        await sameCreate(args, base);
      });
    }
  },
});

Deno.test({
  name: "create -f raw and the refusals qemu-img makes",
  ignore: !haveQemu,
  async fn(t) {
    const cases: string[][] = [
      ["create", "img.raw", "1M"],
      ["create", "-f", "raw", "img.raw", "1000"],
      ["create", "-f", "raw", "img.raw", "0"],
      ["create", "-q", "img.raw", "4k"],
      ["create", "-o", "size=5k", "img.raw"],
      ["create", "-o", "preallocation=full", "img.raw", "100k"],
      ["create", "-o", "preallocation=falloc", "img.raw", "1000"],
      ["create", "-o", "preallocation=metadata", "img.raw", "1M"],
      ["create", "-o", "preallocation=bogus", "img.raw", "1M"],
      ["create", "img.raw", "9223372036854775807"],
      ["create", "img.raw", "4611686018427387904"],
      ["create", "img.raw", "9223372036854775808"],
      ["create", "img.raw"],
      ["create"],
      ["create", "img.raw", "1M", "extra"],
      ["create", "img.raw", "1Q"],
      ["create", "-o", "size=1M", "img.raw", "1M"],
      ["create", "-f", "nonsense", "img", "1M"],
      ["create", "-b", "x", "img.raw", "1M"],
      ["create", "-F", "raw", "img.raw", "1M"],
      ["create", "-o", ",size=1M", "img.raw"],
      ["create", "-o", "size=1M,", "img.raw"],
      ["create", "-o", "size=1M,,", "img.raw"],
      ["create", "-f", "qcow2", "-o", "cluster_size=1000", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "cluster_size=4M", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "cluster_size=abc", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "refcount_bits=3", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "refcount_bits=128", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "refcount_bits=abc", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "compat=0.10,extended_l2=on", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "compat=0.10,compression_type=zstd", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "compat=2", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "compression_type=lz4", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=8k", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "lazy_refcounts=maybe", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "preallocation=bogus", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "foo=bar", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "nolazy_refcounts,extended_l2", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "cluster_size=64k", "-o", "refcount_bits=0x8", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "img.qcow2", "4P"],
      ["create", "-f", "qcow2", "-o", "cluster_size=512", "img.qcow2", "1T"],
      ["create", "-f", "qcow2", "-q", "-o", "id=x,cluster_size=4096", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "encryption=off,data_file_raw=off", "img.qcow2", "1M"],
      ["create", "-f", "qcow2", "-o", "help"],
      ["create", "-f", "qcow2", "-o", "cluster_size=4k,?", "img.qcow2", "1M"],
      ["create", "-o", "help", "img.raw"],
      ["create", "-f", "nonsense", "-o", "help"],
    ];
    for (const args of cases) {
      await t.step(args.join(" "), async () => {
        await sameCreate(args);
      });
    }
  },
});

Deno.test({
  name: "measure --size matches qemu-img for a sweep of targets and options",
  ignore: !haveQemu,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "instar_m_" });
    try {
      const opts = [
        "",
        "cluster_size=512",
        "cluster_size=2M,refcount_bits=1",
        "refcount_bits=64",
        "extended_l2=on",
        "extended_l2=on,cluster_size=8k",
        "compat=0.10",
        "compat=0.10,refcount_bits=8",
        "compat=3",
        "preallocation=full",
        "preallocation=falloc,cluster_size=4k",
        "preallocation=metadata",
        "preallocation=bogus",
        "refcount_bits=5",
        "cluster_size=7",
        "foo=1",
        "cluster_size=big",
        "backing_file=x",
      ];
      for (const target of ["qcow2", "raw"]) {
        for (const o of opts) {
          for (const size of ["0", "1", "1000", "1G", "2G", "2P", "8E", "100T"]) {
            for (const output of o === "" || size === "2G" ? ["human", "json"] : ["json"]) {
              const args = [
                "measure",
                "-O",
                target,
                ...(o ? ["-o", o] : []),
                "--size",
                size,
                `--output=${output}`,
              ];
              await t.step(args.join(" "), async () => {
                const [q, i] = await Promise.all([qemuImg(args, dir), instarHere(args)]);
                assertEquals(i, asInstar(q));
                // Seed 001's invariants, on every success.
                if (q.code === 0 && output === "json") {
                  const m = JSON.parse(q.stdout);
                  assert(m.required <= m["fully-allocated"]);
                  if (target === "raw") assert(m["fully-allocated"] >= 0);
                  if (/preallocation=(full|falloc)/.test(o)) assertEquals(m.required, m["fully-allocated"]);
                }
              });
            }
          }
        }
      }
      for (
        const args of [
          ["measure"],
          ["measure", "--size", "1G", "x"],
          ["measure", "-f", "raw", "--size", "1G"],
          ["measure", "--size", "1G", "--output=xml"],
          ["measure", "--size", "-1"],
          ["measure", "--size", "1G", "-O", "nonsense"],
          ["measure", "a", "b"],
        ]
      ) {
        await t.step(args.join(" "), async () => {
          const [q, i] = await Promise.all([qemuImg(args, dir), instarHere(args)]);
          assertEquals(i, asInstar(q));
        });
      }
      // Bad options: glibc's own message under the subcommand's name, then
      // the help text (instar's own, so stdout is not compared), exit 0.
      for (
        const args of [["measure", "-x", "--size", "1G"], ["measure", "--bogus"], ["measure", "--size"], [
          "measure",
          "-O",
        ]]
      ) {
        await t.step(args.join(" "), async () => {
          const [q, i] = await Promise.all([qemuImg(args, dir), instarHere(args)]);
          assertEquals([i.code, i.stderr], [q.code, q.stderr]);
        });
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Big-endian u64 write at a file offset. */
async function poke64(path: string, offset: number, value: bigint) {
  const f = await Deno.open(path, { read: true, write: true });
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value, false);
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(b);
  f.close();
}

Deno.test({
  name: "measure of images made by qemu-img and qemu-io matches qemu-img",
  ignore: !haveQemu || !built(),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "instar_mi_" });
    try {
      const io = (file: string, ...cmds: string[]) =>
        sh(dir, "qemu-io", "-f", "qcow2", ...cmds.flatMap((c) => ["-c", c]), file);
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "64M");
      await io(
        "s.qcow2",
        "write -P 0xab 0 1M",
        "write -P 0xcd 4M 512k",
        "write -z 8M 1M",
        "write -P 0x11 32M 64k",
      );
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "c.qcow2", "10M");
      await io(
        "c.qcow2",
        "write -c -P 1 0 64k",
        "write -P 2 100k 3k",
        "write -P 3 1M 1M",
        "discard 1M 512k",
        "write -z 5M 64k",
      );
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "empty.qcow2", "1G");
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "s.qcow2", "-F", "qcow2", "over.qcow2");
      await io("over.qcow2", "write -P 5 40M 128k", "write -z 0 64k");
      // A sparse raw file with data at odd offsets.
      const raw = await Deno.open(`${dir}/r.raw`, { write: true, create: true });
      await raw.truncate(5 * 1024 * 1024 + 512);
      await raw.seek(70000, Deno.SeekMode.Start);
      await raw.write(new Uint8Array(9000).fill(7));
      await raw.seek(3 * 1024 * 1024, Deno.SeekMode.Start);
      await raw.write(new Uint8Array(4096).fill(9));
      raw.close();
      // Seed 000: an L2 entry whose guest offset lies past the virtual size.
      // Made as a 2 MiB image with data at 1.5 MiB, then the header's size
      // field (offset 24) set to 1 MiB: the entry stays, the guest never sees it.
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "past.qcow2", "2M");
      await io("past.qcow2", "write -P 0x42 0 64k", "write -P 0x43 1536k 128k");
      await poke64(`${dir}/past.qcow2`, 24, 1024n * 1024n);

      const inputs: [string[], string][] = [
        [[], "s.qcow2"],
        [[], "c.qcow2"],
        [[], "empty.qcow2"],
        [[], "over.qcow2"],
        [["-f", "raw"], "r.raw"],
        [[], "past.qcow2"],
      ];
      for (const [fmt, file] of inputs) {
        for (const target of [["-O", "qcow2"], ["-O", "raw"], []]) {
          for (
            const o of [
              [],
              ["-o", "cluster_size=4k"],
              ["-o", "cluster_size=2M,refcount_bits=1"],
              ["-o", "backing_file=x"],
              ["-o", "compat=0.10"],
              ["-o", "preallocation=full"],
            ]
          ) {
            if (target[1] !== "qcow2" && o.length) continue;
            for (const output of ["--output=human", "--output=json"]) {
              const args = ["measure", ...fmt, ...target, ...o, output, file];
              await t.step(args.join(" "), async () => {
                const [q, i] = await Promise.all([qemuImg(args, dir), instar(args, dir)]);
                assertEquals(i, asInstar(q));
              });
            }
          }
        }
      }
      // Seed 000 invariant, stated on its own: what measure counts as data
      // never exceeds the virtual size (1 MiB here, with 64 KiB clusters).
      const m = JSON.parse(
        (await instar(["measure", "-O", "qcow2", "--output=json", "past.qcow2"], dir)).stdout,
      );
      const empty = JSON.parse(
        (await instar(["measure", "-O", "qcow2", "--output=json", "--size", "1M"], dir)).stdout,
      );
      assert(m.required - empty.required <= 1024 * 1024);
      assertEquals(m.required - empty.required, 65536);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "measure: a compat=0.10 input has no bitmaps line (found by fuzz:diff)",
  ignore: !haveQemu || !built(),
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "instar-measure-v2-" });
  try {
    const q0 = await qemuImg(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "4M"], dir);
    assertEquals(q0.code, 0, q0.stderr);
    for (const out of ["human", "json"]) {
      const args = ["measure", `--output=${out}`, "-O", "qcow2", "v2.qcow2"];
      assertEquals(await instar(args, dir), asInstar(await qemuImg(args, dir)));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
