// The read path (guest/chain/ over qcow2/raw layer_ops, qcow2/compressed.c) through the convert
// operation with raw output: for images qemu-img/qemu-io make here, the raw
// disk it writes must hash like `qemu-img convert -O raw` of the same image,
// and stay sparse. Runs the hosted build (guest/host), an ASan/UBSan hosted
// build for hostile images, and, when KVM and the VMM are available, the
// freestanding guest in the VM.
import { KVM } from "./support/kvm.ts";
import { hostedRunGuest } from "./support/hosted_runner.ts";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { deflateRawSync } from "node:zlib";
import { decodeRecords } from "../lib/abi/records.ts";
import type { Rec } from "../lib/abi/records.ts";
import { formats, guestErrors, ops, records } from "../lib/abi/spec.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HOST = `${ROOT}build/host`;
const ASAN = `${ROOT}build/host-asan`;

function sh(cmd: string, args: string[], env?: Record<string, string>) {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", env }).outputSync();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

function ok(cmd: string, args: string[]): string {
  const r = sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return new TextDecoder().decode(r.stdout);
}

const img = (...a: string[]) => ok("qemu-img", a);
const io = (file: string, fmt: string, ...cmds: string[]) =>
  ok("qemu-io", ["-f", fmt, ...cmds.flatMap((c) => ["-c", c]), file]);

let built = false;
function build(): void {
  if (built) return;
  ok("make", ["-s", "-C", `${ROOT}guest/host`]);
  built = true;
}

let asanBuilt: boolean | undefined;
function buildAsan(): boolean {
  if (asanBuilt !== undefined) return asanBuilt;
  const r = sh("make", [
    "-s",
    "-C",
    `${ROOT}guest/host`,
    `OUT=${ASAN}`,
    "CC=clang",
    "CFLAGS=-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer",
    `${ASAN}/convert`,
  ]);
  asanBuilt = r.code === 0;
  return asanBuilt;
}

function sha(path: string): string {
  return createHash("sha256").update(Deno.readFileSync(path)).digest("hex");
}

interface Flat {
  recs: Rec[];
  errors: Rec[];
}

/**
 * convert's arguments for a whole-disk raw copy: the top layer's data-file
 * input (0 = none), raw output, qemu-img's default min_sparse (4 KiB).
 */
function rawArgs(dataInput = 0n): bigint[] {
  return [dataInput, 0n, 4096n];
}

/**
 * Raw convert writes only what is not zero into an output the host sized
 * (lib/convert/pipeline.ts): give the file the disk's length afterwards, as
 * the pipeline does before (the runners open the output truncated).
 */
function sizeOutput(out: string, size: bigint) {
  assert.ok(Deno.statSync(out).size <= Number(size), `${out} was written past the disk's end`);
  Deno.truncateSync(out, Number(size));
}

/** Runs the hosted convert to raw; inputs are "fmt:path". Exits 0 unless it crashed. */
function readRaw(
  out: string,
  inputs: string[],
  size: bigint,
  dataInput = 0n,
  bin = `${HOST}/convert`,
): Flat {
  build();
  const a: string[] = [];
  for (const x of rawArgs(dataInput)) a.push("--arg", x.toString());
  const r = sh(bin, [...a, "-o", out, ...inputs]);
  assert.equal(r.code, 0, `${bin} crashed or failed: ${r.stderr}`);
  sizeOutput(out, size);
  const recs = decodeRecords(r.stdout);
  return { recs, errors: recs.filter((x) => x.type === records.ERROR) };
}

function reference(image: string, fmt: string, out: string): boolean {
  return sh("qemu-img", ["convert", "-f", fmt, "-O", "raw", image, out]).code === 0;
}

const canRunVm = (() => {
  try {
    Deno.statSync("/dev/kvm");
    Deno.statSync(`${ROOT}build/libinstar_vmm.so`);
    Deno.statSync(`${ROOT}lib/embedded/index.ts`);
    return true;
  } catch {
    return false;
  }
})();

let guestBin: Uint8Array | undefined;
async function readRawVm(
  out: string,
  inputs: { path: string; format: number }[],
  size: bigint,
  dataInput = 0n,
) {
  // Without KVM the same program runs hosted (tests/support/kvm.ts).
  const { runGuest } = KVM ? await import("../lib/vmm/sandbox.ts") : { runGuest: hostedRunGuest };
  if (!guestBin) {
    ok("make", ["-s", "-C", `${ROOT}guest`, "ops"]);
    guestBin = Deno.readFileSync(`${ROOT}build/guest/convert.bin`);
    assert.ok(guestBin.length <= 384 * 1024, `convert.bin is ${guestBin.length} bytes`);
  }
  try {
    Deno.removeSync(out);
  } catch { /* absent */ }
  if (Deno.env.get("INSTAR_TEST_VERBOSE")) console.log(`VM convert ${inputs[0].path}`);
  const r = await runGuest({
    op: "convert",
    binary: guestBin,
    opCode: ops.CONVERT,
    inputs,
    args: rawArgs(dataInput),
    output: { path: out, cap: size },
    timeoutMs: 120000,
  });
  sizeOutput(out, size);
  return r;
}

function virtualSize(path: string): bigint {
  return BigInt(JSON.parse(img("info", "--output=json", path))["virtual-size"]);
}

interface Case {
  name: string;
  top: string;
  chain: { path: string; format: number }[];
  /** Input index of the top layer's external data file. */
  dataInput?: bigint;
  sparse?: boolean; // mostly empty: output must use few blocks
}

/** Builds every qcow2 variant the read path must handle, in dir d. */
function makeCases(d: string): Case[] {
  const cases: Case[] = [];
  const q = (p: string) => ({ path: p, format: formats.QCOW2 });
  const writes = [
    "write -P 0xa1 0 4k",
    "write -P 0xb2 1M 192k",
    "write -P 0xc3 5M 8k",
    "write -z 6M 1M",
    "write -P 0xd4 30M 64k",
  ];
  const variants: [string, string][] = [
    ["v2", "compat=0.10"],
    ["v3-512", "cluster_size=512"],
    ["v3-4k", "cluster_size=4k"],
    ["v3-64k", "cluster_size=64k"],
    ["v3-2m", "cluster_size=2M"],
    ["rc1", "refcount_bits=1"],
    ["rc16", "refcount_bits=16"],
    ["rc64", "refcount_bits=64"],
  ];
  for (const [name, opts] of variants) {
    const p = `${d}/${name}.qcow2`;
    img("create", "-q", "-f", "qcow2", "-o", opts, p, "32M");
    io(p, "qcow2", ...writes);
    cases.push({ name, top: p, chain: [q(p)], sparse: true });
  }
  // Zero clusters over data (v3 zero flag, with and without allocation).
  const z = `${d}/zero.qcow2`;
  img("create", "-q", "-f", "qcow2", z, "8M");
  io(z, "qcow2", "write -P 0x55 0 4M", "write -z 1M 1M", "write -z -u 2M 64k", "discard 3M 64k");
  cases.push({ name: "zero", top: z, chain: [q(z)] });
  // Extended L2: partial subcluster writes over a backing file with data.
  const xb = `${d}/xbase.qcow2`, x = `${d}/xl2.qcow2`;
  img("create", "-q", "-f", "qcow2", xb, "8M");
  io(xb, "qcow2", "write -P 0x11 0 8M");
  img(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "extended_l2=on,cluster_size=64k",
    "-b",
    xb,
    "-F",
    "qcow2",
    x,
    "8M",
  );
  io(x, "qcow2", "write -P 0x22 2k 2k", "write -P 0x33 70k 3k", "write -z 200k 8k", "write -P 0x44 1M 130k");
  cases.push({ name: "extended-l2", top: x, chain: [q(x), q(xb)] });
  const x2 = `${d}/xl2-alone.qcow2`;
  img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", x2, "8M");
  io(x2, "qcow2", "write -P 0x22 2k 2k", "write -z 100k 6k", "write -P 0x66 4M 33k");
  cases.push({ name: "extended-l2-alone", top: x2, chain: [q(x2)] });
  // Compressed: zlib and zstd, from a source with varied data.
  const src = `${d}/src.qcow2`;
  img("create", "-q", "-f", "qcow2", src, "16M");
  io(src, "qcow2", "write -P 0x61 0 3M", "write -P 0x62 5M 100k", "write -P 0 9M 1M", "write -P 0x63 15M 1M");
  for (const [name, extra] of [["zlib", []], ["zstd", ["-o", "compression_type=zstd"]]] as const) {
    for (const cs of ["4k", "64k", "2M"]) {
      const p = `${d}/c-${name}-${cs}.qcow2`;
      img(
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        ...extra,
        ...(cs ? ["-o", `cluster_size=${cs}`] : []),
        src,
        p,
      );
      cases.push({ name: `compressed-${name}-${cs}`, top: p, chain: [q(p)] });
    }
  }
  // Random data compresses poorly: some clusters stay uncompressed.
  const rnd = `${d}/rnd.raw`, rc = `${d}/rnd-c.qcow2`;
  const buf = new Uint8Array(1 << 20);
  crypto.getRandomValues(buf.subarray(0, 65536));
  buf.fill(0x77, 65536, 300000);
  Deno.writeFileSync(rnd, buf);
  img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", rnd, rc);
  cases.push({ name: "compressed-random", top: rc, chain: [q(rc)] });
  // Overlay over qcow2, over raw (shorter than the overlay), chain of 3.
  const b = `${d}/base.qcow2`, o = `${d}/over.qcow2`;
  img("create", "-q", "-f", "qcow2", b, "16M");
  io(b, "qcow2", "write -P 0x01 0 16M");
  img("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", o, "16M");
  io(o, "qcow2", "write -P 0x02 1M 1M", "write -z 4M 64k", "discard 8M 1M");
  cases.push({ name: "overlay-qcow2", top: o, chain: [q(o), q(b)] });
  const r = `${d}/base.raw`, orw = `${d}/over-raw.qcow2`;
  Deno.writeFileSync(r, new Uint8Array(3 * 1024 * 1024 + 1000).fill(0x5a));
  img("create", "-q", "-f", "qcow2", "-b", r, "-F", "raw", orw, "8M");
  io(orw, "qcow2", "write -P 0x03 64k 64k");
  cases.push({ name: "overlay-raw", top: orw, chain: [q(orw), { path: r, format: formats.RAW }] });
  const c1 = `${d}/c1.qcow2`, c2 = `${d}/c2.qcow2`, c3 = `${d}/c3.qcow2`;
  img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", c1, "4M");
  io(c1, "qcow2", "write -P 0x10 0 4M");
  img("create", "-q", "-f", "qcow2", "-b", c1, "-F", "qcow2", c2, "6M");
  io(c2, "qcow2", "write -P 0x20 1M 1M", "write -P 0x21 5M 4k");
  img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "-b", c2, "-F", "qcow2", c3, "8M");
  io(c3, "qcow2", "write -P 0x30 1536k 8k", "write -z 3M 4k");
  cases.push({ name: "chain-3", top: c3, chain: [q(c3), q(c2), q(c1)] });
  // External data file, raw and not.
  for (const rawFlag of ["on", "off"]) {
    const df = `${d}/data-${rawFlag}.raw`, p = `${d}/ext-${rawFlag}.qcow2`;
    img("create", "-q", "-f", "qcow2", "-o", `data_file=${df},data_file_raw=${rawFlag}`, p, "4M");
    io(p, "qcow2", "write -P 0x44 0 64k", "write -P 0x45 1M 4k", "write -z 2M 64k");
    cases.push({
      name: `data-file-raw-${rawFlag}`,
      top: p,
      chain: [q(p), { path: df, format: formats.RAW }],
      dataInput: 1n,
    });
  }
  return cases;
}

const fmtName: Record<number, string> = { [formats.RAW]: "raw", [formats.QCOW2]: "qcow2" };

Deno.test({
  name: "the read path matches qemu-img convert -O raw for every qcow2 variant",
  sanitizeResources: false,
  fn: async (t) => {
    const d = Deno.makeTempDirSync({ prefix: "instar-read-" });
    const cases = makeCases(d);
    for (const c of cases) {
      await t.step(c.name, async () => {
        const ref = `${d}/${c.name}.ref`, out = `${d}/${c.name}.out`;
        assert.ok(reference(c.top, "qcow2", ref), `qemu-img convert ${c.name}`);
        const size = virtualSize(c.top);
        const f = readRaw(out, c.chain.map((x) => `${fmtName[x.format]}:${x.path}`), size, c.dataInput);
        assert.deepEqual(f.errors, []);
        assert.equal(Deno.statSync(out).size, Deno.statSync(ref).size);
        assert.equal(sha(out), sha(ref));
        if (buildAsan()) {
          const a = readRaw(
            out,
            c.chain.map((x) => `${fmtName[x.format]}:${x.path}`),
            size,
            c.dataInput,
            `${ASAN}/convert`,
          );
          assert.deepEqual(a.errors, []);
          assert.equal(sha(out), sha(ref), "ASan build");
        }
        if (c.sparse) {
          // Only ~300 KiB was written; whole 2 MiB chunks may be stored.
          const blocks = Deno.statSync(out).blocks! * 512;
          assert.ok(blocks <= 10 * 1024 * 1024, `${c.name}: ${blocks} bytes allocated`);
          assert.ok(blocks < Deno.statSync(out).size / 2);
        }
        if (canRunVm) {
          const vout = `${d}/${c.name}.vm`;
          const r = await readRawVm(vout, c.chain, size, c.dataInput);
          assert.equal(r.status, 0, `${c.name}: VM status ${r.status} ${r.log}`);
          assert.deepEqual(r.records.filter((x) => x.type === records.ERROR), []);
          assert.equal(sha(vout), sha(ref));
          if (c.sparse) assert.ok(Deno.statSync(vout).blocks! * 512 <= 10 * 1024 * 1024);
          Deno.removeSync(vout);
        }
        Deno.removeSync(out);
        Deno.removeSync(ref);
      });
    }
    Deno.removeSync(d, { recursive: true });
  },
});

// ---- hostile compressed clusters ---------------------------------------------------------------

const be64 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(o);
const setBe64 = (b: Uint8Array, o: number, v: bigint) =>
  new DataView(b.buffer, b.byteOffset).setBigUint64(o, v);

/** File offset of L2 entry `i` of the first L2 table (test images only). */
function l2EntryOffset(file: Uint8Array, i: number): number {
  const l1 = Number(be64(file, 40));
  const l2 = Number(be64(file, l1) & 0x00fffffffffffe00n);
  assert.ok(l2 > 0);
  return l2 + i * 8;
}

const CLUSTER_BITS = 16n;
const CSIZE_SHIFT = 62n - (CLUSTER_BITS - 8n);
const CSIZE_MASK = (1n << (CLUSTER_BITS - 8n)) - 1n;
const COMPRESSED = 1n << 62n;

/** A compressed descriptor for `sectors` sectors at `off`. */
const desc = (off: bigint, sectors: bigint) => COMPRESSED | ((sectors - 1n) << CSIZE_SHIFT) | off;

/** Appends payload at a 512-aligned end of file; returns its offset. */
function append(file: Uint8Array, payload: Uint8Array): [Uint8Array, bigint] {
  const at = Math.ceil(file.length / 512) * 512;
  const out = new Uint8Array(at + Math.ceil(payload.length / 512) * 512);
  out.set(file);
  out.set(payload, at);
  return [out, BigInt(at)];
}

Deno.test({
  name: "hostile compressed clusters end in an ERROR record or qemu's bytes, never a crash",
  sanitizeResources: false,
  fn: async (t) => {
    const d = Deno.makeTempDirSync({ prefix: "instar-read-hostile-" });
    const src = `${d}/src.qcow2`;
    img("create", "-q", "-f", "qcow2", src, "1M");
    io(src, "qcow2", "write -P 0x41 0 64k", "write -P 0x42 64k 64k", "write -P 0x43 128k 64k");
    const mk = (name: string, type: string, edit: (f: Uint8Array) => Uint8Array) => {
      const p = `${d}/${name}-${type}.qcow2`;
      const extra = type === "zstd" ? ["-o", "compression_type=zstd"] : [];
      img("convert", "-q", "-c", "-O", "qcow2", ...extra, src, p);
      Deno.writeFileSync(p, edit(Deno.readFileSync(p)));
      return p;
    };
    const hostile: [string, (f: Uint8Array) => Uint8Array][] = [
      ["max-size", (f) => {
        const o = l2EntryOffset(f, 0);
        setBe64(f, o, be64(f, o) | (CSIZE_MASK << CSIZE_SHIFT));
        return f;
      }],
      ["max-size-at-eof", (f) => {
        const o = l2EntryOffset(f, 1);
        const [g, at] = append(f, new Uint8Array(512).fill(0xee));
        setBe64(g, o, desc(at - 300n, CSIZE_MASK + 1n));
        return g;
      }],
      ["expands-past-cluster", (f) => {
        const big = new Uint8Array(200 * 1024);
        for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
        const z = deflateRawSync(big, { windowBits: 12 });
        const [g, at] = append(f, z);
        setBe64(g, l2EntryOffset(g, 0), desc(at, BigInt(Math.ceil(z.length / 512))));
        return g;
      }],
      ["frame-past-cluster", (f) => {
        // A zstd frame (zlib images: not a deflate stream) that decodes to
        // 200 KiB, more than the 64 KiB cluster.
        const big = `${d}/big.bin`;
        const data = new Uint8Array(200 * 1024);
        for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
        Deno.writeFileSync(big, data);
        ok("zstd", ["-q", "-f", big, "-o", `${big}.zst`]);
        const [g, at] = append(f, Deno.readFileSync(`${big}.zst`));
        setBe64(g, l2EntryOffset(g, 0), desc(at, BigInt(Math.ceil(Deno.statSync(`${big}.zst`).size / 512))));
        return g;
      }],
      ["ends-early", (f) => {
        const z = deflateRawSync(new Uint8Array(1000).fill(3), { windowBits: 12 });
        const [g, at] = append(f, z);
        setBe64(g, l2EntryOffset(g, 0), desc(at, 1n));
        return g;
      }],
      ["garbage", (f) => {
        const junk = new Uint8Array(4096);
        crypto.getRandomValues(junk);
        const [g, at] = append(f, junk);
        setBe64(g, l2EntryOffset(g, 2), desc(at, 8n));
        return g;
      }],
      ["overlapping", (f) => {
        const o = l2EntryOffset(f, 0);
        const e0 = be64(f, o);
        // Cluster 1 starts 100 bytes into cluster 0's stream; cluster 2 is cluster 0 again.
        setBe64(f, o + 8, desc((e0 & ((1n << CSIZE_SHIFT) - 1n)) + 100n, 4n));
        setBe64(f, o + 16, e0);
        return f;
      }],
      ["shared-range", (f) => {
        // Two clusters share one compressed stream: both read the same bytes.
        const o = l2EntryOffset(f, 0);
        setBe64(f, o + 16, be64(f, o));
        return f;
      }],
      ["offset-past-eof", (f) => {
        setBe64(f, l2EntryOffset(f, 0), desc(1n << 40n, 2n));
        return f;
      }],
    ];
    const asan = buildAsan();
    for (const type of ["zlib", "zstd"]) {
      for (const [name, edit] of hostile) {
        await t.step(`${name} (${type})`, async () => {
          const p = mk(name, type, edit);
          const ref = `${d}/ref.raw`, out = `${d}/out.raw`;
          const qemuOk = reference(p, "qcow2", ref);
          if (Deno.env.get("INSTAR_TEST_VERBOSE")) {
            console.log(`${name} ${type}: qemu-img ${qemuOk ? "reads it" : "fails"}`);
          }
          const bins = [`${HOST}/convert`, ...(asan ? [`${ASAN}/convert`] : [])];
          for (const bin of bins) {
            const f = readRaw(out, [`qcow2:${p}`], 1n << 20n, 0n, bin);
            if (qemuOk) {
              assert.deepEqual(f.errors, [], `${bin}: qemu-img reads this image`);
              assert.equal(sha(out), sha(ref));
            } else {
              assert.equal(f.errors.length, 1, `${bin}: qemu-img refuses this image`);
              assert.equal(f.errors[0].fields.code, guestErrors.IO);
            }
          }
          if (canRunVm) {
            const r = await readRawVm(`${d}/vm.raw`, [{ path: p, format: formats.QCOW2 }], 1n << 20n);
            assert.equal(r.status, 0, `VM status ${r.status}`);
            const errs = r.records.filter((x) => x.type === records.ERROR);
            if (qemuOk) {
              assert.deepEqual(errs, []);
              assert.equal(sha(`${d}/vm.raw`), sha(ref));
            } else {
              assert.equal(errs.length, 1);
            }
          }
        });
      }
    }
    assert.ok(asan, "clang ASan/UBSan hosted build failed");
    Deno.removeSync(d, { recursive: true });
  },
});
