// The qcow2 output planner, checked by building real images: the test
// writes data clusters (plain and compressed) where the prologue says, asks
// the planner for the metadata, applies it, and then qemu-img must find no
// errors or leaks, read back exactly the data written, and report the same
// info as for qemu-img convert's own output of the same data.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { deflateRawSync, zstdCompressSync } from "node:zlib";
import { applyPlan } from "../apply_plan.ts";
import { planViolation } from "../plan.ts";
import {
  type CompressedCluster,
  type DataRun,
  qcow2OutputFinish,
  type Qcow2OutputOptions,
  qcow2OutputPrologue,
} from "./output_plan.ts";

const dec = new TextDecoder();
const show = (v: unknown) => JSON.stringify(v, (_, x) => typeof x === "bigint" ? `${x}` : x);

function run(cmd: string, args: string[]): { code: number; stdout: string; stderr: string } {
  const o = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

function haveQemuImg(): boolean {
  try {
    return run("qemu-img", ["--version"]).code === 0;
  } catch {
    return false;
  }
}

/** A small deterministic generator, so a failure reproduces. */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

const DEFAULTS: Qcow2OutputOptions = {
  clusterSize: 65536n,
  refcountBits: 16,
  compat: "1.1",
  extendedL2: false,
  lazyRefcounts: false,
  compressionType: "zlib",
};

interface Case {
  name: string;
  o: Partial<Qcow2OutputOptions>;
  virtualSize: bigint;
  /** Fractions of guest clusters stored plain / compressed; the rest stay unallocated. */
  plain: number;
  compressed: number;
  /** Guest clusters to consider (default: all). Sparse huge images list a few. */
  pick?: bigint[];
  /** Skip the convert-to-raw comparison (huge virtual sizes). */
  noRaw?: boolean;
}

/** Compresses one cluster the way qemu does (raw deflate, 4 KiB window; or a zstd frame). */
function compress(data: Uint8Array, type: "zlib" | "zstd"): Uint8Array {
  return new Uint8Array(type === "zstd" ? zstdCompressSync(data) : deflateRawSync(data, { windowBits: 12 }));
}

/** Cluster contents that compress well but differ per cluster. */
function clusterData(r: () => number, size: number): Uint8Array {
  const b = new Uint8Array(size);
  const motif = new Uint8Array(64).map(() => Math.floor(r() * 256));
  for (let i = 0; i < size; i++) b[i] = motif[i % 64] ^ (i >> 10 & 0xff);
  b[0] = Math.floor(r() * 256);
  return b;
}

function optionString(o: Qcow2OutputOptions): string {
  return [
    `cluster_size=${o.clusterSize}`,
    `refcount_bits=${o.refcountBits}`,
    `compat=${o.compat}`,
    `extended_l2=${o.extendedL2 ? "on" : "off"}`,
    `lazy_refcounts=${o.lazyRefcounts ? "on" : "off"}`,
    `compression_type=${o.compressionType}`,
  ].join(",");
}

async function build(dir: string, c: Case, seed: number) {
  const o = { ...DEFAULTS, ...c.o };
  const cs = Number(o.clusterSize);
  const r = rng(seed);
  const pro = qcow2OutputPrologue(o, c.virtualSize);
  assert(pro.ok, show(pro));
  const dataStart = pro.value.dataStart;
  const path = `${dir}/${c.name}.qcow2`;
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const expected = c.noRaw ? undefined : new Uint8Array(Number(c.virtualSize));
  const runs: DataRun[] = [];
  const comp: CompressedCluster[] = [];
  let at = dataStart; // next free host byte
  const guestClusters = (c.virtualSize + o.clusterSize - 1n) / o.clusterSize;
  const picks = c.pick ?? Array.from({ length: Number(guestClusters) }, (_, i) => BigInt(i));
  // Compressed streams pack byte after byte; a host cluster may be touched
  // by at most refcountMax streams, after which packing moves on.
  const rmax = 2 ** o.refcountBits - 1;
  let touches = new Map<bigint, number>();
  const written: { guest: bigint; data: Uint8Array }[] = [];
  for (const g of picks) {
    const x = r();
    const data = clusterData(r, cs);
    if (x < c.plain) {
      at = (at + o.clusterSize - 1n) / o.clusterSize * o.clusterSize;
      const last = runs[runs.length - 1];
      if (
        last && last.guestCluster + last.count === g && last.hostOffset + last.count * o.clusterSize === at
      ) {
        last.count++;
      } else {
        runs.push({ guestCluster: g, count: 1n, hostOffset: at });
      }
      await f.seek(at, Deno.SeekMode.Start);
      await f.write(data);
      at += o.clusterSize;
      written.push({ guest: g, data });
    } else if (x < c.plain + c.compressed) {
      const z = compress(data, o.compressionType);
      if (z.length >= cs) continue;
      const span = (s: bigint) => {
        const ks: bigint[] = [];
        for (let k = s / o.clusterSize; k <= (s + BigInt(z.length) - 1n) / o.clusterSize; k++) ks.push(k);
        return ks;
      };
      if (span(at).some((k) => (touches.get(k) ?? 0) >= rmax)) {
        at = (at + o.clusterSize - 1n) / o.clusterSize * o.clusterSize;
        touches = new Map();
      }
      for (const k of span(at)) touches.set(k, (touches.get(k) ?? 0) + 1);
      comp.push({ guestCluster: g, hostOffset: at, length: BigInt(z.length) });
      await f.seek(at, Deno.SeekMode.Start);
      await f.write(z);
      at += BigInt(z.length);
      written.push({ guest: g, data });
    }
  }
  f.close();
  for (const w of written) {
    if (!expected) break;
    const off = Number(w.guest) * cs;
    expected.set(w.data.subarray(0, Math.min(cs, expected.length - off)), off);
  }
  // The case must exercise what it claims to.
  if (c.plain > 0) assert(runs.length > 0, "no plain runs");
  if (c.compressed > 0) assert(comp.length > 0, "no compressed clusters");
  const plan = qcow2OutputFinish(o, c.virtualSize, at, runs, comp);
  assert(plan.ok, show(plan));
  assertEquals(planViolation(plan.value), undefined);
  assert(plan.value.patches.length <= 4);
  await applyPlan(path, plan.value);
  return { o, path, expected, written, plan: plan.value };
}

function checkClean(path: string) {
  const human = run("qemu-img", ["check", path]);
  assertEquals(human.code, 0, `${path}: ${human.stdout}${human.stderr}`);
  assert(human.stdout.startsWith("No errors were found on the image."), human.stdout);
  const json = JSON.parse(run("qemu-img", ["check", "--output=json", path]).stdout);
  assertEquals(json["check-errors"], 0);
  assertEquals(json.leaks ?? 0, 0);
  assertEquals(json.corruptions ?? 0, 0);
}

const CASES: Case[] = [
  { name: "default", o: {}, virtualSize: 3n * 1048576n + 1536n, plain: 0.5, compressed: 0.3 },
  {
    name: "c512_rb1",
    o: { clusterSize: 512n, refcountBits: 1 },
    virtualSize: 300n * 1024n,
    plain: 0.6,
    compressed: 0.2,
  },
  {
    name: "c1k_rb2",
    o: { clusterSize: 1024n, refcountBits: 2 },
    virtualSize: 512n * 1024n,
    plain: 0.4,
    compressed: 0.4,
  },
  {
    name: "c4k_rb4",
    o: { clusterSize: 4096n, refcountBits: 4 },
    virtualSize: 2n * 1048576n,
    plain: 0.4,
    compressed: 0.4,
  },
  {
    name: "c8k_rb8",
    o: { clusterSize: 8192n, refcountBits: 8 },
    virtualSize: 2n * 1048576n + 512n,
    plain: 0.5,
    compressed: 0.3,
  },
  {
    name: "c512_rb64",
    o: { clusterSize: 512n, refcountBits: 64 },
    virtualSize: 4n * 1048576n,
    plain: 0.9,
    compressed: 0.05,
  },
  {
    name: "c2m_rb32",
    o: { clusterSize: 2097152n, refcountBits: 32 },
    virtualSize: 9n * 1048576n,
    plain: 0.5,
    compressed: 0.5,
  },
  {
    name: "extl2",
    o: { clusterSize: 32768n, extendedL2: true },
    virtualSize: 4n * 1048576n,
    plain: 0.4,
    compressed: 0.3,
  },
  {
    name: "extl2_c16k_rb2",
    o: { clusterSize: 16384n, extendedL2: true, refcountBits: 2 },
    virtualSize: 3n * 1048576n,
    plain: 0.4,
    compressed: 0.3,
  },
  { name: "compat010", o: { compat: "0.10" }, virtualSize: 2n * 1048576n, plain: 0.5, compressed: 0.3 },
  {
    name: "zstd_lazy",
    o: { compressionType: "zstd", lazyRefcounts: true },
    virtualSize: 2n * 1048576n,
    plain: 0.3,
    compressed: 0.6,
  },
  { name: "empty", o: {}, virtualSize: 1048576n, plain: 0, compressed: 0 },
  { name: "zero_size", o: {}, virtualSize: 0n, plain: 0, compressed: 0 },
];

Deno.test({
  name: "qcow2 output plans make images qemu-img reads back and checks clean",
  ignore: !haveQemuImg(),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "instar_qcow2_out_" });
    try {
      for (const [i, c] of CASES.entries()) {
        await t.step(c.name, async () => {
          const { o, path, expected } = await build(dir, c, 1000 + i);
          checkClean(path);
          // Same data as written.
          const raw = `${dir}/${c.name}.raw`;
          assertEquals(run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", path, raw]).code, 0);
          const back = await Deno.readFile(raw);
          assertEquals(back.length, expected!.length);
          assert(back.every((v, k) => v === expected![k]), "read-back data differs");
          // Same info as qemu-img convert's own output, apart from sizes on disk.
          const ref = `${dir}/${c.name}.ref.qcow2`;
          const conv = run("qemu-img", [
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            optionString(o),
            raw,
            ref,
          ]);
          assertEquals(conv.code, 0, conv.stderr);
          const info = (p: string) => {
            const j = JSON.parse(run("qemu-img", ["info", "--output=json", p]).stdout);
            delete j["actual-size"];
            delete j.filename;
            return j;
          };
          assertEquals(info(path), info(ref));
        });
      }
      await t.step("backing file and format in the header (convert -B)", async () => {
        const o = { ...DEFAULTS, backingFile: new TextEncoder().encode("base.raw"), backingFormat: "raw" };
        const pro = qcow2OutputPrologue(o, 1048576n);
        assert(pro.ok);
        const path = `${dir}/backed.qcow2`;
        await Deno.writeFile(path, new Uint8Array(0));
        // check opens the backing file, so it must exist.
        assertEquals(run("qemu-img", ["create", "-q", "-f", "raw", `${dir}/base.raw`, "1M"]).code, 0);
        const plan = qcow2OutputFinish(o, 1048576n, pro.value.dataStart, [], []);
        assert(plan.ok);
        await applyPlan(path, plan.value);
        const info = JSON.parse(run("qemu-img", ["info", "--output=json", path]).stdout);
        assertEquals([info["backing-filename"], info["backing-filename-format"]], ["base.raw", "raw"]);
        checkClean(path);
      });
      await t.step("sparse 1 PiB image with clusters far apart", async () => {
        const cs = 65536n;
        const far = [0n, 1n, 8191n, 8192n, (1n << 50n) / cs - 1n, 123456789n];
        const c: Case = {
          name: "sparse",
          o: {},
          virtualSize: 1n << 50n,
          plain: 0.5,
          compressed: 0.5,
          pick: far,
          noRaw: true,
        };
        const { path, written, plan } = await build(dir, c, 7);
        checkClean(path);
        // 16 MiB of L1 is one patch.
        assert(plan.patches.some((p) => p.kind === "write" && p.bytes.length === 16 * 1024 * 1024));
        for (const w of written) {
          const off = w.guest * cs;
          const r = run("qemu-io", ["-f", "qcow2", "-c", `read -v ${off} 64`, path]);
          assertEquals(r.code, 0, r.stderr);
          // `read -v` dumps hex: compare the first 16 bytes.
          const hex = r.stdout.split("\n")[0].split(":")[1].trim().split(/\s+/).slice(0, 16).join(" ");
          const want = [...w.data.subarray(0, 16)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
          assertEquals(hex, want, `cluster ${w.guest}`);
        }
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("qcow2 output planner refuses bad run lists without throwing", () => {
  const o = DEFAULTS;
  const vs = 10n * 65536n;
  const pro = qcow2OutputPrologue(o, vs);
  assert(pro.ok);
  const ds = pro.value.dataStart;
  const cs = o.clusterSize;
  const good: DataRun[] = [{ guestCluster: 0n, count: 2n, hostOffset: ds }];
  assert(qcow2OutputFinish(o, vs, ds + 2n * cs, good, []).ok);
  const bad: [string, bigint, DataRun[], CompressedCluster[]][] = [
    ["data end before data start", ds - 1n, [], []],
    ["run with no clusters", ds + cs, [{ guestCluster: 0n, count: 0n, hostOffset: ds }], []],
    ["run past the image end", ds + 2n * cs, [{ guestCluster: 9n, count: 2n, hostOffset: ds }], []],
    ["negative guest cluster", ds + cs, [{ guestCluster: -1n, count: 1n, hostOffset: ds }], []],
    ["unaligned host offset", ds + 2n * cs, [{ guestCluster: 0n, count: 1n, hostOffset: ds + 512n }], []],
    ["run before the data start", ds + cs, [{ guestCluster: 0n, count: 1n, hostOffset: 0n }], []],
    ["run past the data end", ds + cs, [{ guestCluster: 0n, count: 2n, hostOffset: ds }], []],
    ["guest cluster twice", ds + 2n * cs, [
      { guestCluster: 0n, count: 1n, hostOffset: ds },
      { guestCluster: 0n, count: 1n, hostOffset: ds + cs },
    ], []],
    ["host cluster twice", ds + cs, [
      { guestCluster: 0n, count: 1n, hostOffset: ds },
      { guestCluster: 1n, count: 1n, hostOffset: ds },
    ], []],
    ["compressed inside a run", ds + cs, [{ guestCluster: 0n, count: 1n, hostOffset: ds }], [
      { guestCluster: 1n, hostOffset: ds + 100n, length: 10n },
    ]],
    ["compressed and plain for one guest cluster", ds + 2n * cs, [{
      guestCluster: 0n,
      count: 1n,
      hostOffset: ds,
    }], [
      { guestCluster: 0n, hostOffset: ds + cs, length: 10n },
    ]],
    ["overlapping compressed streams", ds + 100n, [], [
      { guestCluster: 0n, hostOffset: ds, length: 50n },
      { guestCluster: 1n, hostOffset: ds + 49n, length: 50n },
    ]],
    ["empty compressed stream", ds + 100n, [], [{ guestCluster: 0n, hostOffset: ds, length: 0n }]],
    ["compressed stream longer than a cluster", ds + 2n * cs, [], [{
      guestCluster: 0n,
      hostOffset: ds,
      length: cs + 1n,
    }]],
    ["compressed cluster past the image end", ds + 100n, [], [{
      guestCluster: 10n,
      hostOffset: ds,
      length: 10n,
    }]],
    ["compressed past the data end", ds + 100n, [], [{
      guestCluster: 0n,
      hostOffset: ds + 95n,
      length: 10n,
    }]],
    ["huge data end", 1n << 60n, [], []],
  ];
  for (const [what, end, runs, comp] of bad) {
    const r = qcow2OutputFinish(o, vs, end, runs, comp);
    assert(!r.ok, what);
  }
  // One-bit refcounts cannot count two streams in one cluster.
  const o1 = { ...o, refcountBits: 1 };
  const ds1 = (qcow2OutputPrologue(o1, vs) as { ok: true; value: { dataStart: bigint } }).value.dataStart;
  const two: CompressedCluster[] = [
    { guestCluster: 0n, hostOffset: ds1, length: 10n },
    { guestCluster: 1n, hostOffset: ds1 + 10n, length: 10n },
  ];
  assert(!qcow2OutputFinish(o1, vs, ds1 + 20n, [], two).ok);
  assert(qcow2OutputFinish({ ...o, refcountBits: 2 }, vs, ds1 + 20n, [], two).ok);
});

Deno.test("qcow2 output prologue refuses options and sizes qemu refuses", () => {
  const bad: [Partial<Qcow2OutputOptions>, bigint][] = [
    [{ clusterSize: 256n }, 1n << 20n],
    [{ clusterSize: 4194304n }, 1n << 20n],
    [{ clusterSize: 65535n }, 1n << 20n],
    [{ refcountBits: 3 }, 1n << 20n],
    [{ refcountBits: 128 }, 1n << 20n],
    [{ compat: "0.10", refcountBits: 8 }, 1n << 20n],
    [{ compat: "0.10", extendedL2: true }, 1n << 20n],
    [{ compat: "0.10", lazyRefcounts: true }, 1n << 20n],
    [{ compat: "0.10", compressionType: "zstd" }, 1n << 20n],
    [{ extendedL2: true, clusterSize: 8192n }, 1n << 20n],
    [{}, 1000n],
    [{}, -512n],
    // 32 MiB of L1 covers 2 PiB with 64 KiB clusters; one more L2 is too much.
    [{}, (1n << 51n) + 512n],
    [{ clusterSize: 512n }, (1n << 37n) + 512n],
  ];
  for (const [o, size] of bad) {
    const r = qcow2OutputPrologue({ ...DEFAULTS, ...o }, size);
    assert(!r.ok, `${show(o)} ${size}`);
  }
  assert(qcow2OutputPrologue(DEFAULTS, 1n << 51n).ok);
  assert(qcow2OutputPrologue({ ...DEFAULTS, clusterSize: 512n }, 1n << 37n).ok);
});

Deno.test("qcow2 output planner: zero clusters over a backing file (convert -B), checked", () => {
  const o = { ...DEFAULTS, backingFile: new TextEncoder().encode("base.qcow2"), backingFormat: "qcow2" };
  const vs = 10n * 65536n;
  const pro = qcow2OutputPrologue(o, vs);
  assert(pro.ok);
  const ds = pro.value.dataStart, cs = o.clusterSize;
  const data: DataRun[] = [{ guestCluster: 0n, count: 1n, hostOffset: ds }];
  const good = qcow2OutputFinish(o, vs, ds + cs, data, [], [{ guestCluster: 1n, count: 9n }]);
  assert(good.ok);
  // The zero entries land in the one L2 table, after the data cluster's entry.
  const meta = good.value.patches.find((p) => p.kind === "write" && p.offset === ds + cs);
  assert(meta && meta.kind === "write");
  const l2 = new DataView(meta.bytes.buffer, meta.bytes.byteOffset);
  assertEquals(l2.getBigUint64(8), 1n);
  assertEquals(l2.getBigUint64(72), 1n);
  assertEquals(l2.getBigUint64(80), 0n);
  const bad: [string, Qcow2OutputOptions, { guestCluster: bigint; count: bigint }[]][] = [
    ["no backing file", DEFAULTS, [{ guestCluster: 1n, count: 1n }]],
    ["compat=0.10", { ...o, compat: "0.10" }, [{ guestCluster: 1n, count: 1n }]],
    ["past the image end", o, [{ guestCluster: 9n, count: 2n }]],
    ["no clusters", o, [{ guestCluster: 1n, count: 0n }]],
    ["over a data cluster", o, [{ guestCluster: 0n, count: 1n }]],
    ["twice", o, [{ guestCluster: 1n, count: 2n }, { guestCluster: 2n, count: 1n }]],
  ];
  for (const [what, opts, zeros] of bad) {
    assert(!qcow2OutputFinish(opts, vs, ds + cs, data, [], zeros).ok, what);
  }
});
