// `deno task fuzz:diff`: the differential fuzzer. Random operations on images
// qemu-img and qemu-io make, run through both instar and qemu-img, compared:
// Inputs are qcow2, raw, vpc (dynamic, fixed, force_size) and vhdx
// (dynamic, fixed, block sizes 1M..32M, log sizes), made by qemu-img create
// or by qemu-img convert from raw, then written by qemu-io.
//   info     stdout/stderr/exit code (human and JSON)
//   check    stdout/stderr/exit code (JSON: the counters); qcow2, vpc, vhdx
//   map      stdout/stderr/exit code (human and JSON)
//   compare  stdout/stderr/exit code of two images (the second converted
//            from the first, maybe then written, or made separately; -s)
//   measure  stdout/stderr/exit code (raw and qcow2 targets: the numbers);
//            vpc/vhdx/vmdk targets (qemu-img cannot measure them): the
//            size of instar's own conversion lies in [required - 64 KiB,
//            fully allocated + 64 KiB] of instar's measure (seed 004)
//   convert  exit code and messages, then SHA-256 of both outputs flattened
//            to raw by qemu-img (-O raw, qcow2 with and without -c, vpc,
//            vhdx, vmdk of every subformat, with -c for the sparse ones:
//            skipped while instar refuses them as "not supported")
//   create   stdout/stderr/exit code, then `qemu-img info` of both outputs
//   repair   check -r leaks|all of a qcow2 whose refcounts were edited here
//            (leaks, refcounts too low or high, zero; the dirty bit): two
//            copies, one repaired by each tool: stdout/stderr/exit code and
//            the repaired files byte for byte (skipped where instar refuses
//            a repair beyond refcounts, docs/check.md)
//   resize   qcow2 and raw: stdout/stderr/exit code, then `qemu-img info`
//            and `check` of both outputs (grow and shrink, refcount widths
//            1..64); vpc and vhdx (qemu-img cannot resize them): instar
//            only, qemu-img must read the result and the data below the
//            old size must be unchanged (skipped while instar refuses with
//            "does not support resize")
//   snapshot qcow2 (any refcount width, v2/v3, extended L2): 1-4 of
//            snapshot -c/-a/-d with names from a small pool, on two copies:
//            stdout/stderr/exit code after each, then the files byte for
//            byte with the snapshot dates masked and `qemu-img check` of
//            instar's copy (stops at the first failure: qemu may leave
//            leaked clusters where instar writes nothing, docs/snapshot.md)
//   commit   a qcow2 over a qcow2 or raw base (-d, -b): two copies, one
//            committed by each tool: stdout/stderr/exit code, then info,
//            check and the flattened data of base and top
//   rebase   the same chain onto another base (safe or -u, -F, or none):
//            outcome, then info, check and the flattened data of the top
//   amend    a qcow2's compat, lazy_refcounts, refcount_bits, size: outcome,
//            then info, check and the flattened data
//   bitmap   1-3 of --add (-g, --disable), --remove, --clear, --enable,
//            --disable on a qcow2: outcome after each, then info and check
//   dd       bs/count/skip of any input to raw or qcow2: outcome (output
//            names normalised), then the flattened outputs
//   refgrow  a qcow2 with small clusters (512..4K, refcount widths 1..64)
//            filled to near what its refcount table covers, then 1-4 of
//            snapshot -c/-d, amend refcount_bits, bitmap --add and resize
//            on two copies: outcome after each, the files byte for byte
//            (snapshot dates masked) and check of instar's copy
//   convert_backing  convert -B base -F fmt -O qcow2 of a chain's top or a
//            lone image: outcome, then the flattened data and map (offsets
//            of the target's own clusters left out: instar's layout)
// Pickers stay away from the divergences docs/quirks.md documents (raw
// inputs always get -f raw, no backing or data files but the chains of
// commit/rebase/convert_backing, no snapshots/bitmaps for info).
// Every divergence is written as JSON (seed, iteration, picks, command
// lines, both outcomes) to the report directory.
//
//   deno task fuzz:diff [--iterations N] [--seed S] [--only I] [--out DIR] [--ops a,b]
//                       [--formats qcow2,raw,vpc,vhdx,vmdk]   (input formats; default all)
//
// Iteration i draws from Rng(seed, i) alone, so `--seed S --only I` replays
// one iteration exactly.
import { parseArgs } from "node:util";
import { Rng } from "../engine/rng.ts";
import { setIncompat, setRefcount } from "../../tests/support/qcow2_edit.ts";

const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const dec = new TextDecoder();

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], cwd: string): Promise<Outcome> {
  const o = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped", stdin: "null" })
    .output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

const qemu = (args: string[], cwd: string) => run("qemu-img", args, cwd);
/** The CLI to compare; tests on a machine without /dev/kvm point it at
 * tests/support/hosted_main.ts (INSTAR_DIFF_CLI), everything else runs main.ts. */
const CLI = Deno.env.get("INSTAR_DIFF_CLI") ?? `${REPO}/main.ts`;
const instar = (args: string[], cwd: string) => run(Deno.execPath(), ["run", "-A", CLI, ...args], cwd);

async function must(cmd: string, args: string[], cwd: string): Promise<Outcome> {
  const o = await run(cmd, args, cwd);
  if (o.code !== 0) throw new Error(`Setup failed: ${cmd} ${args.join(" ")}: ${o.stderr}`);
  return o;
}

/** qemu-img's outcome with its name where instar prints its own. */
function asInstar(o: Outcome): Outcome {
  return { ...o, stderr: o.stderr.replaceAll("qemu-img", "instar") };
}

function same(a: Outcome, b: Outcome): boolean {
  return a.code === b.code && a.stdout === b.stdout && a.stderr === b.stderr;
}

interface Divergence {
  kind: string;
  commands: string[];
  qemu: unknown;
  instar: unknown;
}

interface Ctx {
  rng: Rng;
  dir: string;
  picks: Record<string, unknown>;
  divergences: Divergence[];
  /** --formats: the input formats makeImage may pick (all when unset). */
  formats?: string[];
}

function pick<T>(c: Ctx, name: string, items: readonly T[]): T {
  const v = c.rng.pick(items);
  c.picks[name] = v;
  return v;
}

/** Compares one command line run by both tools in the same directory. */
async function compareCmd(c: Ctx, kind: string, args: string[]): Promise<{ q: Outcome; i: Outcome }> {
  const [q, i] = [await qemu(args, c.dir), await instar(args, c.dir)];
  if (!same(asInstar(q), i)) {
    c.divergences.push({
      kind,
      commands: [`qemu-img ${args.join(" ")}`, `instar ${args.join(" ")}`],
      qemu: q,
      instar: i,
    });
  }
  return { q, i };
}

const SIZES = ["64K", "1M", "1536K", "3M", "16M"];
const CLUSTERS = [512, 1024, 4096, 16384, 65536, 2097152];
const RC_BITS = [1, 2, 4, 8, 16, 32, 64];

/** qcow2 create options (-o) from the pickers; compat 0.10 only with 16-bit refcounts. */
function qcow2Opts(c: Ctx, prefix: string): string {
  const cs = pick(c, `${prefix}cluster_size`, CLUSTERS);
  const v2 = pick(c, `${prefix}compat`, ["1.1", "1.1", "1.1", "0.10"]) === "0.10";
  const opts = [`cluster_size=${cs}`];
  if (v2) {
    opts.push("compat=0.10");
  } else {
    opts.push(`refcount_bits=${pick(c, `${prefix}refcount_bits`, RC_BITS)}`);
    if (cs >= 16384 && pick(c, `${prefix}extended_l2`, [false, false, true])) opts.push("extended_l2=on");
    if (pick(c, `${prefix}lazy_refcounts`, [false, true])) opts.push("lazy_refcounts=on");
    if (pick(c, `${prefix}compression_type`, ["zlib", "zlib", "zstd"]) === "zstd") {
      opts.push("compression_type=zstd");
    }
  }
  return opts.join(",");
}

const ALL_FMTS = ["qcow2", "raw", "vpc", "vhdx", "vmdk"] as const;

/** Create options (-o) for a vpc or vhdx image. */
function vhdOpts(c: Ctx, fmt: string, prefix: string): string {
  const opts = [`subformat=${pick(c, `${prefix}subformat`, ["dynamic", "dynamic", "fixed"])}`];
  if (fmt === "vpc") {
    if (pick(c, `${prefix}force_size`, [false, false, true])) opts.push("force_size=on");
  } else {
    opts.push(`block_size=${pick(c, `${prefix}block_size`, ["1M", "8M", "32M"])}`);
    if (pick(c, `${prefix}log_size`, ["", "", "2M"])) opts.push("log_size=2M");
  }
  return opts.join(",");
}

/** qemu-io writes over a `bytes`-byte image of format fmt (compressed only for qcow2). */
function ioWrites(c: Ctx, fmt: string, bytes: number, clusterPick: string): string[] {
  const cmds: string[] = [];
  const writes = c.rng.below(5);
  // qcow2 clusters written so far: qemu refuses a compressed write into an
  // allocated cluster, so those are left out (the draws stay the same).
  const cs = Number(c.picks[clusterPick] ?? 65536);
  const touched = new Set<number>();
  const touch = (off: number, len: number) => {
    for (let k = Math.floor(off / cs); k <= Math.floor((off + len - 1) / cs); k++) touched.add(k);
  };
  for (let k = 0; k < writes; k++) {
    const kind = c.rng.below(fmt === "qcow2" ? 4 : 2);
    const len = 512 * (1 + c.rng.below(256));
    const off = 512 * c.rng.below(Math.max(1, (bytes - len) / 512));
    if (off + len > bytes) continue;
    if (kind === 0 || kind === 3) {
      cmds.push(`write -P ${c.rng.below(256)} ${off} ${len}`);
      touch(off, len);
    } else if (kind === 1) {
      cmds.push(`write -z ${off} ${len}`);
      touch(off, len);
    } else {
      // Compressed writes must be exactly one whole cluster.
      const at = Math.floor(off / cs) * cs;
      if (at + cs <= bytes) {
        const pattern = c.rng.below(256);
        if (!touched.has(at / cs)) cmds.push(`write -c -P ${pattern} ${at} ${cs}`);
        touch(at, cs);
      }
    }
  }
  return cmds;
}

async function virtualSize(c: Ctx, fmt: string, file: string): Promise<number> {
  return Number(
    (await must("qemu-img", ["info", "--output=json", "-f", fmt, file], c.dir)).stdout.match(
      /"virtual-size": (\d+)/,
    )![1],
  );
}

/**
 * An input image made by qemu-img + qemu-io: { name, fmt, size in bytes }.
 * vpc and vhdx images are made by `create` or by `convert` from a raw file
 * qemu-io wrote (pick `${prefix}via`), then written by qemu-io.
 */
async function makeImage(
  c: Ctx,
  name: string,
  fmts: readonly string[] = ["qcow2", "raw"],
  prefix = "image_",
) {
  const allowed = fmts.filter((f) => !c.formats || c.formats.includes(f));
  const fmt = pick(c, `${prefix}format`, allowed.length ? allowed : fmts);
  const size = pick(c, `${prefix}size`, SIZES);
  const file = `${name}.${fmt}`;
  const args = ["create", "-q", "-f", fmt];
  if (fmt === "qcow2") args.push("-o", qcow2Opts(c, prefix));
  if (fmt === "vmdk") {
    // Every subformat qemu-img writes; streamOptimized only through convert
    // (qemu-io cannot rewrite its grains), the others written by qemu-io.
    const sub = pick(c, `${prefix}subformat`, [
      "monolithicSparse",
      "monolithicSparse",
      "monolithicFlat",
      "twoGbMaxExtentSparse",
      "twoGbMaxExtentFlat",
      "streamOptimized",
    ]);
    if (sub === "streamOptimized") {
      await must("qemu-img", ["create", "-q", "-f", "raw", `${name}.src`, size], c.dir);
      const pre = ioWrites(c, "raw", await virtualSize(c, "raw", `${name}.src`), `${prefix}cluster_size`);
      c.picks[`${prefix}qemu_io_src`] = pre;
      if (pre.length) {
        await must("qemu-io", ["-f", "raw", ...pre.flatMap((x) => ["-c", x]), `${name}.src`], c.dir);
      }
      await must("qemu-img", [
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        `subformat=${sub}`,
        `${name}.src`,
        file,
      ], c.dir);
      await Deno.remove(`${c.dir}/${name}.src`);
      return { file, fmt, bytes: await virtualSize(c, fmt, file) };
    }
    const zg = sub.endsWith("Sparse") && pick(c, `${prefix}zeroed_grain`, [false, true]);
    await must(
      "qemu-img",
      [...args, "-o", `subformat=${sub}${zg ? ",zeroed_grain=on" : ""}`, file, size],
      c.dir,
    );
  } else if (fmt === "vpc" || fmt === "vhdx") {
    const opts = vhdOpts(c, fmt, prefix);
    if (pick(c, `${prefix}via`, ["create", "create", "convert"]) === "convert") {
      await must("qemu-img", ["create", "-q", "-f", "raw", `${name}.src`, size], c.dir);
      const pre = ioWrites(c, "raw", await virtualSize(c, "raw", `${name}.src`), `${prefix}cluster_size`);
      c.picks[`${prefix}qemu_io_src`] = pre;
      if (pre.length) {
        await must("qemu-io", ["-f", "raw", ...pre.flatMap((x) => ["-c", x]), `${name}.src`], c.dir);
      }
      await must("qemu-img", ["convert", "-f", "raw", "-O", fmt, "-o", opts, `${name}.src`, file], c.dir);
      await Deno.remove(`${c.dir}/${name}.src`);
    } else {
      await must("qemu-img", [...args, "-o", opts, file, size], c.dir);
    }
  } else {
    await must("qemu-img", [...args, file, size], c.dir);
  }
  const bytes = await virtualSize(c, fmt, file);
  const cmds = ioWrites(c, fmt, bytes, `${prefix}cluster_size`);
  c.picks[prefix === "image_" ? "qemu_io" : `${prefix}qemu_io`] = cmds;
  if (cmds.length) await must("qemu-io", ["-f", fmt, ...cmds.flatMap((x) => ["-c", x]), file], c.dir);
  return { file, fmt, bytes };
}

/** SHA-256 of file flattened to raw by qemu-img (its first `limit` bytes when given). */
async function flatHash(c: Ctx, file: string, fmt: string, limit?: number): Promise<string> {
  await must("qemu-img", ["convert", "-f", fmt, "-O", "raw", file, `${file}.flat`], c.dir);
  let data = await Deno.readFile(`${c.dir}/${file}.flat`);
  await Deno.remove(`${c.dir}/${file}.flat`);
  if (limit !== undefined) data = data.subarray(0, limit);
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** VMDK subformats convert writes (the multi-file ones as NAME plus extents). */
const VMDK_SUBFORMATS = [
  "monolithicSparse",
  "streamOptimized",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
];

/** Bytes of an output and, for a multi-file VMDK, of its extents (NAME-flat.vmdk, NAME-s001.vmdk, ...). */
function outputSize(c: Ctx, file: string): bigint {
  const dot = file.lastIndexOf(".");
  const prefix = `${file.slice(0, dot)}-`, postfix = file.slice(dot);
  let n = 0n;
  for (const e of Deno.readDirSync(c.dir)) {
    const extent = e.name.startsWith(prefix) && e.name.endsWith(postfix) &&
      /^(flat|[sf]\d{3,})$/.test(e.name.slice(prefix.length, e.name.length - postfix.length));
    if (e.name === file || extent) n += BigInt(Deno.statSync(`${c.dir}/${e.name}`).size);
  }
  return n;
}

/** instar's refusal of an operation it does not implement yet (the test skips it). */
function notSupported(o: Outcome): boolean {
  return o.code !== 0 && /not supported|does not support/.test(o.stderr);
}

/** qemu-img info JSON without what legitimately differs between two files. */
async function infoOf(c: Ctx, file: string, fmt: string): Promise<unknown> {
  const o = await qemu(["info", "--output=json", "-f", fmt, file], c.dir);
  // Both tools' images get the same name in errors, so errors compare.
  if (o.code !== 0) return { error: o.stderr.replaceAll(file, "IMAGE") };
  const j = JSON.parse(o.stdout);
  delete j.filename;
  delete j["actual-size"];
  const data = j["format-specific"]?.data;
  if (data) {
    delete data["data-file"];
    // vmdk: the CID is random in both tools, the extent named after its file.
    delete data.cid;
    for (const e of data.extents ?? []) delete e.filename;
  }
  return j;
}

/**
 * Seed 004 for formats qemu-img cannot measure (vpc, vhdx, vmdk): when
 * instar's measure gives numbers, the image instar converts to that format
 * must take between "required" and "fully allocated" bytes, give or take
 * one 64 KiB cluster.
 */
async function measureBounds(c: Ctx, target: string) {
  const img = await makeImage(c, "in", ALL_FMTS);
  const sub = target === "vmdk"
    ? pick(c, "subformat", VMDK_SUBFORMATS)
    : pick(c, "subformat", ["dynamic", "fixed"]);
  const args = ["measure", "--output=json", "-O", target, "-o", `subformat=${sub}`, "-f", img.fmt, img.file];
  const i = await instar(args, c.dir);
  if (i.code !== 0) return; // not measurable by instar (yet): qemu-img cannot either
  const m = JSON.parse(i.stdout);
  // Seed 004's oracle is instar's own convert output: qemu-img convert
  // follows its own strategy (it writes zeroes first and then reallocates
  // vhdx blocks, skips all-zero data, compresses streamOptimized grains),
  // so its file size is no bound for instar's numbers. While instar
  // convert refuses a target as "not supported", the bound is skipped (the
  // calculators are unit-tested against the create planners); any other
  // failure of the convert whose size was measured is a report.
  const conv = ["convert", "-f", img.fmt, "-O", target, "-o", `subformat=${sub}`, img.file, `i.${target}`];
  const ic = await instar(conv, c.dir);
  if (notSupported(ic)) {
    c.picks.bound = "skipped: instar convert cannot write this target yet";
    return;
  }
  if (ic.code !== 0) {
    c.divergences.push({
      kind: "measure_convert_failed",
      commands: [`instar ${args.join(" ")}`, `instar ${conv.join(" ")}`],
      qemu: {},
      instar: { measure: m, convert: ic },
    });
    return;
  }
  const size = outputSize(c, `i.${target}`);
  const required = BigInt(m.required), full = BigInt(m["fully-allocated"]);
  // One output cluster of cushion, as seed 004 allows. Below `required` it
  // widens as seed 004 recommends for coarse sources: measure counts a
  // source block that holds data as wholly allocated, while convert writes
  // only the target blocks that are not all zero, so a large VHDX block with
  // a little data measures up to that block (plus one target block) more
  // than convert writes.
  const cushion = 65536n;
  const unit = (t: unknown) => {
    const m = /^(\d+)([KMG]?)$/.exec(String(t ?? ""));
    return m ? BigInt(m[1]) << BigInt({ "": 0, K: 10, M: 20, G: 30 }[m[2]]!) : 0n;
  };
  const sourceBlock = img.fmt === "vhdx"
    ? unit(c.picks.image_block_size) || 32n << 20n
    : img.fmt === "vpc"
    ? 2n << 20n
    : img.fmt === "qcow2" && BigInt(Number(c.picks.image_cluster_size ?? 0)) > 65536n
    // A qcow2 cluster above a 64 KiB grain: a little data allocates the whole cluster.
    ? BigInt(Number(c.picks.image_cluster_size))
    : 0n;
  const targetBlock = target === "vpc" ? (2n << 20n) + 512n : target === "vhdx" ? 32n << 20n : 1n << 20n;
  let low = sourceBlock > 0n ? sourceBlock + targetBlock : cushion;
  if (target === "vmdk" && sourceBlock > 65536n) {
    // Every partly written source block measures whole while convert writes
    // only its non-zero 64 KiB grains: no lower bound (docs/quirks.md).
    low = required;
    c.picks.bound = "upper only: source blocks coarser than a VMDK grain";
  }
  const ioCmds = (c.picks.qemu_io as string[] | undefined) ?? [];
  if (img.fmt === "vmdk" && !c.picks.image_zeroed_grain && ioCmds.some((x) => x.startsWith("write -z"))) {
    // qemu-io's write -z without zeroed grains stores grains of zeroes:
    // measure counts them as data, convert skips them (as for a vhdx source).
    low = required;
    c.picks.bound = "upper only: vmdk grains written with zeroes";
  }
  if (img.fmt === "vmdk" && String(c.picks.image_subformat ?? "").endsWith("Flat")) {
    // A flat extent is a raw file, and the same holds: qemu-img create leaves
    // its first 4 KiB block allocated with zeroes, which measure counts as
    // data (a whole 8 MiB VHDX block, seed 11 #210) and convert skips.
    low = required;
    c.picks.bound = "upper only: flat vmdk extents hold blocks of zeroes";
  }
  if (img.fmt === "raw") {
    // The same for a raw file: qemu-img create allocates its first 4 KiB
    // block with zeroes (seed 42 #317: an empty 1536 KiB raw file measured
    // one 64 KiB VMDK grain of data, converted to none), and an unaligned
    // write -z stores zeroes in the blocks at its ends, which the file
    // reports as data (seed 7 #76: one 4 KiB block measured as a whole 2 MiB
    // VHD block).
    low = required;
    c.picks.bound = "upper only: raw blocks written with zeroes";
  }
  c.picks.converted_size = Number(size);
  if (size + (low > cushion ? low : cushion) < required || size > full + cushion) {
    c.divergences.push({
      kind: "measure_bounds",
      commands: [`instar ${args.join(" ")}`, `instar ${conv.join(" ")}`],
      qemu: {},
      instar: { measure: m, convertedSize: Number(size) },
    });
  }
}

async function sha256File(path: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A qcow2 `top.qcow2` over a qcow2 or raw base (made by makeImage), written by qemu-io. */
async function makeChain(c: Ctx) {
  const base = await makeImage(c, "base", ["qcow2", "qcow2", "raw"], "base_");
  const size = pick(c, "top_size", ["same", "same", "smaller", "larger"]);
  const bytes = size === "same"
    ? base.bytes
    : size === "smaller"
    ? Math.max(512, base.bytes >> 1)
    : base.bytes * 2;
  await must("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    qcow2Opts(c, "top_"),
    "-b",
    base.file,
    "-F",
    base.fmt,
    "top.qcow2",
    String(Math.ceil(bytes / 512) * 512),
  ], c.dir);
  const tb = await virtualSize(c, "qcow2", "top.qcow2");
  const cmds = ioWrites(c, "qcow2", tb, "top_cluster_size");
  c.picks.top_qemu_io = cmds;
  if (cmds.length) {
    await must("qemu-io", ["-f", "qcow2", ...cmds.flatMap((x) => ["-c", x]), "top.qcow2"], c.dir);
  }
  return { base, top: { file: "top.qcow2", fmt: "qcow2", bytes: tb } };
}

/** Copies c.dir's files into c.dir/q and c.dir/i (sparse), for the commands that write in place. */
async function twoCopies(c: Ctx): Promise<void> {
  const files = [...Deno.readDirSync(c.dir)].filter((e) => e.isFile).map((e) => e.name);
  for (const d of ["q", "i"]) {
    await Deno.mkdir(`${c.dir}/${d}`);
    for (const f of files) await must("cp", ["--sparse=always", f, `${d}/${f}`], c.dir);
  }
}

/**
 * Runs args with qemu-img in c.dir/q and instar in c.dir/i: the outcome must
 * be the same; instar's "not supported" refusals of what qemu-img does are
 * skipped (logged). True when both succeeded.
 */
async function inPlace(c: Ctx, kind: string, args: string[]): Promise<boolean> {
  const q = await qemu(args, `${c.dir}/q`), i = await instar(args, `${c.dir}/i`);
  if (
    q.code === 0 && i.code === 1 && /not supported by instar|instar does not|instar cannot/.test(i.stderr)
  ) {
    c.picks.skipped = i.stderr.trim();
    return false;
  }
  // qemu names a node "#block" and a per-run counter, instar "#block000" (docs/quirks.md).
  const node = (o: Outcome) => ({ ...o, stderr: o.stderr.replace(/#block\d+/g, "#block") });
  if (!same(node(asInstar(q)), node(i))) {
    c.divergences.push({
      kind: `${kind}_outcome`,
      commands: [`qemu-img ${args.join(" ")}`],
      qemu: q,
      instar: i,
    });
    return false;
  }
  return q.code === 0;
}

/** info (JSON, without the file's name and allocation), check and flattened data of a file in q and i. */
async function sameFiles(
  c: Ctx,
  kind: string,
  file: string,
  fmt: string,
  withCheck = fmt === "qcow2",
  unordered = false,
) {
  const state = async (d: string) => {
    const cwd = `${c.dir}/${d}`;
    const info = await qemu(["info", "--output=json", "-f", fmt, file], cwd);
    const j = info.code === 0 ? JSON.parse(info.stdout) : info.stderr;
    if (typeof j === "object") {
      delete j["actual-size"];
      delete j.filename;
    }
    const chk = withCheck ? await qemu(["check", "--output=json", "-f", fmt, file], cwd) : undefined;
    let out = chk?.stdout.replace(/"filename": "[^"]*",?/, "");
    // qemu's own placement varies from run to run (see OPS.commit).
    if (out && unordered) out = out.replace(/\n\s*"fragmented-clusters": \d+,?/, "").replace(/,(\n\})/, "$1");
    const check = chk ? { code: chk.code, out } : undefined;
    const flat = info.code === 0 ? await flatHash({ ...c, dir: cwd }, file, fmt) : "";
    return JSON.stringify({ info: j, check, flat });
  };
  const [q, i] = [await state("q"), await state("i")];
  if (q !== i) {
    c.divergences.push({ kind: `${kind}_${file}`, commands: [], qemu: JSON.parse(q), instar: JSON.parse(i) });
  }
}

const OPS: Record<string, (c: Ctx) => Promise<void>> = {
  async commit(c) {
    const { base } = await makeChain(c);
    await twoCopies(c);
    const args = ["commit", "-f", "qcow2"];
    if (pick(c, "drop", [false, false, true])) args.push("-d");
    if (pick(c, "base_flag", [false, true])) args.push("-b", base.file);
    if (!(await inPlace(c, "commit", [...args, "top.qcow2"]))) return;
    // qemu's mirror job has up to 16 copies in flight and allocates base
    // clusters in the order their reads complete (thread-pool timing): the
    // same command on the same chain gives different placements from run to
    // run (docs/commit.md), so the base's fragmented-clusters is not compared.
    await sameFiles(c, "commit", base.file, base.fmt, base.fmt === "qcow2", true);
    await sameFiles(c, "commit", "top.qcow2", "qcow2");
  },
  async rebase(c) {
    await makeChain(c);
    const onto = pick(c, "onto", ["image", "image", "image", "none"]);
    const args = ["rebase", "-f", "qcow2"];
    if (onto === "none") {
      args.push("-b", "");
    } else {
      const nb = await makeImage(c, "nb", ["qcow2", "qcow2", "raw"], "nb_");
      args.push("-b", nb.file, "-F", nb.fmt);
    }
    if (pick(c, "unsafe", [false, false, true])) args.push("-u");
    await twoCopies(c);
    if (!(await inPlace(c, "rebase", [...args, "top.qcow2"]))) return;
    await sameFiles(c, "rebase", "top.qcow2", "qcow2");
  },
  async amend(c) {
    const img = await makeImage(c, "in", ["qcow2"]);
    const opts: string[] = [];
    for (let n = 1 + c.rng.below(2); n > 0; n--) {
      opts.push(c.rng.pick([
        "compat=0.10",
        "compat=1.1",
        "lazy_refcounts=on",
        "lazy_refcounts=off",
        `refcount_bits=${c.rng.pick(RC_BITS)}`,
        `size=${c.rng.pick(["1M", "3M", "16M", "32M"])}`,
      ]));
    }
    c.picks.amend = opts;
    await twoCopies(c);
    if (!(await inPlace(c, "amend", ["amend", "-f", "qcow2", "-o", opts.join(","), img.file]))) return;
    await sameFiles(c, "amend", img.file, "qcow2");
  },
  async bitmap(c) {
    const img = await makeImage(c, "in", ["qcow2"]);
    await twoCopies(c);
    const steps: string[][] = [];
    for (let n = 1 + c.rng.below(3); n > 0; n--) {
      const name = c.rng.pick(["a", "b"]);
      const action = c.rng.pick(["--add", "--add", "--remove", "--clear", "--enable", "--disable"]);
      const extra = action !== "--add" ? [] : [
        ...(c.rng.below(2) ? ["-g", c.rng.pick(["512", "64k", "1M", "3000"])] : []),
        ...(c.rng.below(3) === 0 ? ["--disable"] : []),
      ];
      steps.push([action, ...extra, img.file, name]);
    }
    c.picks.bitmap_commands = steps;
    for (const s of steps) {
      if (!(await inPlace(c, "bitmap", ["bitmap", "-f", "qcow2", ...s]))) return;
    }
    await sameFiles(c, "bitmap", img.file, "qcow2");
  },
  async dd(c) {
    const img = await makeImage(c, "in", ALL_FMTS);
    const fmt = pick(c, "target", ["raw", "raw", "qcow2"]);
    const ops = [`bs=${pick(c, "bs", ["512", "4k", "64k", "1M", "1000"])}`];
    if (pick(c, "count", [false, true])) ops.push(`count=${c.rng.pick(["0", "1", "7", "100"])}`);
    if (pick(c, "skip", [false, true])) ops.push(`skip=${c.rng.pick(["1", "3", "1000"])}`);
    const args = ["dd", "-f", img.fmt, "-O", fmt, ...ops, `if=${img.file}`];
    const qa = [...args, `of=q.${fmt}`], ia = [...args, `of=i.${fmt}`];
    const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
    const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
    const norm = (o: Outcome, f: string) => ({ ...o, stderr: o.stderr.replaceAll(f, "OUT") });
    if (!same(norm(asInstar(q), `q.${fmt}`), norm(i, `i.${fmt}`))) {
      c.divergences.push({ kind: "dd_outcome", commands, qemu: q, instar: i });
      return;
    }
    if (q.code !== 0) return;
    const hashes = [await flatHash(c, `q.${fmt}`, fmt), await flatHash(c, `i.${fmt}`, fmt)];
    if (hashes[0] !== hashes[1]) {
      c.divergences.push({ kind: "dd_data", commands, qemu: hashes[0], instar: hashes[1] });
    }
  },
  // convert -n into an existing qcow2 holding data with freed gaps: instar
  // replays qemu-img's write requests for raw, qcow2, vpc, vhdx and vmdk
  // sources (docs/convert.md), so the target must come out the same bytes.
  async convert_n(c) {
    const src = await makeImage(c, "in", ["raw", "qcow2", "vpc", "vhdx", "vmdk"]);
    const cs = pick(c, "target_cluster_size", [4096, 65536]);
    const size = src.bytes + pick(c, "target_extra", [0, 0, 65536, 1 << 20]);
    await must("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `cluster_size=${cs}`,
      "dst.qcow2",
      `${size}`,
    ], c.dir);
    const data = pick(c, "target_data", [true, true, false]);
    const fill = data ? Math.min(size, 1 << 20) - (Math.min(size, 1 << 20) % cs) : 0;
    const io = fill > 0 ? [`write -P 9 0 ${fill}`] : [];
    for (let k = c.rng.below(4); k > 0 && fill > 0; k--) {
      const at = cs * c.rng.below(fill / cs);
      io.push(`discard ${at} ${Math.min(cs * (1 + c.rng.below(3)), fill - at)}`);
    }
    c.picks.target_io = io;
    if (io.length) {
      await must("qemu-io", ["-f", "qcow2", ...io.flatMap((x) => ["-c", x]), "dst.qcow2"], c.dir);
    }
    await twoCopies(c);
    const args = ["convert", "-n"];
    const sparse = pick(c, "sparse", ["", "", "0", "64k"]);
    if (sparse) args.push("-S", sparse);
    // --target-is-zero only where it is true: over data it is a false
    // declaration, where instar's whole-cluster writes keep less of the old
    // data than qemu's requests (docs/quirks.md).
    if (io.length === 0 && pick(c, "target_is_zero", [false, true])) args.push("--target-is-zero");
    args.push("-f", src.fmt, "-O", "qcow2", src.file, "dst.qcow2");
    if (!(await inPlace(c, "convert_n", args))) return;
    if ((await run("cmp", ["-s", "q/dst.qcow2", "i/dst.qcow2"], c.dir)).code !== 0) {
      c.divergences.push({
        kind: "convert_n_bytes",
        commands: [`qemu-img ${args.join(" ")}`],
        qemu: "q/dst.qcow2",
        instar: "i/dst.qcow2 differs (cmp)",
      });
    }
    await sameFiles(c, "convert_n", "dst.qcow2", "qcow2");
  },
  async convert_backing(c) {
    const { base, top } = await makeChain(c);
    const src = pick(c, "source", ["top", "top", "base"]) === "top" ? top : base;
    const args = ["convert", "-f", src.fmt, "-O", "qcow2", "-o", qcow2Opts(c, "target_")];
    if (pick(c, "sparse", ["", "", "0", "64k"])) args.push("-S", String(c.picks.sparse));
    // Drawn last, so the draws before it are those of the earlier runs.
    const compress = pick(c, "compress", [false, false, false, true]);
    if (compress) args.push("-c");
    args.push("-B", base.file, "-F", base.fmt, src.file);
    const qa = [...args, "q.qcow2"], ia = [...args, "i.qcow2"];
    const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
    const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
    if (q.code === 0 && i.code === 1 && /not supported by instar/.test(i.stderr)) {
      c.picks.skipped = i.stderr.trim();
      return;
    }
    const norm = (o: Outcome, f: string) => ({ ...o, stderr: o.stderr.replaceAll(f, "OUT") });
    if (!same(norm(asInstar(q), "q.qcow2"), norm(i, "i.qcow2"))) {
      c.divergences.push({ kind: "convert_backing_outcome", commands, qemu: q, instar: i });
      return;
    }
    if (q.code !== 0) return;
    const view = async (f: string) => {
      const m = await qemu(["map", "--output=json", "-f", "qcow2", f], c.dir);
      // Without the target's own offsets, entries qemu split only where they are not contiguous merge.
      const map: Record<string, unknown>[] = [];
      for (const e of JSON.parse(m.stdout) as Record<string, unknown>[]) {
        if (e.depth === 0) delete e.offset;
        const last = map[map.length - 1];
        const key = (x: Record<string, unknown>) => JSON.stringify({ ...x, start: 0, length: 0 });
        if (last && e.depth === 0 && key(last) === key(e)) {
          last.length = (last.length as number) + (e.length as number);
        } else {
          map.push(e);
        }
      }
      // map hides compression: with -c the clusters check counts must agree too.
      let counts: unknown;
      if (compress) {
        const chk = JSON.parse((await qemu(["check", "--output=json", "-f", "qcow2", f], c.dir)).stdout);
        counts = [chk["allocated-clusters"], chk["compressed-clusters"]];
      }
      return JSON.stringify({
        map,
        flat: await flatHash(c, f, "qcow2"),
        info: await infoOf(c, f, "qcow2"),
        counts,
      });
    };
    const [qv, iv] = [await view("q.qcow2"), await view("i.qcow2")];
    if (qv !== iv) {
      c.divergences.push({
        kind: "convert_backing_data",
        commands,
        qemu: JSON.parse(qv),
        instar: JSON.parse(iv),
      });
    }
  },
  async repair(c) {
    const img = await makeImage(c, "in", ["qcow2"]);
    const path = `${c.dir}/${img.file}`;
    const cs = Number(c.picks.image_cluster_size);
    const v2 = c.picks.image_compat === "0.10";
    const bits = v2 ? 16 : Number(c.picks.image_refcount_bits);
    const clusters = Math.ceil(Deno.statSync(path).size / cs);
    const edits: [number, number][] = [];
    for (let n = 1 + c.rng.below(4); n > 0; n--) {
      const cluster = c.rng.below(clusters + 4);
      const value = Math.min(c.rng.below(4), 2 ** Math.min(bits, 8) - 1);
      try {
        setRefcount(path, cluster, BigInt(value));
        edits.push([cluster, value]);
      } catch { /* no refcount block covers that cluster */ }
    }
    c.picks.refcount_edits = edits;
    if (!v2 && pick(c, "dirty", [false, false, true])) setIncompat(path, 1n);
    const mode = pick(c, "repair", ["leaks", "all"]);
    const out = pick(c, "output", ["human", "json"]);
    const args = ["check", "-r", mode, `--output=${out}`, "-f", "qcow2", img.file];
    for (const d of ["q", "i"]) {
      await Deno.mkdir(`${c.dir}/${d}`);
      await Deno.copyFile(path, `${c.dir}/${d}/${img.file}`);
    }
    const q = await qemu(args, `${c.dir}/q`), i = await instar(args, `${c.dir}/i`);
    if (i.code === 1 && /^instar: Could not repair '.*': .*; nothing was written\n$/.test(i.stderr)) {
      c.picks.instar_refused = true;
      return;
    }
    const [qh, ih] = [await sha256File(`${c.dir}/q/${img.file}`), await sha256File(`${c.dir}/i/${img.file}`)];
    if (!same(asInstar(q), i) || qh !== ih) {
      c.divergences.push({
        kind: "repair",
        commands: [`qemu-img ${args.join(" ")}`, `instar ${args.join(" ")}`],
        qemu: { ...q, sha256: qh },
        instar: { ...i, sha256: ih },
      });
    }
  },
  async info(c) {
    const img = await makeImage(c, "in", ALL_FMTS);
    const out = pick(c, "output", ["human", "json"]);
    await compareCmd(c, "info", ["info", `--output=${out}`, "-f", img.fmt, img.file]);
  },
  async check(c) {
    const img = await makeImage(c, "in", ["qcow2", "qcow2", "vpc", "vhdx", "vmdk"]);
    const out = pick(c, "output", ["human", "json"]);
    await compareCmd(c, "check", ["check", `--output=${out}`, "-f", img.fmt, img.file]);
  },
  async map(c) {
    const img = await makeImage(c, "in", ALL_FMTS);
    const out = pick(c, "output", ["human", "json"]);
    await compareCmd(c, "map", ["map", `--output=${out}`, "-f", img.fmt, img.file]);
  },
  async compare(c) {
    const a = await makeImage(c, "a", ALL_FMTS);
    let b;
    if (pick(c, "second", ["convert", "convert", "separate"]) === "convert") {
      // The same content in another format, maybe written afterwards.
      const fmt = pick(c, "b_format", ALL_FMTS);
      const file = `b.${fmt}`;
      const opts = fmt === "vpc" || fmt === "vhdx" ? ["-o", vhdOpts(c, fmt, "b_")] : [];
      await must("qemu-img", ["convert", "-f", a.fmt, "-O", fmt, ...opts, a.file, file], c.dir);
      const bytes = await virtualSize(c, fmt, file);
      const cmds = ioWrites(c, fmt, bytes, "b_cluster_size").slice(0, c.rng.below(2));
      c.picks.b_qemu_io = cmds;
      if (cmds.length) await must("qemu-io", ["-f", fmt, ...cmds.flatMap((x) => ["-c", x]), file], c.dir);
      b = { file, fmt, bytes };
    } else {
      b = await makeImage(c, "b", ALL_FMTS, "b_");
    }
    const args = ["compare", "-f", a.fmt, "-F", b.fmt];
    if (pick(c, "strict", [false, false, true])) args.push("-s");
    await compareCmd(c, "compare", [...args, a.file, b.file]);
  },
  async measure(c) {
    const target = pick(c, "target", ["raw", "qcow2", "qcow2", "vpc", "vhdx", "vmdk"]);
    if (target !== "raw" && target !== "qcow2") return await measureBounds(c, target);
    const args = ["measure", "-O", target];
    if (target === "qcow2") {
      args.push("-o", qcow2Opts(c, "target_"));
      const pre = pick(c, "preallocation", ["off", "off", "metadata", "falloc", "full"]);
      if (pre !== "off") args.push("-o", `preallocation=${pre}`);
    }
    if (pick(c, "from", ["image", "size"]) === "size") {
      args.push("--size", pick(c, "size", ["0", "1M", "1G", "1T", "100T"]));
    } else {
      const img = await makeImage(c, "in", ALL_FMTS);
      args.push("-f", img.fmt, img.file);
    }
    if (pick(c, "output", ["human", "json"]) === "json") args.splice(1, 0, "--output=json");
    await compareCmd(c, "measure", args);
  },
  async convert(c) {
    const img = await makeImage(c, "in", ALL_FMTS);
    const target = pick(c, "target", ["raw", "qcow2", "qcow2", "vpc", "vhdx", "vmdk"]);
    const base = ["convert", "-f", img.fmt, "-O", target];
    if (target === "qcow2") {
      base.push("-o", qcow2Opts(c, "target_"));
      if (pick(c, "compress", [false, true])) base.push("-c");
      const pre = pick(c, "preallocation", ["off", "off", "off", "metadata", "falloc", "full"]);
      if (pre !== "off") base.push("-o", `preallocation=${pre}`);
    }
    if (target === "vpc" || target === "vhdx") base.push("-o", vhdOpts(c, target, "target_"));
    if (target === "vmdk") {
      const sub = pick(c, "subformat", VMDK_SUBFORMATS);
      base.push("-o", `subformat=${sub}`);
      if (!sub.endsWith("Flat") && pick(c, "compress", [false, true])) base.push("-c");
      const extra = pick(c, "vmdk_opts", ["", "", "adapter_type=lsilogic", "compat6", "hwversion=7"]);
      if (extra) base.push("-o", extra);
      if (!sub.endsWith("Flat") && pick(c, "zeroed_grain", [false, false, true])) {
        base.push("-o", "zeroed_grain=on");
      }
    }
    const qa = [...base, img.file, `q.${target}`], ia = [...base, img.file, `i.${target}`];
    const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
    const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
    // docs/quirks.md: a vmdk source is not read by the zstd guest (384 KiB)
    if (
      (target === "vpc" || target === "vhdx" || target === "vmdk" || img.fmt === "vmdk" ||
        (c.picks.preallocation ?? "off") !== "off") &&
      q.code === 0 &&
      notSupported(i)
    ) {
      c.picks.skipped = "instar convert cannot write this target (or read this source for it) yet";
      return;
    }
    if (!same(asInstar(q), { ...i })) {
      c.divergences.push({ kind: "convert_outcome", commands, qemu: q, instar: i });
      return;
    }
    if (q.code !== 0) return;
    const hashes = [await flatHash(c, `q.${target}`, target), await flatHash(c, `i.${target}`, target)];
    if (hashes[0] !== hashes[1]) {
      c.divergences.push({ kind: "convert_data", commands, qemu: hashes[0], instar: hashes[1] });
    }
  },
  async create(c) {
    const fmt = pick(c, "format", ["raw", "qcow2", "qcow2", "vpc", "vhdx", "vmdk"]);
    const size = pick(c, "size", ["0", "512", "1M", "1536K", "64M", "1G", "2040G", "3T"]);
    const args = ["create", "-f", fmt];
    if (fmt === "qcow2") args.push("-o", qcow2Opts(c, ""));
    if (fmt === "vpc") args.push("-o", `subformat=${pick(c, "subformat", ["dynamic", "fixed"])}`);
    if (fmt === "vhdx") args.push("-o", `subformat=${pick(c, "subformat", ["dynamic", "fixed"])}`);
    if (fmt === "vmdk") {
      args.push("-o", `subformat=${pick(c, "subformat", ["monolithicSparse", "streamOptimized"])}`);
    }
    // Fixed images of terabytes would fill the disk.
    if (/subformat=fixed/.test(args.join(" ")) && /G|T/.test(size)) return;
    const qa = [...args, `q.${fmt}`, size], ia = [...args, `i.${fmt}`, size];
    const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
    const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
    const norm = (o: Outcome, f: string) => ({
      ...o,
      stdout: o.stdout.replaceAll(f, "OUT"),
      stderr: o.stderr.replaceAll(f, "OUT"),
    });
    if (!same(norm(asInstar(q), `q.${fmt}`), norm(i, `i.${fmt}`))) {
      c.divergences.push({ kind: "create_outcome", commands, qemu: q, instar: i });
      return;
    }
    if (q.code !== 0) return;
    const [qi, ii] = [await infoOf(c, `q.${fmt}`, fmt), await infoOf(c, `i.${fmt}`, fmt)];
    if (JSON.stringify(qi) !== JSON.stringify(ii)) {
      c.divergences.push({ kind: "create_info", commands, qemu: qi, instar: ii });
    }
  },
  async resize(c) {
    const img = await makeImage(c, "in", ["qcow2", "qcow2", "raw", "raw", "vpc", "vhdx"]);
    if (img.fmt === "vpc" || img.fmt === "vhdx") return await resizeVhd(c, img);
    await must("cp", ["--sparse=always", img.file, `q.${img.fmt}`], c.dir);
    await must("cp", ["--sparse=always", img.file, `i.${img.fmt}`], c.dir);
    const delta = pick(c, "delta", RESIZE_DELTAS);
    const args = ["resize", "-f", img.fmt];
    let shrink = delta.startsWith("-");
    if (!delta.startsWith("+") && !delta.startsWith("-")) {
      const abs = Number(delta.slice(0, -1)) * (1 << 20);
      shrink = abs < img.bytes;
    }
    if (shrink && pick(c, "shrink_flag", [true, true, false])) args.push("--shrink");
    if (img.fmt === "raw") {
      const pre = pick(c, "preallocation", ["", "", "off", "falloc", "full"]);
      if (pre) args.push(`--preallocation=${pre}`);
    }
    const qa = [...args, `q.${img.fmt}`, delta], ia = [...args, `i.${img.fmt}`, delta];
    const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
    const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
    if (!same(asInstar(q), i)) {
      c.divergences.push({ kind: "resize_outcome", commands, qemu: q, instar: i });
      return;
    }
    const [qi, ii] = [await infoOf(c, `q.${img.fmt}`, img.fmt), await infoOf(c, `i.${img.fmt}`, img.fmt)];
    if (JSON.stringify(qi) !== JSON.stringify(ii)) {
      c.divergences.push({ kind: "resize_info", commands, qemu: qi, instar: ii });
    }
    if (img.fmt === "qcow2") {
      const qc = await qemu(["check", "--output=json", "-f", "qcow2", `q.qcow2`], c.dir);
      const ic = await qemu(["check", "--output=json", "-f", "qcow2", `i.qcow2`], c.dir);
      const strip = (o: Outcome) => ({ ...o, stdout: o.stdout.replace(/"filename": "[^"]*",?/, "") });
      if (!same(strip(qc), strip(ic))) {
        c.divergences.push({ kind: "resize_check", commands, qemu: qc, instar: ic });
      }
    }
  },
  async snapshot(c) {
    const img = await makeImage(c, "in", ["qcow2"]);
    await must("cp", ["--sparse=always", img.file, "q.qcow2"], c.dir);
    await must("cp", ["--sparse=always", img.file, "i.qcow2"], c.dir);
    const steps: string[][] = [];
    for (let k = pick(c, "snapshot_steps", [1, 2, 3, 4]); k > 0; k--) {
      steps.push([c.rng.pick(["-c", "-c", "-a", "-d"]), c.rng.pick(["a", "b", "1", "2"])]);
    }
    c.picks.snapshot_commands = steps;
    for (const a of steps) {
      const qa = ["snapshot", ...a, "q.qcow2"], ia = ["snapshot", ...a, "i.qcow2"];
      const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
      const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
      if (i.code !== 0 && /instar does not/.test(i.stderr)) {
        c.picks.skipped = i.stderr.trim();
        return;
      }
      if (!same(asInstar({ ...q, stderr: q.stderr.replaceAll("q.qcow2", "i.qcow2") }), i)) {
        c.divergences.push({ kind: "snapshot_outcome", commands, qemu: q, instar: i });
        return;
      }
      if (q.code !== 0) return;
      const [qb, ib] = await Promise.all(["q", "i"].map((f) => snapshotsMasked(`${c.dir}/${f}.qcow2`)));
      const at = qb.length !== ib.length
        ? Math.min(qb.length, ib.length)
        : qb.findIndex((v, k) => v !== ib[k]);
      if (at >= 0) {
        c.divergences.push({
          kind: "snapshot_bytes",
          commands,
          qemu: qb.length,
          instar: { length: ib.length, at },
        });
        return;
      }
      const ic = await qemu(["check", "-f", "qcow2", "i.qcow2"], c.dir);
      if (ic.code !== 0) {
        c.divergences.push({ kind: "snapshot_check", commands, qemu: {}, instar: ic });
        return;
      }
    }
  },
  /**
   * The refcount-growth paths: a qcow2 with small clusters filled up to
   * near what its refcount table covers (cluster_size^3 / refcount_bits
   * bytes), then 1-4 of snapshot -c/-d, amend refcount_bits, bitmap --add
   * and resize (grow, or shrink with bitmaps) on two copies: outcome after
   * each, then the files byte for byte (snapshot dates masked) and a clean
   * `qemu-img check` of instar's.
   */
  async refgrow(c) {
    const cs = pick(c, "cluster_size", [512, 512, 1024, 4096]);
    const bits = pick(c, "refcount_bits", RC_BITS);
    const cover = (cs * cs * cs) / bits;
    // Data up to a fraction of the coverage (what L2 tables and refcount
    // blocks add is left for the fraction to straddle), at most 16 MiB.
    const frac = pick(c, "fill", [0.5, 0.9, 0.94, 0.96, 0.97, 0.98, 0.99, 1.0]);
    const fill = Math.floor(Math.min(cover * frac * (cs / (cs + 16)), 16 << 20) / 512) * 512;
    const size = Math.ceil((fill + (4 << 20)) / (1 << 20)) << 20;
    await must("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `cluster_size=${cs},refcount_bits=${bits}`,
      "in.qcow2",
      String(size),
    ], c.dir);
    const io = [`write -P 7 0 ${fill}`];
    if (pick(c, "bitmap_first", [false, true])) {
      await must("qemu-img", ["bitmap", "--add", "-g", "4k", "in.qcow2", "pre"], c.dir);
      io.push(`write -P 8 ${Math.floor(fill / 1024) * 512} 64k`);
    }
    await must("qemu-io", ["-f", "qcow2", ...io.flatMap((x) => ["-c", x]), "in.qcow2"], c.dir);
    // Then data up to `slack` bytes short of the coverage (when it is at
    // most 16 MiB), so that the few clusters the steps allocate cross it.
    const slack = pick(c, "slack", [0, 512, 2048, 4096, 8192, 16384, 65536]);
    const end = (await Deno.stat(`${c.dir}/in.qcow2`)).size;
    if (slack > 0 && cover <= 16 << 20 && end < cover - slack) {
      // Each data cluster brings an L2 entry and a refcount entry.
      let more = Math.floor((cover - slack - end) / (1 + (8 + bits / 8) / cs) / cs) * cs;
      if (fill + more > size) more = Math.floor((size - fill) / cs) * cs;
      if (more > 0) {
        await must("qemu-io", ["-f", "qcow2", "-c", `write -P 9 ${fill} ${more}`, "in.qcow2"], c.dir);
      }
      c.picks.topped_up = more;
    }
    await must("cp", ["--sparse=always", "in.qcow2", "q.qcow2"], c.dir);
    await must("cp", ["--sparse=always", "in.qcow2", "i.qcow2"], c.dir);
    const steps: string[][] = [];
    for (let k = pick(c, "steps", [1, 2, 3, 4]); k > 0; k--) {
      const name = c.rng.pick(["a", "b"]);
      const what = c.rng.pick(["snap-c", "snap-c", "snap-d", "amend", "bitmap", "bitmap", "resize"]);
      if (what === "snap-c") steps.push(["snapshot", "-c", name]);
      else if (what === "snap-d") steps.push(["snapshot", "-d", name]);
      else if (what === "amend") steps.push(["amend", "-o", `refcount_bits=${c.rng.pick(RC_BITS)}`]);
      else if (what === "bitmap") {
        steps.push(["bitmap", "--add", "-g", c.rng.pick(["512", "4k", "64k"]), name]);
      } else {
        steps.push(["resize", ...c.rng.pick([["+1M"], ["+64M"], ["--shrink", "-512"], ["--shrink", "-1M"]])]);
      }
    }
    c.picks.refgrow_commands = steps;
    /** The refcount table's offset and clusters in qemu's copy (logged when a step moved it). */
    const reftable = async () => {
      using f = await Deno.open(`${c.dir}/q.qcow2`);
      const h = new Uint8Array(60);
      for (let n = 0; n < 60;) n += (await f.read(h.subarray(n))) ?? 60;
      return Array.from(h.subarray(48), (x) => x.toString(16).padStart(2, "0")).join("");
    };
    const table0 = await reftable();
    for (const a of steps) {
      // The file goes last (snapshot, amend) or before the size (resize) or the bitmap's name.
      const at = a[0] === "snapshot" || a[0] === "amend" ? a.length : a.length - 1;
      const args = (f: string) => ["-f", "qcow2", ...a.slice(1, at), f, ...a.slice(at)];
      const qa = [a[0], ...args("q.qcow2")], ia = [a[0], ...args("i.qcow2")];
      const q = await qemu(qa, c.dir), i = await instar(ia, c.dir);
      const commands = [`qemu-img ${qa.join(" ")}`, `instar ${ia.join(" ")}`];
      if (
        q.code === 0 && i.code === 1 && /not supported by instar|instar does not|instar cannot/.test(i.stderr)
      ) {
        c.picks.skipped = i.stderr.trim();
        return;
      }
      const named = (o: Outcome) => ({
        ...o,
        stderr: o.stderr.replaceAll("q.qcow2", "i.qcow2").replace(/#block\d+/g, "#block"),
        stdout: o.stdout.replaceAll("q.qcow2", "i.qcow2"),
      });
      if (!same(named(asInstar(q)), named(i))) {
        c.divergences.push({ kind: `refgrow_${a[0]}_outcome`, commands, qemu: q, instar: i });
        return;
      }
      if (q.code !== 0) return;
      if ((await reftable()) !== table0) c.picks.reftable_moved = true;
      const [qb, ib] = await Promise.all(["q", "i"].map((f) => snapshotsMasked(`${c.dir}/${f}.qcow2`)));
      const diff = qb.length !== ib.length
        ? Math.min(qb.length, ib.length)
        : qb.findIndex((v, k) => v !== ib[k]);
      if (diff >= 0) {
        c.divergences.push({
          kind: `refgrow_${a[0]}_bytes`,
          commands,
          qemu: qb.length,
          instar: { length: ib.length, at: diff },
        });
        return;
      }
      const ic = await qemu(["check", "-f", "qcow2", "i.qcow2"], c.dir);
      if (ic.code !== 0) {
        c.divergences.push({ kind: `refgrow_${a[0]}_check`, commands, qemu: {}, instar: ic });
        return;
      }
    }
  },
};

/** A qcow2 file with each snapshot table entry's date_sec/date_nsec zeroed. */
async function snapshotsMasked(path: string): Promise<Uint8Array> {
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  let at = Number(dv.getBigUint64(64));
  for (let i = 0, nb = dv.getUint32(60); i < nb; i++) {
    at = (at + 7) & ~7;
    if (at + 40 > b.length) break;
    b.fill(0, at + 16, at + 24);
    at += 40 + dv.getUint32(at + 36) + dv.getUint16(at + 12) + dv.getUint16(at + 14);
  }
  return b;
}

const RESIZE_DELTAS = ["+512", "+64K", "+1M", "+15M", "+1G", "-512", "-64K", "-1M", "4M", "100M"];

/**
 * Resize of vpc/vhdx, which qemu-img cannot do: instar alone. When instar
 * resizes, qemu-img must read the result (info; check for vhdx) and the
 * data below the smaller of the two sizes must be what it was. instar's
 * "does not support resize" refusal (the format's resize not there yet) is
 * skipped; its other refusals (e.g. a shrink without --shrink) are logged,
 * and a failure that is not such a refusal (another exit code, a stack
 * trace) is a report.
 */
async function resizeVhd(c: Ctx, img: { file: string; fmt: string; bytes: number }) {
  const delta = pick(c, "delta", RESIZE_DELTAS);
  const args = ["resize", "-f", img.fmt];
  let target: number;
  if (delta.startsWith("+") || delta.startsWith("-")) {
    const unit = { K: 1024, M: 1 << 20, G: 1 << 30 }[delta.slice(-1)] ?? 1;
    const n = Number(/\d+/.exec(delta)![0]) * unit;
    target = delta.startsWith("+") ? img.bytes + n : img.bytes - n;
  } else {
    target = Number(delta.slice(0, -1)) * (1 << 20);
  }
  if (target < img.bytes && pick(c, "shrink_flag", [true, true, false])) args.push("--shrink");
  const ia = [...args, img.file, delta];
  const before = await flatHash(c, img.file, img.fmt, Math.min(img.bytes, Math.max(target, 0)));
  const i = await instar(ia, c.dir);
  const commands = [`instar ${ia.join(" ")}`];
  if (notSupported(i)) {
    c.picks.skipped = "instar cannot resize this format yet";
    return;
  }
  if (i.code !== 0) {
    c.picks.refused = i.stderr.trim();
    // A refusal is exit code 1 and instar's own messages (qemu's shrink
    // refusal is two lines), never a stack trace.
    if (i.code !== 1 || !/^instar: /.test(i.stderr) || /^\s+at /m.test(i.stderr)) {
      c.divergences.push({ kind: "resize_vhd_error", commands, qemu: {}, instar: i });
    }
    return;
  }
  const info = await qemu(["info", "--output=json", "-f", img.fmt, img.file], c.dir);
  const readable = info.code === 0 &&
    (img.fmt !== "vhdx" || (await qemu(["check", "-f", "vhdx", img.file], c.dir)).code === 0);
  if (!readable) {
    c.divergences.push({ kind: "resize_vhd_unreadable", commands, qemu: info, instar: i });
    return;
  }
  const size = Number(JSON.parse(info.stdout)["virtual-size"]);
  c.picks.new_size = size;
  const after = await flatHash(c, img.file, img.fmt, Math.min(img.bytes, Math.max(target, 0)));
  // A vpc size is rounded to its CHS geometry: never below the size asked for.
  if (before !== after || size < target) {
    c.divergences.push({
      kind: "resize_vhd_data",
      commands,
      qemu: { before, newSize: size, target },
      instar: { after, outcome: i },
    });
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      iterations: { type: "string", default: "100" },
      seed: { type: "string", default: "1" },
      only: { type: "string" },
      out: { type: "string" },
      ops: { type: "string" },
      formats: { type: "string" },
    },
  });
  const seed = Number(values.seed), n = Number(values.iterations);
  const ops = values.ops ? values.ops.split(",") : Object.keys(OPS);
  for (const o of ops) if (!OPS[o]) throw new Error(`Unknown operation ${o}`);
  const out = values.out ?? `fuzz-diff-${seed}`;
  await Deno.mkdir(out, { recursive: true });
  const first = values.only !== undefined ? Number(values.only) : 0;
  const last = values.only !== undefined ? first + 1 : n;
  let found = 0;
  for (let it = first; it < last; it++) {
    const rng = new Rng((Math.imul(seed, 0x9e3779b1) ^ Math.imul(it + 1, 0x85ebca6b)) >>> 0);
    const op = rng.pick(ops);
    const dir = await Deno.makeTempDir({ prefix: "instar-diff-" });
    const c: Ctx = { rng, dir, picks: { op }, divergences: [], formats: values.formats?.split(",") };
    let error: string | undefined;
    try {
      await OPS[op](c);
    } catch (e) {
      error = String((e as Error)?.message ?? e);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    console.log(
      `iteration ${it} seed ${seed}: ${JSON.stringify(c.picks)}${error ? ` setup error: ${error}` : ""}`,
    );
    for (const d of c.divergences) {
      const path = `${out}/divergence-${seed}-${it}-${d.kind}.json`;
      await Deno.writeTextFile(
        path,
        JSON.stringify({ seed, iteration: it, picks: c.picks, ...d }, null, 2) + "\n",
      );
      console.log(`  DIVERGENCE ${d.kind}: ${path}`);
      found++;
    }
  }
  console.log(`${last - first} iterations, ${found} divergences (reports in ${out}/)`);
  return found ? 1 : 0;
}

if (import.meta.main) {
  const cwd = Deno.env.get("INIT_CWD");
  if (cwd) Deno.chdir(cwd);
  Deno.exit(await main(Deno.args));
}
