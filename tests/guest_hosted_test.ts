// Runs the guest parsers and the info/check/map programs as hosted Linux
// executables (guest/host, built here with `make -C guest/host`) and compares
// their records with what the installed qemu-img prints for images that
// qemu-img/qemu-io make inside each test.
import { KVM } from "./support/kvm.ts";
import assert from "node:assert/strict";
import { decodeRecords, nameBytes } from "../lib/abi/records.ts";
import type { FieldValue, Rec } from "../lib/abi/records.ts";
import {
  formats,
  mapFlags,
  nameKinds,
  partitionKinds,
  qcow2InfoFlags,
  records,
  signatures,
} from "../lib/abi/spec.ts";
import { formatCheckMessage, qcow2MapErrorText, qcow2OpenErrorText } from "../lib/abi/check_messages.ts";
import { qcow2Snapshots } from "../lib/formats/qcow2/snapshots.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HOST = `${ROOT}build/host`;
const U64_MAX = (1n << 64n) - 1n;

function sh(cmd: string, args: string[], cwd?: string): { code: number; stdout: Uint8Array; stderr: string } {
  const out = new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).outputSync();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

function ok(cmd: string, args: string[], cwd?: string): string {
  const r = sh(cmd, args, cwd);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return new TextDecoder().decode(r.stdout);
}

let built = false;
function build(): void {
  if (built) return;
  ok("make", ["-s", "-C", `${ROOT}guest/host`]);
  built = true;
}

/** Runs a hosted op; inputs are "fmt:path". */
function hosted(op: string, inputs: string[], args: bigint[] = []): Rec[] {
  build();
  const a: string[] = [];
  for (const x of args) a.push("--arg", x.toString());
  const r = sh(`${HOST}/${op}`, [...a, ...inputs]);
  assert.equal(r.code, 0, r.stderr);
  return decodeRecords(r.stdout);
}

function only(recs: Rec[], type: number): Rec {
  const f = recs.filter((r) => r.type === type);
  assert.equal(
    f.length,
    1,
    `expected one record of type ${type}, got ${JSON.stringify(recs.map((r) => r.type))}`,
  );
  return f[0];
}

function noErrors(recs: Rec[]): void {
  const e = recs.filter((r) => r.type === records.ERROR);
  assert.equal(
    e.length,
    0,
    `unexpected ERROR records: ${JSON.stringify(e, (_k, v) => typeof v === "bigint" ? v.toString() : v)}`,
  );
}

function tmp(): string {
  return Deno.makeTempDirSync({ prefix: "instar-hosted-" });
}

const img = (...a: string[]) => ok("qemu-img", a);
const io = (file: string, ...cmds: string[]) =>
  ok("qemu-io", ["-f", "qcow2", ...cmds.flatMap((c) => ["-c", c]), file]);

// ---- comparisons against qemu-img -------------------------------------------------------------

function compareInfo(path: string, fmt = "auto"): void {
  const q = JSON.parse(img("info", "--output=json", ...(fmt === "auto" ? [] : ["-f", fmt]), path));
  const recs = hosted("info", [`${fmt}:${path}`]);
  noErrors(recs);
  const probe = only(recs, records.PROBE);
  assert.equal(probe.fields.format, q.format === "qcow2" ? formats.QCOW2 : formats.RAW);
  if (q.format !== "qcow2") return;
  const i = only(recs, records.QCOW2_INFO).fields;
  // qemu's virtual size is whole sectors (total_sectors * 512)
  assert.equal((i.virtual_size as bigint) & ~511n, BigInt(q["virtual-size"]));
  assert.equal(1 << (i.cluster_bits as number), q["cluster-size"]);
  const d = q["format-specific"].data;
  assert.equal(i.version === 2 ? "0.10" : "1.1", d.compat);
  assert.equal(i.compression_type === 0 ? "zlib" : "zstd", d["compression-type"]);
  assert.equal(1 << (i.refcount_order as number), d["refcount-bits"]);
  const incompat = i.incompatible_features as bigint;
  if (d["lazy-refcounts"] !== undefined) {
    assert.equal(((i.compatible_features as bigint) & 1n) === 1n, d["lazy-refcounts"]);
  }
  if (d.corrupt !== undefined) assert.equal((incompat & 2n) === 2n, d.corrupt);
  if (d["extended-l2"] !== undefined) assert.equal((incompat & 16n) === 16n, d["extended-l2"]);
  assert.equal((incompat & 1n) === 1n, q["dirty-flag"]);
  const names = recs.filter((r) => r.type === records.NAME);
  const name = (k: number) => {
    const n = names.find((r) => r.fields.kind === k);
    return n ? new TextDecoder().decode(nameBytes(n)) : undefined;
  };
  assert.equal(name(nameKinds.BACKING_FILE), q["backing-filename"]);
  assert.equal(name(nameKinds.BACKING_FORMAT), q["backing-filename-format"]);
  assert.equal(name(nameKinds.DATA_FILE), d["data-file"]);
  assert.equal(((i.flags as number) & qcow2InfoFlags.HAS_BACKING) !== 0, q["backing-filename"] !== undefined);
  const text = (b: FieldValue, n: FieldValue) =>
    new TextDecoder().decode((b as Uint8Array).subarray(0, Number(n)));
  const nb = Number(i.nb_snapshots);
  const snaps = nb
    ? [...qcow2Snapshots(recs, 0, nb)].map((f) => {
      const clock = f.vmClockNsec;
      const e: Record<string, unknown> = {
        id: new TextDecoder().decode(f.id),
        name: new TextDecoder().decode(f.name),
        "date-sec": f.dateSec,
        "date-nsec": f.dateNsec,
        "vm-clock-sec": Number(clock / 1000000000n),
        "vm-clock-nsec": Number(clock % 1000000000n),
        "vm-state-size": Number(f.vmStateSize),
      };
      if (f.icount !== undefined) e.icount = Number(f.icount);
      return e;
    })
    : [];
  const sortKeys = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).sort());
  assert.deepEqual(snaps.map(sortKeys), (q.snapshots ?? []).map(sortKeys));
  const bitmaps = recs.filter((r) => r.type === records.BITMAP).map((r) => {
    const f = r.fields;
    const flags: string[] = [];
    if ((f.flags as number) & 1) flags.push("in-use");
    if ((f.flags as number) & 2) flags.push("auto");
    return { flags, name: text(f.name, f.name_len), granularity: 2 ** (f.granularity_bits as number) };
  });
  assert.deepEqual(bitmaps, d.bitmaps ?? []);
}

interface CheckOutcome {
  code: number;
  stderr: string;
}

/** CHECK_MSG texts in order; NAME records right before a message fill its %N. */
function checkText(recs: Rec[]): string {
  let out = "";
  let names: string[] = [];
  for (const r of recs) {
    if (r.type === records.NAME) names.push(new TextDecoder().decode(nameBytes(r)));
    if (r.type !== records.CHECK_MSG) continue;
    out += formatCheckMessage(r.fields.code as number, r.fields.a as bigint[], "qemu-img", names);
    names = [];
  }
  return out;
}

const strerror: Record<number, string> = {
  5: "Input/output error",
  12: "Cannot allocate memory",
  22: "Invalid argument",
  27: "File too large",
};

function compareCheck(path: string): CheckOutcome {
  const human = sh("qemu-img", ["check", path]);
  const recs = hosted("check", [`qcow2:${path}`]);
  noErrors(recs);
  const c = only(recs, records.CHECK).fields;
  // The diagnostics, in qemu's order, exactly as qemu-img check prints them on stderr.
  let lines = checkText(recs);
  const failed = c.flags as number;
  if (failed) {
    // qemu's check returned an error: no summary, "Check failed: <strerror>", exit 1.
    lines += `qemu-img: Check failed: ${strerror[failed]}\n`;
    assert.equal(lines, human.stderr);
    assert.equal(human.code, 1);
    assert.equal(new TextDecoder().decode(human.stdout), "");
    return { code: human.code, stderr: human.stderr };
  }
  if (c.check_errors) lines += "qemu-img: Check failed\n";
  assert.equal(lines, human.stderr);
  const js = sh("qemu-img", ["check", "--output=json", path]);
  const q = JSON.parse(new TextDecoder().decode(js.stdout));
  const num = (k: string) => BigInt(q[k] ?? 0);
  assert.equal(c.corruptions, num("corruptions"), "corruptions");
  assert.equal(c.leaks, num("leaks"), "leaks");
  assert.equal(c.check_errors, num("check-errors"), "check-errors");
  assert.equal(c.image_end_offset, num("image-end-offset"), "image-end-offset");
  assert.equal(c.total_clusters, num("total-clusters"), "total-clusters");
  assert.equal(c.allocated_clusters, num("allocated-clusters"), "allocated-clusters");
  assert.equal(c.fragmented_clusters, num("fragmented-clusters"), "fragmented-clusters");
  assert.equal(c.compressed_clusters, num("compressed-clusters"), "compressed-clusters");
  // The exit status qemu-img derives from the same counters.
  const expect = c.check_errors ? 1 : c.corruptions ? 2 : c.leaks ? 3 : 0;
  assert.equal(expect, human.code);
  return { code: human.code, stderr: human.stderr };
}

interface QMap {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

function mapRecords(recs: Rec[]): QMap[] {
  return recs.filter((r) => r.type === records.MAP_EXTENT).map((r) => {
    const f = r.fields;
    const flags = f.flags as number;
    const e: QMap = {
      start: Number(f.start),
      length: Number(f.length),
      depth: f.depth as number,
      present: (flags & mapFlags.PRESENT) !== 0,
      zero: (flags & mapFlags.ZERO) !== 0,
      data: (flags & mapFlags.DATA) !== 0,
    };
    if (flags & mapFlags.OFFSET_VALID) e.offset = Number(f.offset);
    return e;
  });
}

/** chain: [fmt, path] from the top down, as the host would attach it. */
function compareMap(chain: [string, string][], qemuArgs: string[] = [], args = [0n, U64_MAX]): QMap[] {
  const q: QMap[] = JSON.parse(img("map", "--output=json", ...qemuArgs, chain[0][1]));
  const recs = hosted("map", chain.map(([f, p]) => `${f}:${p}`), args);
  noErrors(recs);
  assert.deepEqual(mapRecords(recs), q);
  return q;
}

function timed<T>(f: () => T): [T, number] {
  const t0 = performance.now();
  const v = f();
  return [v, performance.now() - t0];
}

function writeSome(path: string, cluster: number): void {
  io(
    path,
    "write -P 0x11 0 4k",
    `write -P 0x22 ${cluster * 3} ${cluster * 2}`,
    "write -P 0x33 1M 64k",
    "write -P 0x44 5M 512",
    `write -P 0x55 ${cluster * 10} 1`,
  );
}

// ---- tests ----------------------------------------------------------------------------------

Deno.test("reference image from compat.md: info, check, map match qemu-img", () => {
  const d = tmp();
  const p = `${d}/s.qcow2`;
  img("create", "-q", "-f", "qcow2", p, "64M");
  io(p, "write -P 0xab 0 1M", "write -P 0xcd 4M 512k", "write -z 8M 1M", "write -P 0x11 32M 64k");
  compareInfo(p);
  compareCheck(p);
  compareMap([["auto", p]]);
  // A window of the map (start, length) as `qemu-img map --start-offset --max-length`.
  compareMap([["qcow2", p]], ["--start-offset", "4194304", "--max-length", "5000000"], [4194304n, 5000000n]);
  Deno.removeSync(d, { recursive: true });
});

Deno.test("compat 0.10 and 1.1 with cluster sizes 512, 4K, 64K, 2M", async (t) => {
  for (const compat of ["0.10", "1.1"]) {
    for (const cs of [512, 4096, 65536, 2097152]) {
      await t.step(`compat=${compat} cluster_size=${cs}`, () => {
        const d = tmp();
        const p = `${d}/i.qcow2`;
        img("create", "-q", "-f", "qcow2", "-o", `compat=${compat},cluster_size=${cs}`, p, "64M");
        writeSome(p, cs);
        if (compat === "1.1") io(p, "write -z 2M 1M");
        compareInfo(p);
        compareCheck(p);
        compareMap([["auto", p]]);
        Deno.removeSync(d, { recursive: true });
      });
    }
  }
});

Deno.test("refcount_bits 1 to 64", async (t) => {
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    await t.step(`refcount_bits=${bits}`, () => {
      const d = tmp();
      const p = `${d}/i.qcow2`;
      img("create", "-q", "-f", "qcow2", "-o", `refcount_bits=${bits},cluster_size=4096`, p, "32M");
      writeSome(p, 4096);
      compareInfo(p);
      compareCheck(p);
      compareMap([["qcow2", p]]);
      Deno.removeSync(d, { recursive: true });
    });
  }
});

Deno.test("extended_l2 and lazy_refcounts", async (t) => {
  await t.step("extended_l2=on", () => {
    const d = tmp();
    const p = `${d}/i.qcow2`;
    img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", p, "16M");
    io(
      p,
      "write -P 1 0 2k",
      "write -P 2 8k 4k",
      "write -z 64k 8k",
      "write -P 3 200k 100k",
      "write -z 1M 64k",
    );
    compareInfo(p);
    compareCheck(p);
    compareMap([["auto", p]]);
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("lazy_refcounts=on", () => {
    const d = tmp();
    const p = `${d}/i.qcow2`;
    img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", p, "16M");
    writeSome(p, 65536);
    compareInfo(p);
    compareCheck(p);
    compareMap([["auto", p]]);
    Deno.removeSync(d, { recursive: true });
  });
});

Deno.test("compressed images: zlib and zstd", async (t) => {
  for (const type of ["zlib", "zstd"]) {
    await t.step(type, () => {
      const d = tmp();
      const src = `${d}/src.qcow2`, p = `${d}/c.qcow2`;
      img("create", "-q", "-f", "qcow2", src, "8M");
      io(src, "write -P 0x61 0 1M", "write -P 0x62 3M 200k", "write -z 5M 64k");
      img("convert", "-c", "-O", "qcow2", "-o", `compression_type=${type}`, src, p);
      compareInfo(p);
      const c = compareCheck(p);
      assert.equal(c.code, 0);
      compareMap([["auto", p]]);
      Deno.removeSync(d, { recursive: true });
    });
  }
});

Deno.test("backing chain: overlay over qcow2 and over raw", async (t) => {
  await t.step("qcow2 base", () => {
    const d = tmp();
    const base = `${d}/base.qcow2`, top = `${d}/top.qcow2`;
    img("create", "-q", "-f", "qcow2", base, "16M");
    io(base, "write -P 1 0 2M", "write -z 4M 1M", "write -P 2 8M 64k");
    img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "20M");
    io(top, "write -P 3 1M 64k", "write -z 8M 64k", "write -P 4 18M 64k");
    compareInfo(top);
    compareCheck(top);
    compareMap([["auto", top], ["qcow2", base]]);
    // Without the backing attached: unallocated ranges read as zero at depth 0.
    const recs = hosted("map", [`qcow2:${top}`], [0n, U64_MAX]);
    for (const e of mapRecords(recs)) assert.ok(e.depth === 0 && (e.present || e.zero));
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("raw base with a hole", () => {
    const d = tmp();
    const base = `${d}/base.raw`, top = `${d}/top.qcow2`;
    const f = Deno.openSync(base, { write: true, create: true });
    f.truncateSync(4 << 20);
    f.seekSync(1 << 20, Deno.SeekMode.Start);
    f.writeSync(new Uint8Array(65536).fill(7));
    f.close();
    img("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, "4M");
    io(top, "write -P 3 0 64k");
    compareMap([["auto", top], ["raw", base]]);
    compareMap([["raw", base]], ["-f", "raw"]);
    Deno.removeSync(d, { recursive: true });
  });
});

Deno.test("1 PiB virtual size: map and check are fast and match", () => {
  const d = tmp();
  const p = `${d}/big.qcow2`;
  img("create", "-q", "-f", "qcow2", p, "1P");
  io(p, "write -P 9 0 64k", "write -P 9 512T 64k");
  const [, tMap] = timed(() => hosted("map", [`auto:${p}`], [0n, U64_MAX]));
  const [, tCheck] = timed(() => hosted("check", [`qcow2:${p}`]));
  assert.ok(tMap < 1000, `map took ${tMap} ms`);
  assert.ok(tCheck < 1000, `check took ${tCheck} ms`);
  compareMap([["auto", p]]);
  compareCheck(p);
  compareInfo(p);
  Deno.removeSync(d, { recursive: true });
});

function header(path: string): DataView {
  const b = Deno.readFileSync(path);
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function patch(path: string, offset: number, bytes: Uint8Array): void {
  const f = Deno.openSync(path, { write: true });
  f.seekSync(offset, Deno.SeekMode.Start);
  f.writeSync(bytes);
  f.close();
}

function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

Deno.test("corrupted images: leak, refcount too high, refcount too low", async (t) => {
  // Locates the data cluster of guest offset 0 and its refcount entry (16-bit refcounts, 64K clusters).
  const setup = () => {
    const d = tmp();
    const p = `${d}/c.qcow2`;
    img("create", "-q", "-f", "qcow2", p, "16M");
    io(p, "write -P 0x5a 0 64k", "write -P 0x5b 1M 64k");
    const h = header(p);
    const l1 = Number(h.getBigUint64(40));
    const l2 = Number(h.getBigUint64(l1) & 0x00fffffffffffe00n);
    const data = Number(h.getBigUint64(l2) & 0x00fffffffffffe00n);
    const rt = Number(h.getBigUint64(48));
    const rb = Number(h.getBigUint64(rt));
    return { d, p, l2, data, rb };
  };
  await t.step("leaked cluster (exit 3)", () => {
    const { d, p, l2 } = setup();
    patch(p, l2, be64(0n)); // drop the L2 entry: the data cluster keeps refcount 1, no reference
    const c = compareCheck(p);
    assert.equal(c.code, 3);
    const recs = hosted("check", [`qcow2:${p}`]);
    assert.equal(only(recs, records.CHECK).fields.leaks, 1n);
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("refcount 2 on a data cluster", () => {
    const { d, p, data, rb } = setup();
    patch(p, rb + 2 * (data >> 16), new Uint8Array([0, 2]));
    const c = compareCheck(p);
    assert.ok(c.code === 2 || c.code === 3);
    assert.ok(c.stderr.includes("OFLAG_COPIED"));
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("refcount 0 on a data cluster (exit 2)", () => {
    const { d, p, data, rb } = setup();
    patch(p, rb + 2 * (data >> 16), new Uint8Array([0, 0]));
    const c = compareCheck(p);
    assert.equal(c.code, 2);
    Deno.removeSync(d, { recursive: true });
  });
});

Deno.test("header errors qemu refuses are ERROR records", async (t) => {
  const cases: [string, number, Uint8Array, RegExp][] = [
    ["version 4", 4, new Uint8Array([0, 0, 0, 4]), /Unsupported qcow2 version 4/],
    ["cluster_bits 22", 20, new Uint8Array([0, 0, 0, 22]), /Unsupported cluster size: 2\^22/],
    ["refcount_order 7", 96, new Uint8Array([0, 0, 0, 7]), /Reference count entry width too large/],
    [
      "unknown incompatible bit",
      72,
      be64(1n << 40n),
      /Unsupported qcow2 feature\(s\): Unknown incompatible feature: 10000000000/,
    ],
  ];
  const codes: Record<string, number> = {
    "version 4": 4,
    "cluster_bits 22": 5,
    "refcount_order 7": 7,
    "unknown incompatible bit": 8,
  };
  await t.step("unknown bits named by the feature table", () => {
    const d = tmp();
    const p = `${d}/f.qcow2`;
    img("create", "-q", "-f", "qcow2", p, "1M");
    const h = header(p);
    // Walk the header extensions to the feature table; rename its first entry's bit to 40.
    let off = h.getUint32(100);
    let table = -1;
    while (h.getUint32(off) !== 0) {
      if (h.getUint32(off) === 0x6803f857) table = off + 8;
      off += 8 + ((h.getUint32(off + 4) + 7) & ~7);
    }
    assert.ok(table > 0);
    patch(p, table, new Uint8Array([0, 40]));
    patch(p, 72, be64((1n << 40n) | (1n << 41n)));
    const r = sh("qemu-img", ["info", "-f", "qcow2", p]);
    assert.equal(r.code, 1);
    const recs = hosted("info", [`qcow2:${p}`]);
    assert.equal(r.stderr, `qemu-img: Could not open '${p}': ${openErrorText(recs)}\n`);
    assert.match(r.stderr, /Unsupported qcow2 feature\(s\): .+, Unknown incompatible feature: 20000000000/);
    Deno.removeSync(d, { recursive: true });
  });
  for (const [name, off, bytes, re] of cases) {
    await t.step(name, () => {
      const d = tmp();
      const p = `${d}/e.qcow2`;
      img("create", "-q", "-f", "qcow2", p, "1M");
      patch(p, off, bytes);
      const r = sh("qemu-img", ["info", "-f", "qcow2", p]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, re);
      const recs = hosted("info", [`qcow2:${p}`]);
      assert.equal(only(recs, records.ERROR).fields.code, codes[name]);
      assert.equal(r.stderr, `qemu-img: Could not open '${p}': ${openErrorText(recs)}\n`);
      Deno.removeSync(d, { recursive: true });
    });
  }
});

Deno.test("raw inputs: partition tables, signatures and host-file holes", async (t) => {
  const mbr = (type: number, lba: number, count: number) => {
    const s = new Uint8Array(1024);
    const dv = new DataView(s.buffer);
    s[446 + 4] = type;
    dv.setUint32(446 + 8, lba, true);
    dv.setUint32(446 + 12, count, true);
    s[510] = 0x55;
    s[511] = 0xaa;
    return s;
  };
  const mk = (d: string, name: string, head: Uint8Array, size = 1 << 20) => {
    const p = `${d}/${name}`;
    const f = Deno.openSync(p, { write: true, create: true });
    f.truncateSync(size);
    f.writeSync(head);
    f.close();
    return p;
  };
  const d = tmp();
  await t.step("MBR", () => {
    const p = mk(d, "mbr.raw", mbr(0x83, 2048, 100));
    const recs = hosted("info", [`auto:${p}`]);
    assert.equal(only(recs, records.RAW_INFO).fields.partition, partitionKinds.MBR);
    assert.equal(only(recs, records.PROBE).fields.format, formats.RAW);
  });
  await t.step("GPT", () => {
    const s = mbr(0xee, 1, 2047);
    s.set(new TextEncoder().encode("EFI PART"), 512);
    const p = mk(d, "gpt.raw", s);
    assert.equal(only(hosted("info", [`auto:${p}`]), records.RAW_INFO).fields.partition, partitionKinds.GPT);
  });
  await t.step("no table", () => {
    const p = mk(d, "none.raw", new Uint8Array(512));
    const recs = hosted("info", [`auto:${p}`]);
    assert.equal(only(recs, records.RAW_INFO).fields.partition, partitionKinds.NONE);
    assert.equal(only(recs, records.PROBE).fields.signature, signatures.NONE);
  });
  await t.step("qcow2 header read as raw is flagged", () => {
    const q = `${d}/x.qcow2`;
    img("create", "-q", "-f", "qcow2", q, "1M");
    const recs = hosted("info", [`raw:${q}`]);
    assert.equal(only(recs, records.PROBE).fields.signature, signatures.QCOW2);
  });
  await t.step("other formats' magic", () => {
    const vmdk = `${d}/v.vmdk`, vpc = `${d}/v.vpc`, vhdx = `${d}/v.vhdx`;
    img("create", "-q", "-f", "vmdk", vmdk, "1M");
    img("create", "-q", "-f", "vpc", vpc, "1M");
    img("create", "-q", "-f", "vhdx", vhdx, "1M");
    const sig = (p: string) => only(hosted("info", [`auto:${p}`]), records.PROBE).fields.signature;
    // vmdk is probed as vmdk now (issue 13); read as raw, its magic is a foreign signature
    const probed = only(hosted("info", [`auto:${vmdk}`]), records.PROBE).fields;
    assert.equal(probed.format, formats.VMDK);
    assert.equal(probed.signature, signatures.NONE);
    assert.equal(only(hosted("info", [`raw:${vmdk}`]), records.PROBE).fields.signature, signatures.VMDK);
    assert.equal(sig(vpc), signatures.VPC);
    assert.equal(sig(vhdx), signatures.VHDX);
    const fixed = `${d}/f.vpc`;
    img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", fixed, "1M");
    assert.equal(sig(fixed), signatures.VPC); // footer in the last 512 bytes
  });
  await t.step("raw map with holes and a partial last sector", () => {
    const p = `${d}/holes.raw`;
    const f = Deno.openSync(p, { write: true, create: true });
    f.truncateSync((3 << 20) + 1000);
    f.seekSync(1 << 20, Deno.SeekMode.Start);
    f.writeSync(new Uint8Array(4096).fill(1));
    f.seekSync(3 << 20, Deno.SeekMode.Start);
    f.writeSync(new Uint8Array(1000).fill(2));
    f.close();
    compareMap([["raw", p]], ["-f", "raw"]);
  });
  Deno.removeSync(d, { recursive: true });
});

Deno.test("internal snapshots and persistent bitmaps", async (t) => {
  await t.step("snapshots: shared clusters, check and map", () => {
    const d = tmp();
    const p = `${d}/s.qcow2`;
    img("create", "-q", "-f", "qcow2", p, "16M");
    io(p, "write -P 1 0 1M");
    img("snapshot", "-c", "one", p);
    io(p, "write -P 2 0 64k", "write -P 3 4M 64k");
    img("snapshot", "-c", "two", p);
    io(p, "write -P 4 128k 64k");
    const recs = hosted("info", [`auto:${p}`]);
    assert.equal(only(recs, records.QCOW2_INFO).fields.nb_snapshots, 2);
    compareInfo(p);
    compareCheck(p);
    compareMap([["auto", p]]);
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("snapshot extra data too large: info refuses, check fails like qemu", () => {
    const d = tmp();
    const p = `${d}/s.qcow2`;
    img("create", "-q", "-f", "qcow2", p, "16M");
    img("snapshot", "-c", "one", p);
    const h = header(p);
    const table = Number(h.getBigUint64(64));
    const extra = new Uint8Array(4);
    new DataView(extra.buffer).setUint32(0, 4096);
    patch(p, table + 36, extra);
    const r = sh("qemu-img", ["info", p]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Too much extra metadata in snapshot table entry 0/);
    const e = only(hosted("info", [`qcow2:${p}`]), records.ERROR).fields;
    assert.deepEqual([e.code, e.a0, e.a1], [12, 3n, 0n]);
    compareCheck(p);
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("snapshot with an unaligned L1 offset: named in the diagnostics", () => {
    const d = tmp();
    const p = `${d}/s.qcow2`;
    img("create", "-q", "-f", "qcow2", p, "16M");
    io(p, "write -P 1 0 64k");
    img("snapshot", "-c", "mysnap", p);
    const table = Number(header(p).getBigUint64(64));
    patch(p, table, be64(0x12345n));
    const c = compareCheck(p);
    assert.match(c.stderr, /ERROR snapshot 1 \(mysnap\) l1_offset=0x12345/);
    Deno.removeSync(d, { recursive: true });
  });
  await t.step("persistent bitmaps are counted", () => {
    const d = tmp();
    const p = `${d}/b.qcow2`;
    img("create", "-q", "-f", "qcow2", p, "16M");
    img("bitmap", "--add", p, "b0");
    img("bitmap", "--add", "-g", "512", "--disable", p, "b1");
    io(p, "write -P 1 0 1M");
    const recs = hosted("info", [`auto:${p}`]);
    const i = only(recs, records.QCOW2_INFO).fields;
    assert.equal(i.nb_bitmaps, 2);
    assert.ok((i.flags as number) & qcow2InfoFlags.HAS_BITMAPS_EXT);
    compareInfo(p);
    compareCheck(p);
    Deno.removeSync(d, { recursive: true });
  });
});

Deno.test("preallocation modes and an external data file", async (t) => {
  for (const mode of ["metadata", "falloc", "full"]) {
    await t.step(`preallocation=${mode}`, () => {
      const d = tmp();
      const p = `${d}/p.qcow2`;
      img("create", "-q", "-f", "qcow2", "-o", `preallocation=${mode}`, p, "8M");
      io(p, "write -P 1 1M 64k", "write -z 3M 64k");
      compareInfo(p);
      compareCheck(p);
      compareMap([["auto", p]]);
      Deno.removeSync(d, { recursive: true });
    });
  }
  await t.step("data_file", () => {
    const d = tmp();
    const p = `${d}/d.qcow2`;
    img("create", "-q", "-f", "qcow2", "-o", `data_file=${d}/d.raw`, p, "8M");
    io(p, "write -P 1 0 1M", "write -z 2M 64k", "write -P 2 5M 64k");
    compareInfo(p);
    compareCheck(p);
    compareMap([["auto", p]]);
    Deno.removeSync(d, { recursive: true });
  });
});

// ---- qemu's message for each guest ERROR record (what the host must print) -----------------

/** The text after "Could not open 'FILE': " qemu prints for a records stream's ERROR record. */
function openErrorText(recs: Rec[]): string | undefined {
  const e = only(recs, records.ERROR).fields;
  const names = (k: number) =>
    recs.filter((r) => r.type === records.NAME && r.fields.kind === k).map((r) =>
      new TextDecoder().decode(nameBytes(r))
    );
  return qcow2OpenErrorText(
    { code: e.code as number, a0: e.a0 as bigint, a1: e.a1 as bigint, a2: e.a2 as bigint },
    names(nameKinds.INCOMPAT_FEATURE),
    names(nameKinds.BITMAP_NAME)[0] ?? "",
  );
}

/** qemu-img map's stderr for a BAD_L2 record (after the extents it printed). */
function mapErrorText(rec: Rec): string {
  const f = rec.fields;
  return qcow2MapErrorText({
    code: f.code as number,
    a0: f.a0 as bigint,
    a1: f.a1 as bigint,
    a2: f.a2 as bigint,
  }, "qemu-img");
}

Deno.test("mutated images: errors, check and map agree with qemu-img", () => {
  const d = tmp();
  const seeds: Uint8Array[] = [];
  const mk = (name: string, opts: string, cmds: string[]) => {
    const p = `${d}/${name}`;
    img("create", "-q", "-f", "qcow2", "-o", opts, p, "4M");
    if (cmds.length) io(p, ...cmds);
    seeds.push(Deno.readFileSync(p));
    return p;
  };
  mk("a.qcow2", "cluster_size=512", ["write -P 1 0 8k", "write -z 64k 4k", "write -P 2 1M 2k"]);
  mk("b.qcow2", "cluster_size=16k,extended_l2=on", [
    "write -P 1 0 3k",
    "write -z 32k 4k",
    "write -P 2 1M 20k",
  ]);
  mk("c.qcow2", "cluster_size=4k,compat=0.10", ["write -P 1 0 8k", "write -P 3 2M 4k"]);
  const e = mk("e.qcow2", "cluster_size=4k,refcount_bits=64", []);
  img("bitmap", "--add", e, "bm");
  img("snapshot", "-c", "s1", e);
  io(e, "write -P 1 0 8k");
  seeds.push(Deno.readFileSync(e));
  // INSTAR_MUTATION_SEED / INSTAR_MUTATION_ITERS widen the search when run by hand.
  let seed = Number(Deno.env.get("INSTAR_MUTATION_SEED") ?? 12345);
  const iterations = Number(Deno.env.get("INSTAR_MUTATION_ITERS") ?? 150);
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return Math.floor((seed / 2147483648) * n);
  };
  const p = `${d}/m.qcow2`;
  const dec = new TextDecoder();
  for (let it = 0; it < iterations; it++) {
    const b = new Uint8Array(seeds[rnd(seeds.length)]);
    const dv = new DataView(b.buffer);
    const fields = [4, 8, 16, 20, 24, 32, 36, 40, 48, 56, 60, 64, 72, 80, 88, 96, 100];
    for (let k = 0, n = 1 + rnd(3); k < n; k++) {
      const r = rnd(3);
      if (r === 2) {
        // a header field (u32 or u64 big-endian) set to a boundary value
        const o = fields[rnd(fields.length)];
        const v = [0, 1, 2, 3, 7, 9, 14, 21, 22, 104, 112, 0xffffffff, 0x80000000, 512, 65536][rnd(15)];
        if ([8, 24, 40, 48, 64, 72, 80, 88].includes(o)) {
          dv.setBigUint64(o, rnd(4) ? BigInt(v) : 1n << BigInt(rnd(64)));
        } else dv.setUint32(o, v);
      } else if (r === 1) b[rnd(Math.min(b.length, 8192))] = rnd(256);
      else {
        const o = rnd(b.length - 8) & ~7;
        dv.setBigUint64(
          o,
          [
            0n,
            1n,
            1n << 63n,
            BigInt(rnd(1 << 20)) << 9n,
            dv.getBigUint64(o) ^ (1n << BigInt(rnd(64))),
          ][rnd(5)],
        );
      }
    }
    // sometimes cut the file short (not necessarily at a sector boundary)
    Deno.writeFileSync(p, rnd(8) === 0 ? b.subarray(0, 512 + rnd(b.length - 512)) : b);
    const ctx = `iteration ${it}`;
    if (Deno.env.get("INSTAR_MUTATION_KEEP") === String(it)) Deno.copyFileSync(p, "/tmp/mutation.qcow2");
    // A mutation that gave the image a backing file makes qemu open it: the
    // host decides about backing files, so only info is compared then.
    const infoRecs = hosted("info", [`qcow2:${p}`]);
    const hasBacking = infoRecs.some((r) =>
      r.type === records.QCOW2_INFO && ((r.fields.flags as number) & qcow2InfoFlags.HAS_BACKING)
    );
    // An encrypted image: the host asks for its key-secret before check runs
    // (lib/cli/qcow2_unlock.ts), as qemu's open does; qemu-img check has none here.
    const encrypted = infoRecs.some((r) =>
      r.type === records.QCOW2_INFO && (r.fields.crypt_method as number) !== 0
    );
    // check (and open errors)
    const recs = hosted("check", [`qcow2:${p}`]);
    if (hasBacking || encrypted) {
      // nothing: see above
    } else if (recs.some((r) => r.type === records.ERROR)) {
      const q = sh("qemu-img", ["check", "-f", "qcow2", p]);
      assert.equal(q.code, 1, ctx);
      // instar-specific refusals (encryption, sizes qemu mishandles) have their own text
      const text = openErrorText(recs);
      if (text !== undefined) {
        assert.equal(q.stderr, `${checkText(recs)}qemu-img: Could not open '${p}': ${text}\n`, ctx);
      }
    } else {
      compareCheck(p);
    }
    // info (opens without BDRV_O_CHECK and with BDRV_O_NO_IO)
    const ir = hosted("info", [`qcow2:${p}`]);
    if (ir.some((r) => r.type === records.ERROR)) {
      const qi = sh("qemu-img", ["info", "-f", "qcow2", p]);
      const text = openErrorText(ir);
      // qemu-img 7.2 crashes (SIGSEGV) on a LUKS-method image without its
      // header extension; instar refuses it with qemu's I/O-open message.
      if (text !== undefined && qi.code !== 139) {
        assert.equal(qi.code, 1, `${ctx}: ${text}`);
        assert.equal(qi.stderr, `${checkText(ir)}qemu-img: Could not open '${p}': ${text}\n`, ctx);
      }
    } else {
      compareInfo(p, "qcow2");
    }
    // An encrypted image: map asks for the key-secret first (host side), as qemu-img does.
    if (hasBacking || encrypted) continue;
    // map, incl. the partial output and the corruption event when qemu fails half-way
    const q = sh("qemu-img", ["map", "-f", "qcow2", "--output=json", p]);
    const m = hosted("map", [`qcow2:${p}`], [0n, U64_MAX]);
    const err = m.find((r) => r.type === records.ERROR);
    if (err && err.fields.code !== 22) {
      assert.equal(q.code, 1, ctx);
      const text = openErrorText(m);
      if (text !== undefined) {
        assert.equal(q.stderr, `${checkText(m)}qemu-img: Could not open '${p}': ${text}\n`, ctx);
      }
    } else if (err) {
      assert.equal(q.code, 1, ctx);
      assert.equal(q.stderr, checkText(m) + mapErrorText(err), ctx);
      const lines = dec.decode(q.stdout).split("\n").filter((l) => l.startsWith("[{") || l.startsWith("{"));
      const partial = lines.map((l) => JSON.parse(l.replace(/^\[/, "").replace(/,$/, "")));
      assert.deepEqual(mapRecords(m), partial, ctx);
    } else {
      assert.equal(q.code, 0, `${ctx}: ${q.stderr}`);
      assert.equal(q.stderr, checkText(m), ctx);
      assert.deepEqual(mapRecords(m), JSON.parse(dec.decode(q.stdout)), ctx);
    }
  }
  Deno.removeSync(d, { recursive: true });
});

// The same programs built freestanding and run in the KVM guest must produce the
// same records as the hosted build (needs /dev/kvm and the embedded VMM).
const canRunVm = (() => {
  try {
    Deno.statSync("/dev/kvm");
    Deno.statSync(`${ROOT}lib/embedded/index.ts`);
    return true;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "freestanding guests in the VM match the hosted build",
  ignore: !canRunVm || !KVM,
  fn: async () => {
    const { runGuest } = await import("../lib/vmm/sandbox.ts");
    const { ops } = await import("../lib/abi/spec.ts");
    ok("make", ["-s", "-C", `${ROOT}guest`, "ops"]);
    const d = tmp();
    const ref = `${d}/ref.qcow2`, big = `${d}/big.qcow2`, ext = `${d}/ext.qcow2`, c = `${d}/c.qcow2`;
    const base = `${d}/base.qcow2`, top = `${d}/top.qcow2`, raw = `${d}/r.raw`, fa = `${d}/fa.qcow2`;
    img("create", "-q", "-f", "qcow2", "-o", "preallocation=falloc", fa, "8M");
    io(fa, "write -P 1 1M 64k");
    img("create", "-q", "-f", "qcow2", ref, "64M");
    io(ref, "write -P 0xab 0 1M", "write -P 0xcd 4M 512k", "write -z 8M 1M", "write -P 0x11 32M 64k");
    img("snapshot", "-c", "s", ref);
    img("bitmap", "--add", ref, "b");
    img("create", "-q", "-f", "qcow2", big, "1P");
    io(big, "write -P 9 512T 64k");
    img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", ext, "8M");
    io(ext, "write -P 1 4k 8k", "write -z 1M 4k");
    img("convert", "-c", "-O", "qcow2", ref, c);
    img("create", "-q", "-f", "qcow2", base, "8M");
    io(base, "write -P 1 0 2M");
    img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "8M");
    io(top, "write -P 2 1M 64k");
    const f = Deno.openSync(raw, { write: true, create: true });
    f.truncateSync(2 << 20);
    f.writeSync(new Uint8Array(4096).fill(3));
    f.close();
    const cases: [string[], number[]][] = [
      [[ref], [formats.AUTO]],
      [[big], [formats.AUTO]],
      [[ext], [formats.QCOW2]],
      [[c], [formats.AUTO]],
      [[top, base], [formats.AUTO, formats.QCOW2]],
      [[raw], [formats.RAW]],
      [[fa], [formats.QCOW2]],
    ];
    const fmtName = ["auto", "raw", "qcow2"];
    const show = (x: unknown) => JSON.stringify(x, (_k, v) => typeof v === "bigint" ? v.toString() : v);
    for (const [paths, fmts] of cases) {
      for (
        const [op, code, args] of [["info", ops.INFO, []], ["check", ops.CHECK, []], ["map", ops.MAP, [
          0n,
          U64_MAX,
        ]]] as const
      ) {
        const n = op === "map" ? paths.length : 1;
        const r = await runGuest({
          op,
          binary: Deno.readFileSync(`${ROOT}build/guest/${op}.bin`),
          opCode: code,
          inputs: paths.slice(0, n).map((path, i) => ({ path, format: fmts[i] })),
          args: [...args],
        });
        assert.equal(r.status, 0, `${op} ${paths[0]}`);
        const h = hosted(op, paths.slice(0, n).map((p, i) => `${fmtName[fmts[i]]}:${p}`), [...args]);
        assert.equal(show(r.records), show(h), `${op} ${paths[0]}`);
      }
    }
    Deno.removeSync(d, { recursive: true });
  },
});
