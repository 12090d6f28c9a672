// instar convert -O vmdk against qemu-img convert -O vmdk, on sources
// qemu-img and qemu-io make here (raw with data, explicit zeroes and
// holes, a qcow2 backing chain with a zero write, compressed qcow2,
// dynamic vpc, vhdx; a size that is not a whole grain), for every
// subformat qemu-img writes: every file of the output is byte-identical to
// qemu-img's once the random CID is masked (docs/quirks.md), reads back as
// the source, passes `qemu-img check`, opens in libvmdk's vmdkinfo, has
// qemu's `qemu-img info`, and its size lies within seed 004's bound of
// `instar measure -O vmdk`. Option refusals print qemu-img's own stderr
// and exit code; nothing is left behind on failure or SIGINT.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, CLI_ENTRY, DENO, exec, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";

const haveVmdkinfo = (() => {
  try {
    return new Deno.Command("vmdkinfo", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();
const ready = built() && haveQemuImg();

async function qemuIo(dir: string, file: string, fmt: string, ...cmds: string[]) {
  await sh(dir, "qemu-io", "-f", fmt, ...cmds.flatMap((c) => ["-c", c]), file);
}

/**
 * The file's bytes with its descriptor compared apart: qemu draws a random
 * CID at create time and rewrites it on the first data write, in place
 * (a shorter CID leaves the old text's last bytes after the new text's
 * NUL). So the descriptor text is compared up to its NUL with the CID
 * masked, and the descriptor's area (an embedded descriptor's 20 sectors,
 * or the whole descriptor file, whose length is compared) is left out.
 */
async function masked(path: string): Promise<string> {
  const bytes = await Deno.readFile(path);
  const all = new TextDecoder("latin1").decode(bytes);
  const at = all.indexOf("# Disk DescriptorFile");
  if (at !== 0 && at !== 512) return all;
  const end = all.indexOf("\0", at);
  const text = all.slice(at, end < 0 ? all.length : end).replace(/\nCID=[0-9a-f]{1,8}\n/, "\nCID=x\n");
  if (at === 0) return `descriptor file of ${bytes.length} bytes:\n${text}`;
  return all.slice(0, 512) + text + all.slice(512 * 21);
}

async function files(dir: string): Promise<string[]> {
  const out = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

async function totalSize(dir: string): Promise<bigint> {
  let n = 0n;
  for (const f of await files(dir)) n += BigInt((await Deno.stat(`${dir}/${f}`)).size);
  return n;
}

async function infoJson(dir: string, file: string): Promise<Record<string, unknown>> {
  const r = await qemuImg(["info", "-f", "vmdk", "--output=json", file], dir);
  assertEquals(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  delete j["actual-size"];
  delete j.filename;
  const fs = j["format-specific"]?.data;
  if (fs) {
    delete fs.cid;
    for (const e of fs.extents ?? []) delete e.filename;
  }
  return j;
}

/** The process holds a file under `prefix` open (a named temporary or an unnamed O_TMPFILE output). */
async function writing(pid: number, prefix: string): Promise<boolean> {
  try {
    for await (const e of Deno.readDir(`/proc/${pid}/fd`)) {
      const target = await Deno.readLink(`/proc/${pid}/fd/${e.name}`).catch(() => "");
      if (target.startsWith(prefix)) return true;
    }
  } catch { /* the process is gone */ }
  return false;
}

async function temps(dir: string): Promise<string[]> {
  const out = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.includes(".instar-")) out.push(e.name);
    if (e.isDirectory) out.push(...(await temps(`${dir}/${e.name}`)).map((n) => `${e.name}/${n}`));
  }
  return out;
}

interface Source {
  name: string;
  file: string;
  fmt: string;
}

/** 5 MiB + 12.5 KiB: whole sectors, not whole grains. */
const SIZE = String(5 * 1024 * 1024 + 12 * 1024 + 512);

async function makeSources(dir: string): Promise<Source[]> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "src.raw", SIZE);
  await qemuIo(
    dir,
    "src.raw",
    "raw",
    "write -P 0x11 0 64k",
    "write -P 0x22 1M 4k", // part of a grain
    "write -P 0 2M 32k", // written zeroes: data to the file system, zero to convert
    "write -P 0x33 3M 600k",
    "write -P 0x44 5M 12k", // into the last, partial grain
  );
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", SIZE);
  await qemuIo(dir, "base.qcow2", "qcow2", "write -P 0x55 0 2M", "write -P 0x66 4M 1M");
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
  await qemuIo(dir, "top.qcow2", "qcow2", "write -P 0x77 1M 64k", "write -z 4M 512k", "write -P 0x88 3M 4k");
  await sh(dir, "qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "src.raw", "comp.qcow2");
  await sh(dir, "qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "src.raw", "dyn.vpc");
  await sh(
    dir,
    "qemu-img",
    "convert",
    "-q",
    "-f",
    "raw",
    "-O",
    "vhdx",
    "-o",
    "block_size=1M",
    "src.raw",
    "s.vhdx",
  );
  await qemuIo(dir, "s.vhdx", "vhdx", "write -z 3M 1M");
  return [
    { name: "raw", file: "src.raw", fmt: "raw" },
    { name: "chain", file: "top.qcow2", fmt: "qcow2" },
    { name: "compressed", file: "comp.qcow2", fmt: "qcow2" },
    { name: "vpc", file: "dyn.vpc", fmt: "vpc" },
    { name: "vhdx", file: "s.vhdx", fmt: "vhdx" },
  ];
}

const SUBFORMATS = [
  "monolithicSparse",
  "streamOptimized",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
];
/** Options tried from the raw source: every one with monolithicSparse, some with the others. */
const OPTIONS = [
  "subformat=monolithicSparse,adapter_type=lsilogic",
  "subformat=monolithicSparse,adapter_type=buslogic,hwversion=7",
  "subformat=monolithicSparse,adapter_type=legacyESX,compat6",
  "subformat=monolithicSparse,toolsversion=11",
  "subformat=monolithicSparse,zeroed_grain=on",
  "subformat=streamOptimized,zeroed_grain=on",
  "subformat=streamOptimized,compat6,adapter_type=lsilogic",
  "subformat=monolithicFlat,adapter_type=buslogic,hwversion=10",
  "subformat=twoGbMaxExtentSparse,zeroed_grain=on",
  "subformat=twoGbMaxExtentFlat,compat6",
];

async function measureBound(dir: string, src: Source, opts: string) {
  const r = await instar(
    ["measure", "--output=json", "-f", src.fmt, "-O", "vmdk", "-o", opts, src.file],
    dir,
  );
  assertEquals(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  return { required: BigInt(j.required), full: BigInt(j["fully-allocated"]) };
}

/** Converts with both tools into fresh directories a/ and b/ and checks
 * everything the header promises; returns the two directories. */
async function both(dir: string, src: Source, opts: string, extra: string[] = [], env = {}) {
  const tag = `${src.name}-${opts}-${extra.join("")}-${Object.values(env).join("")}`.replace(
    /[^A-Za-z0-9_-]/g,
    "_",
  );
  const a = `${dir}/${tag}.a`, b = `${dir}/${tag}.b`;
  await Deno.mkdir(a);
  await Deno.mkdir(b);
  const args = ["convert", "-f", src.fmt, "-O", "vmdk", "-o", opts, ...extra, `../${src.file}`, "t.vmdk"];
  const r = await new Deno.Command(DENO, {
    args: ["run", "-A", CLI_ENTRY, ...args],
    cwd: a,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  assertEquals([r.code, dec.decode(r.stdout), dec.decode(r.stderr)], [0, "", ""]);
  const q = await qemuImg(args, b);
  assertEquals(q.code, 0, q.stderr);
  assertEquals(await files(a), await files(b));
  const cmp = await qemuImg(["compare", "-f", src.fmt, "-F", "vmdk", `../${src.file}`, "t.vmdk"], a);
  assertEquals(cmp.code, 0, cmp.stdout + cmp.stderr);
  const check = await qemuImg(["check", "t.vmdk"], a);
  assertEquals(check.code, 0, check.stdout + check.stderr);
  assert(check.stdout.includes("No errors were found on the image."), check.stdout);
  assertEquals(await infoJson(a, "t.vmdk"), await infoJson(b, "t.vmdk"));
  if (haveVmdkinfo) {
    const v = await exec("vmdkinfo", ["t.vmdk"], a);
    assertEquals(v.code, 0, v.stdout + v.stderr);
  }
  return { a, b };
}

Deno.test(
  { name: "convert -O vmdk: every subformat from every source, as qemu-img writes it", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-vmdk-" });
    try {
      const sources = await makeSources(dir);
      for (const src of sources) {
        // Every subformat from raw and the chain; from the others one per writer.
        const subs = src.name === "raw" || src.name === "chain"
          ? SUBFORMATS
          : ["monolithicSparse", "streamOptimized", "twoGbMaxExtentFlat"];
        const cases = subs.map((s) => `subformat=${s}`);
        if (src.name === "raw") cases.push(...OPTIONS);
        for (const opts of cases) {
          await t.step(`${src.name} -> ${opts}`, async () => {
            const { a, b } = await both(dir, src, opts);
            // Byte for byte qemu-img's files, the CID aside.
            for (const f of await files(a)) {
              assert(
                (await masked(`${a}/${f}`)) === (await masked(`${b}/${f}`)),
                `${f} differs from qemu-img's`,
              );
            }
            // Seed 004: the output (all its files) within measure's bound.
            const { required, full } = await measureBound(dir, src, opts);
            const size = await totalSize(a);
            // The scan counts a vpc or vhdx source's allocated blocks (2 MiB,
            // 1 MiB here) as data, while convert skips the 64 KiB grains that
            // read as zeroes: only the upper bound holds for them (docs/quirks.md).
            const low = src.fmt === "vhdx" || src.fmt === "vpc" ? 0n : required - 65536n;
            assert(size >= low && size <= full + 65536n, `${size} not in [${required}, ${full}] +- 64 KiB`);
            await Deno.remove(a, { recursive: true });
            await Deno.remove(b, { recursive: true });
          });
        }
      }
      assertEquals(await temps(dir), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  {
    name: "convert -O vmdk: -S, -c, two guests, refusals in qemu's words, nothing left behind",
    ignore: !ready,
  },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-vmdk-" });
    try {
      const [raw, chain] = await makeSources(dir);
      await t.step("-S 0 and -S 64k: the same files as qemu-img's", async () => {
        for (const sub of ["monolithicSparse", "twoGbMaxExtentSparse", "monolithicFlat"]) {
          for (const sparse of ["0", "64k"]) {
            for (const src of sub === "monolithicSparse" ? [raw, chain] : [chain]) {
              const { a, b } = await both(dir, src, `subformat=${sub}`, ["-S", sparse]);
              for (const f of await files(a)) {
                assert(
                  (await masked(`${a}/${f}`)) === (await masked(`${b}/${f}`)),
                  `${sub} -S ${sparse}: ${f}`,
                );
              }
            }
          }
        }
      });
      await t.step("streamOptimized -S 0: every grain compressed, as qemu-img", async () => {
        // qemu-img 7.2 leaves a grain's worth of zero sectors after the last
        // grain it writes for -S 0 (its zero-write fallback); instar does
        // not, so the files agree up to instar's end and the rest is zeroes.
        const { a, b } = await both(dir, raw, "subformat=streamOptimized", ["-S", "0"]);
        const ours = await masked(`${a}/t.vmdk`), theirs = await masked(`${b}/t.vmdk`);
        assert(ours.length <= theirs.length && theirs.startsWith(ours), "streamOptimized -S 0 differs");
        assert(/^\0*$/.test(theirs.slice(ours.length)));
      });
      await t.step("-c: accepted where qemu-img accepts it, the same files", async () => {
        for (const sub of ["monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse"]) {
          const { a, b } = await both(dir, chain, `subformat=${sub}`, ["-c"]);
          for (const f of await files(a)) {
            assert((await masked(`${a}/${f}`)) === (await masked(`${b}/${f}`)), `${sub} -c: ${f}`);
          }
        }
      });
      await t.step("one guest or two: the same content, a clean image", async () => {
        // The multi-file writer runs the same block targets per extent.
        for (const sub of ["monolithicSparse", "streamOptimized", "twoGbMaxExtentFlat"]) {
          for (const g of ["1", "2"]) {
            await both(dir, chain, `subformat=${sub}`, [], { INSTAR_GUESTS: g });
          }
        }
      });
      await t.step("refusals: qemu-img's stderr and exit code, no file left", async () => {
        const bad = [
          ["-o", "compat6,hwversion=7"],
          ["-o", "adapter_type=foo"],
          ["-o", "subformat=foo"],
          ["-o", "adapter_type=foo,subformat=bar"],
          ["-o", "subformat=monolithicFlat,zeroed_grain=on"],
          ["-o", "subformat=twoGbMaxExtentFlat,zeroed_grain=on"],
          ["-o", "subformat=monolithicFlat,zeroed_grain=on,compat6,hwversion=4"],
          ["-o", "preallocation=metadata"],
          ["-o", "preallocation=foo,adapter_type=bar"],
          ["-o", "preallocation=foo"],
          ["-c", "-o", "subformat=monolithicFlat"],
          ["-c", "-o", "subformat=twoGbMaxExtentFlat"],
        ];
        for (const extra of bad) {
          const tag = extra.join("").replace(/[^A-Za-z0-9]/g, "_");
          const a = `${dir}/r${tag}.a`, b = `${dir}/r${tag}.b`;
          await Deno.mkdir(a);
          await Deno.mkdir(b);
          const args = ["convert", "-f", "raw", "-O", "vmdk", ...extra, "../src.raw", "t.vmdk"];
          const [q, i] = [await qemuImg(args, b), await instar(args, a)];
          assertEquals(i, asInstar(q));
          assert(q.code !== 0);
          assertEquals(await files(a), []);
        }
      });
      await t.step("an extent name that is a directory: qemu-img's words, no file left", async () => {
        for (const side of ["dir.a", "dir.b"]) {
          await Deno.mkdir(`${dir}/${side}/t-flat.vmdk`, { recursive: true });
        }
        const args = [
          "convert",
          "-f",
          "raw",
          "-O",
          "vmdk",
          "-o",
          "subformat=monolithicFlat",
          "../src.raw",
          "t.vmdk",
        ];
        const [q, i] = [await qemuImg(args, `${dir}/dir.b`), await instar(args, `${dir}/dir.a`)];
        assertEquals(i, asInstar(q));
        assert(q.code !== 0);
        assertEquals(await files(`${dir}/dir.a`), ["t-flat.vmdk"]);
      });
      await t.step("an empty source: qemu-img's refusal (it cannot open what it writes)", async () => {
        await Deno.writeFile(`${dir}/empty.raw`, new Uint8Array());
        await Deno.mkdir(`${dir}/empty.a`);
        await Deno.mkdir(`${dir}/empty.b`);
        for (const sub of SUBFORMATS) {
          const args = [
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            `subformat=${sub}`,
            "../empty.raw",
            "t.vmdk",
          ];
          const [q, i] = [await qemuImg(args, `${dir}/empty.b`), await instar(args, `${dir}/empty.a`)];
          // qemu-img aborts on the multi-file ones (an assertion): instar refuses them the same way.
          if (sub === "monolithicSparse" || sub === "streamOptimized") assertEquals(i, asInstar(q));
          else {
            assertEquals([i.code, i.stderr], [
              1,
              `instar: Could not open 't.vmdk': Unsupported image type '${sub}'\n`,
            ]);
          }
          assertEquals(await files(`${dir}/empty.a`), []);
        }
      });
      await t.step("a failing source leaves no file of a multi-file target", async () => {
        // A compressed cluster whose stream is garbage fails the read (as in qemu).
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "g.qcow2", "1M");
        await qemuIo(dir, "g.qcow2", "qcow2", "write -c -P 0x41 0 64k");
        const img = await Deno.readFile(`${dir}/g.qcow2`);
        let last = img.length - 1;
        while (last > 0 && img[last] === 0) last--;
        img.fill(0xff, last - 40, last + 1);
        await Deno.writeFile(`${dir}/g.qcow2`, img);
        await Deno.mkdir(`${dir}/fail`);
        for (const sub of SUBFORMATS) {
          const r = await instar(
            ["convert", "-O", "vmdk", "-o", `subformat=${sub}`, "../g.qcow2", "t.vmdk"],
            `${dir}/fail`,
          );
          assert(r.code !== 0, `${sub}: a corrupt source must fail the convert`);
          assertEquals(await files(`${dir}/fail`), []);
        }
      });
      await t.step("twoGbMaxExtent* over 2 GiB: the extents qemu-img writes", async () => {
        const big: Source = { name: "big", file: "big.raw", fmt: "raw" };
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "big.raw", String((4n << 30n) + (1n << 20n)));
        await qemuIo(dir, "big.raw", "raw", "write -P 1 0 64k", "write -P 2 2044M 8M", "write -P 3 4G 1M");
        for (const sub of ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]) {
          const { a, b } = await both(dir, big, `subformat=${sub}`);
          assertEquals(await files(a), [
            "t-" + (sub.endsWith("Flat") ? "f" : "s") + "001.vmdk",
            ...(
              sub.endsWith("Flat") ? ["t-f002.vmdk", "t-f003.vmdk"] : ["t-s002.vmdk", "t-s003.vmdk"]
            ),
            "t.vmdk",
          ]);
          for (const f of await files(a)) {
            const [sa, sb] = [await Deno.stat(`${a}/${f}`), await Deno.stat(`${b}/${f}`)];
            assertEquals(sa.size, sb.size, f);
            // Flat extents are mostly holes: compare those through qemu-img.
            if (sa.size < 16 << 20) {
              assert((await masked(`${a}/${f}`)) === (await masked(`${b}/${f}`)), `${sub}: ${f}`);
            }
          }
          const cmp = await qemuImg(
            ["compare", "-f", "vmdk", "-F", "vmdk", `${a}/t.vmdk`, `${b}/t.vmdk`],
            dir,
          );
          assertEquals(cmp.code, 0, cmp.stdout);
          const { required, full } = await measureBound(dir, big, `subformat=${sub}`);
          const size = await totalSize(a);
          assert(size >= required - 65536n && size <= full + 65536n, `${size} not in [${required}, ${full}]`);
          await Deno.remove(a, { recursive: true });
          await Deno.remove(b, { recursive: true });
        }
      });
      await t.step("SIGINT leaves nothing of a multi-file target", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "int.raw", "3G");
        await qemuIo(dir, "int.raw", "raw", "write -P 9 0 64M", "write -P 8 2G 64M");
        await Deno.mkdir(`${dir}/int`);
        const child = new Deno.Command(DENO, {
          args: [
            "run",
            "-A",
            CLI_ENTRY,
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentFlat",
            "../int.raw",
            "t.vmdk",
          ],
          cwd: `${dir}/int`,
          stdout: "null",
          stderr: "null",
        }).spawn();
        // The outputs are unnamed (O_TMPFILE) where the file system allows:
        // wait for the child to hold a file in the target directory open.
        for (let i = 0; i < 400 && !(await writing(child.pid, `${dir}/int/`)); i++) {
          await new Promise((r) => setTimeout(r, 25));
        }
        child.kill("SIGINT");
        const st = await child.status;
        assert(!st.success, "the interrupted convert must not succeed");
        assertEquals(await files(`${dir}/int`), []);
      });
      assertEquals(await temps(dir), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

// The zlib convert guest's streamOptimized mode on its own (the hosted
// build of the same program): the parameters it refuses and the markers,
// streams and records it produces, which the planner then checks.
const HOSTED = `${new URL("..", import.meta.url).pathname}build/host`;
const haveHosted = (() => {
  try {
    return Deno.statSync(`${HOSTED}/convert_zlib`).isFile;
  } catch {
    return false;
  }
})();

Deno.test(
  {
    name: "convert guest streamOptimized mode: refusals, markers, records",
    ignore: !haveHosted || !haveQemuImg(),
  },
  async () => {
    const { decodeRecords } = await import("../lib/abi/records.ts");
    const { convertFlags, guestErrors, records } = await import("../lib/abi/spec.ts");
    const { inflateSync } = await import("node:zlib");
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-vmdk-guest-" });
    try {
      // 200 KiB + 512: grain 3 holds 8.5 KiB.
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "s.raw", String(200 * 1024 + 512));
      await qemuIo(dir, "s.raw", "raw", "write -P 0x11 4k 4k", "write -P 0x22 200k 512");
      const run = async (prog: string, args: bigint[], cap = 1n << 30n) => {
        const a = args.flatMap((x) => ["--arg", x.toString()]);
        const r = await new Deno.Command(`${HOSTED}/${prog}`, {
          args: [...a, "-o", `${dir}/out`, "--cap", cap.toString(), `raw:${dir}/s.raw`],
          stdout: "piped",
          stderr: "piped",
        }).output();
        return decodeRecords(r.stdout);
      };
      const error = (recs: Awaited<ReturnType<typeof run>>) =>
        recs.find((r) => r.type === records.ERROR)?.fields;
      const F = convertFlags;
      const VMDK = BigInt(F.QCOW2 | F.COMPRESS | F.VMDK);
      // arg: data input, flags, min_sparse, start, grain bits, from, to, max refs
      const base = [0n, VMDK, 4096n, 65536n, 16n, 0n, 0n, 0n];
      const bad: [string, string, bigint[]][] = [
        ["plain convert", "convert", base],
        ["without COMPRESS", "convert_zlib", base.with(1, BigInt(F.QCOW2 | F.VMDK))],
        ["with ZSTD", "convert_zlib", base.with(1, VMDK | BigInt(F.ZSTD))],
        ["with BLOCK", "convert_zlib", base.with(1, VMDK | BigInt(F.BLOCK))],
        ["grains of 128 KiB", "convert_zlib", base.with(4, 17n)],
      ];
      for (const [what, prog, args] of bad) {
        assertEquals(error(await run(prog, args))?.code, guestErrors.BAD_PARAMS, what);
      }
      const recs = await run("convert_zlib", base);
      assertEquals(error(recs), undefined);
      // Grain 0 (data at 4 KiB) and grain 3 (data in the disk's last sector), one sector each, packed.
      const packed = recs.filter((r) => r.type === records.COMPRESSED_RUN).flatMap((r) =>
        (r.fields.len as number[]).slice(0, r.fields.n as number).map((len, i) => [
          (r.fields.guest_cluster as bigint) + BigInt(i),
          r.fields.host_offset,
          len,
        ])
      );
      assertEquals(packed, [[0n, 65536n, 512], [3n, 66048n, 512]]);
      assert(!recs.some((r) => r.type === records.DATA_RUN), "no grain is stored plain");
      const out = await Deno.readFile(`${dir}/out`);
      const dv = new DataView(out.buffer);
      const grain = (at: number) => {
        const size = dv.getUint32(at + 8, true);
        return {
          lba: dv.getBigUint64(at, true),
          data: new Uint8Array(inflateSync(out.subarray(at + 12, at + 12 + size))),
        };
      };
      const g0 = grain(65536), g1 = grain(65536 + 512);
      assertEquals([g0.lba, g0.data.length], [0n, 65536]);
      assert(g0.data.subarray(4096, 8192).every((b) => b === 0x11) && g0.data[0] === 0);
      // The last grain holds only the disk's bytes, compressed alone.
      assertEquals([g1.lba, g1.data.length], [384n, 8704]);
      assert(
        g1.data.subarray(8192).every((b) => b === 0x22) && g1.data.subarray(0, 8192).every((b) => b === 0),
      );
      // -S 0: every grain, zeroes included.
      const all = await run("convert_zlib", base.with(2, 0n));
      const n = all.filter((r) => r.type === records.COMPRESSED_RUN).reduce(
        (t, r) => t + (r.fields.n as number),
        0,
      );
      assertEquals(n, 4);
      // A cap one sector short ends the run (the VMM's output cap; the hosted build exits): no end record.
      const capped = await run("convert_zlib", base, 65536n + 512n);
      assert(!capped.some((r) => r.type === records.CONVERT_DONE), "a write past the cap must end the run");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
