// The vhdx guest parser (guest/vhdx/) run as hosted executables and compared
// with qemu-img 7.2: IMAGE_INFO against `qemu-img info`, CHECK against
// `qemu-img check`, hostile images (patched here) against qemu-img's exact
// stderr and exit code, and the layer's block_status against the bytes
// `qemu-img convert -O raw` reads.
import assert from "node:assert/strict";
import { decodeRecords } from "../lib/abi/records.ts";
import type { Rec } from "../lib/abi/records.ts";
import { formats, guestErrors, imageSubformats, records } from "../lib/abi/spec.ts";
import { formatCheckMessage } from "../lib/abi/check_messages.ts";
import { storeCrc32c } from "../lib/formats/vhdx/crc32c.ts";
import { vhdxErrors, vhdxErrorText } from "../lib/formats/vhdx/errors.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HOST = `${ROOT}build/host`;
const MiB = 1024 * 1024;

function sh(cmd: string, args: string[]): { code: number; stdout: Uint8Array; stderr: string } {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

function ok(cmd: string, args: string[]): string {
  const r = sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return new TextDecoder().decode(r.stdout);
}

let built = false;
const READER = `${ROOT}build/host/vhdx_read`;
function build(): void {
  if (built) return;
  ok("make", ["-s", "-C", `${ROOT}guest/host`]);
  const g = `${ROOT}guest`;
  ok("cc", [
    "-std=gnu11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-DINSTAR_HOSTED",
    "-DHOST_OP=OP_CONVERT",
    `-I${g}/include`,
    `-I${g}`,
    "-o",
    READER,
    `${ROOT}tests/vhdx_read_main.c`,
    `${g}/vhdx/layer.c`,
    `${g}/vhdx/vhdx.c`,
    `${g}/vhdx/log.c`,
    `${g}/vhdx/crc32c.c`,
    `${g}/host/rt_host.c`,
    `${g}/rt/common.c`,
  ]);
  built = true;
}

interface Run {
  ok: boolean;
  recs: Rec[];
  ms: number;
}

/** Runs a hosted op on one vhdx input (a guest error is a result, not a failure). */
function hosted(op: string, path: string): Run {
  build();
  const t0 = performance.now();
  const r = sh(`${HOST}/${op}`, [`vhdx:${path}`]);
  const ms = performance.now() - t0;
  const recs = decodeRecords(r.stdout);
  return { ok: r.code === 0 && !recs.some((x) => x.type === records.ERROR), recs, ms };
}

function tmp(): string {
  return Deno.makeTempDirSync({ prefix: "instar-vhdx-" });
}

const img = (...a: string[]) => ok("qemu-img", a);
const io = (file: string, ...cmds: string[]) =>
  ok("qemu-io", ["-f", "vhdx", ...cmds.flatMap((c) => ["-c", c]), file]);

/** CHECK_MSG lines as qemu-img prints them, in order. */
function msgText(recs: Rec[]): string {
  return recs.filter((r) => r.type === records.CHECK_MSG)
    .map((r) => formatCheckMessage(r.fields.code as number, r.fields.a as bigint[], "qemu-img")).join("");
}

/** What qemu-img info would print on stderr for a failed guest open. */
function openFailureText(run: Run, path: string): string {
  const errs = run.recs.filter((r) => r.type === records.ERROR);
  assert.equal(errs.length, 1, "one ERROR record");
  const e = errs[0].fields;
  assert.equal(e.code, guestErrors.FORMAT);
  return msgText(run.recs) +
    `qemu-img: Could not open '${path}': ${
      vhdxErrorText(e.a0 as bigint, e.a1 as bigint, e.a2 as bigint, path)
    }\n`;
}

function compareInfo(path: string, subformat: number, logSize?: number): void {
  const q = JSON.parse(img("info", "--output=json", "-f", "vhdx", path));
  const run = hosted("info", path);
  assert.ok(run.ok, JSON.stringify(run.recs, (_k, v) => typeof v === "bigint" ? v.toString() : v));
  const recs = run.recs.filter((r) => r.type === records.IMAGE_INFO);
  assert.equal(recs.length, 1);
  const i = recs[0].fields;
  assert.equal(i.format, formats.VHDX);
  assert.equal(i.virtual_size, BigInt(q["virtual-size"]), "virtual-size");
  assert.equal(i.cluster_size, BigInt(q["cluster-size"]), "cluster-size");
  assert.equal(q["dirty-flag"], false);
  assert.equal(i.flags, 0);
  assert.equal(i.subformat, subformat);
  const extra = i.extra as bigint[];
  if (logSize !== undefined) assert.equal(extra[0], BigInt(logSize), "log size");
  assert.equal(extra[1], 512n | (512n << 32n), "logical | physical sector size (qemu writes 512 for both)");
}

function compareCheck(path: string): void {
  const human = sh("qemu-img", ["check", "-f", "vhdx", path]);
  const js = JSON.parse(
    new TextDecoder().decode(sh("qemu-img", ["check", "-f", "vhdx", "--output=json", path]).stdout),
  );
  const run = hosted("check", path);
  assert.ok(run.ok);
  const c = run.recs.filter((r) => r.type === records.CHECK);
  assert.equal(c.length, 1);
  const f = c[0].fields;
  assert.equal(msgText(run.recs), human.stderr, "check diagnostics");
  assert.equal(f.corruptions, BigInt(js["corruptions"] ?? 0), "corruptions");
  assert.equal(f.corruptions_fixed, BigInt(js["corruptions-fixed"] ?? 0));
  assert.equal(f.check_errors, BigInt(js["check-errors"]));
  assert.equal(f.leaks, 0n);
  assert.equal(f.image_end_offset, 0n);
  assert.equal(f.total_clusters, 0n);
  assert.equal(human.code, f.corruptions ? 2 : 0);
}

/** Reads the disk through vhdx_layer_ops (tests/vhdx_read_main.c) and compares
 * with qemu-img convert -O raw; `cap` splits the block_status requests. */
function compareRead(dir: string, path: string, cap = 0): void {
  build();
  const mine = `${dir}/mine.raw`, ref = `${dir}/ref.raw`;
  try {
    Deno.removeSync(mine);
  } catch { /* absent */ }
  const r = sh(READER, ["--arg", String(cap), "-o", mine, `vhdx:${path}`]);
  const recs = decodeRecords(r.stdout);
  assert.ok(
    r.code === 0 && recs.length === 0,
    r.stderr + JSON.stringify(recs, (_k, v) => typeof v === "bigint" ? v.toString() : v),
  );
  img("convert", "-f", "vhdx", "-O", "raw", path, ref);
  const size = Deno.statSync(ref).size;
  Deno.truncateSync(mine, size);
  assert.equal(
    sh("cmp", [mine, ref]).code,
    0,
    `${path}: bytes read through the layer differ from qemu-img convert`,
  );
}

const CASES: { name: string; make: (dir: string) => string; sub: number; log?: number }[] = [
  {
    name: "dynamic, 1 MiB blocks, data and zero writes",
    make: (d) => {
      const p = `${d}/a.vhdx`;
      img("create", "-f", "vhdx", "-o", "block_size=1M", p, "64M");
      io(
        p,
        "write -P 0xab 0 1M",
        "write -P 0xcd 3M 512k",
        "write -z 8M 2M",
        "write -P 0x11 33M 64k",
        "write -P 0x22 63M 1M",
      );
      return p;
    },
    sub: imageSubformats.DYNAMIC,
    log: MiB,
  },
  {
    name: "dynamic, 8 MiB blocks, log_size 2M",
    make: (d) => {
      const p = `${d}/b.vhdx`;
      img("create", "-f", "vhdx", "-o", "block_size=8M,log_size=2M", p, "100M");
      io(p, "write -P 0x5a 9M 3M", "write -z 40M 8M", "write -P 0x01 99M 512");
      return p;
    },
    sub: imageSubformats.DYNAMIC,
    log: 2 * MiB,
  },
  {
    name: "dynamic, 32 MiB blocks, unaligned size",
    make: (d) => {
      const p = `${d}/c.vhdx`;
      img("create", "-f", "vhdx", "-o", "block_size=32M", p, "100001k");
      io(p, "write -P 0x77 31M 2M", "write -P 0x78 90M 4k");
      return p;
    },
    sub: imageSubformats.DYNAMIC,
  },
  {
    name: "dynamic, 256 MiB blocks",
    make: (d) => {
      const p = `${d}/e.vhdx`;
      img("create", "-f", "vhdx", "-o", "block_size=256M", p, "300M");
      io(p, "write -P 0x99 255M 2M");
      return p;
    },
    sub: imageSubformats.DYNAMIC,
  },
  {
    name: "fixed",
    make: (d) => {
      const p = `${d}/f.vhdx`;
      img("create", "-f", "vhdx", "-o", "subformat=fixed,block_size=1M", p, "20M");
      io(p, "write -P 0x42 5M 1M");
      return p;
    },
    sub: imageSubformats.FIXED,
  },
  {
    name: "convert -O vhdx from raw",
    make: (d) => {
      const raw = `${d}/src.raw`;
      img("create", "-f", "raw", raw, "48M");
      ok("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 1M 5M", "-c", "write -P 0x3d 40M 64k", raw]);
      const p = `${d}/g.vhdx`;
      img("convert", "-f", "raw", "-O", "vhdx", raw, p);
      return p;
    },
    sub: imageSubformats.DYNAMIC,
  },
];

for (const c of CASES) {
  Deno.test(`vhdx: ${c.name}: info, check and reads match qemu-img`, () => {
    const dir = tmp();
    try {
      const p = c.make(dir);
      compareInfo(p, c.sub, c.log);
      compareCheck(p);
      compareRead(dir, p);
      compareRead(dir, p, 300000); // requests that start inside blocks
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("vhdx: 64 TiB dynamic image: info and check are fast", () => {
  const dir = tmp();
  try {
    const p = `${dir}/big.vhdx`;
    img("create", "-f", "vhdx", p, "64T");
    io(p, "write -P 0x10 0 1M", "write -P 0x11 63T 1M");
    compareInfo(p, imageSubformats.DYNAMIC);
    compareCheck(p);
    assert.ok(hosted("info", p).ms < 2000);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// ---- hostile images ----------------------------------------------------------------------------

const H1 = 0x10000, H2 = 0x20000, RT = 0x30000;
const BAT_GUID = "6677c22d23f600429d64115e9bfd4a08";

class Image {
  b: Uint8Array;
  dv: DataView;
  constructor(path: string) {
    this.b = Deno.readFileSync(path);
    this.dv = new DataView(this.b.buffer);
  }
  headers(): void {
    storeCrc32c(this.b.subarray(H1, H1 + 4096), 4);
    storeCrc32c(this.b.subarray(H2, H2 + 4096), 4);
  }
  regionTable(): void {
    storeCrc32c(this.b.subarray(RT, RT + 0x10000), 4);
  }
  /** Byte offset of region-table entry i. */
  region(i: number): number {
    return RT + 16 + 32 * i;
  }
  batRegion(): { entry: number; offset: number; length: number } {
    for (let i = 0; i < this.dv.getUint32(RT + 8, true); i++) {
      const e = this.region(i);
      const hex = [...this.b.subarray(e, e + 16)].map((x) => x.toString(16).padStart(2, "0")).join("");
      if (hex === BAT_GUID) {
        return {
          entry: e,
          offset: Number(this.dv.getBigUint64(e + 16, true)),
          length: this.dv.getUint32(e + 24, true),
        };
      }
    }
    throw new Error("no BAT region");
  }
  metadataOffset(): number {
    const bat = this.batRegion();
    for (let i = 0; i < 2; i++) {
      if (this.region(i) !== bat.entry) return Number(this.dv.getBigUint64(this.region(i) + 16, true));
    }
    throw new Error("no metadata");
  }
  save(path: string): string {
    Deno.writeFileSync(path, this.b);
    return path;
  }
}

const FILE_PARAMS = "3767a1ca36fa434db3b633f0aa44e76b";
const VIRTUAL_SIZE = "2442a52f1bcd7648b2115dbed83bf4b8";
const LOGICAL_SECTOR = "1dbf41816fa90947ba47f233a8faab5f";

/** Rewrites the metadata item with GUID `guid` (hex as stored) in place. */
function setMetadataItem(im: Image, guid: string, f: (dv: DataView, at: number) => void): void {
  const m = im.metadataOffset();
  for (let i = 0; i < im.dv.getUint16(m + 10, true); i++) {
    const e = m + 32 + 32 * i;
    const hex = [...im.b.subarray(e, e + 16)].map((x) => x.toString(16).padStart(2, "0")).join("");
    if (hex === guid) return f(im.dv, m + im.dv.getUint32(e + 16, true));
  }
  throw new Error(`no metadata item ${guid}`);
}

/** Appends a parent locator metadata entry (type VHDX, no key/value pairs). */
function addParentLocator(im: Image): void {
  const m = im.metadataOffset();
  const n = im.dv.getUint16(m + 10, true);
  const e = m + 32 + 32 * n;
  const guid = [
    0x2d,
    0x5f,
    0xd3,
    0xa8,
    0x0b,
    0xb3,
    0x4d,
    0x45,
    0xab,
    0xf7,
    0xd3,
    0xd8,
    0x48,
    0x34,
    0xab,
    0x0c,
  ];
  im.b.set(guid, e);
  im.dv.setUint32(e + 16, 0x20000, true);
  im.dv.setUint32(e + 20, 20, true);
  im.dv.setUint32(e + 24, 4 | 2, true); // required, virtual-disk metadata
  im.dv.setUint16(m + 10, n + 1, true);
}

function setLogGuid(im: Image): void {
  for (const h of [H1, H2]) im.b.fill(0x42, h + 48, h + 64);
  im.headers();
}

/** A log entry at the log's start: one sector, `ok` = valid CRC. */
function logEntry(im: Image, opts: { crcOk: boolean; length?: number }): void {
  setLogGuid(im);
  const logOff = Number(im.dv.getBigUint64(H1 + 72, true));
  const e = im.b.subarray(logOff, logOff + 4096);
  e.fill(0);
  e.set(new TextEncoder().encode("loge"), 0);
  const dv = new DataView(e.buffer, e.byteOffset, 4096);
  dv.setUint32(8, opts.length ?? 4096, true);
  dv.setBigUint64(16, 1n, true);
  e.fill(0x42, 32, 48);
  dv.setBigUint64(48, BigInt(im.b.length), true);
  dv.setBigUint64(56, BigInt(im.b.length), true);
  storeCrc32c(e, 4);
  if (!opts.crcOk) e[4] ^= 1;
}

/** A log entry with descriptors ("desc" ones get a data sector) written at
 * `pos` inside the log, wrapping at its end as qemu's circular reader does. */
function logEntryAt(
  im: Image,
  pos: number,
  seq: bigint,
  descs: { sig: string; zeroLen?: bigint; off: bigint; seq?: bigint }[],
) {
  setLogGuid(im);
  const logOff = Number(im.dv.getBigUint64(H1 + 72, true));
  const logLen = im.dv.getUint32(H1 + 68, true);
  const dc = descs.length + 2;
  const ds = Math.floor(dc / 128) + (dc % 128 ? 1 : 0);
  const nData = descs.filter((d) => d.sig === "desc").length;
  const e = new Uint8Array(4096 * (ds + nData));
  const dv = new DataView(e.buffer);
  e.set(new TextEncoder().encode("loge"), 0);
  dv.setUint32(8, e.length, true);
  dv.setBigUint64(16, seq, true);
  dv.setUint32(24, descs.length, true);
  e.fill(0x42, 32, 48);
  dv.setBigUint64(48, BigInt(im.b.length), true);
  dv.setBigUint64(56, BigInt(im.b.length), true);
  let data = ds;
  descs.forEach((d, i) => {
    const at = 64 + 32 * i;
    e.set(new TextEncoder().encode(d.sig), at);
    dv.setBigUint64(at + 8, d.zeroLen ?? 0n, true);
    dv.setBigUint64(at + 16, d.off, true);
    dv.setBigUint64(at + 24, d.seq ?? seq, true);
    if (d.sig === "desc") {
      e.set(new TextEncoder().encode("data"), 4096 * data);
      dv.setUint32(4096 * data + 4092, Number(seq), true);
      data++;
    }
  });
  storeCrc32c(e, 4);
  for (let k = 0; k < e.length; k += 4096) {
    const o = logOff + ((pos + k) % logLen);
    im.b.set(e.subarray(k, k + 4096), o);
  }
}

const HOSTILE: { name: string; patch: (im: Image) => void; expect: number }[] = [
  { name: "not vhdxfile", patch: (im) => im.b[0] = 0x58, expect: vhdxErrors.INVAL },
  { name: "both headers bad", patch: (im) => (im.b[H1] ^= 1, im.b[H2] ^= 1), expect: vhdxErrors.NO_HEADER },
  {
    name: "equal sequence numbers, different headers",
    patch: (im) => {
      im.dv.setBigUint64(H1 + 8, 7n, true);
      im.dv.setBigUint64(H2 + 8, 7n, true);
      im.b[H2 + 20] ^= 1;
      im.headers();
    },
    expect: vhdxErrors.NO_HEADER,
  },
  { name: "region table CRC mismatch", patch: (im) => im.b[RT + 0x100] ^= 1, expect: vhdxErrors.INVAL },
  {
    name: "region table entry count 2048",
    patch: (im) => (im.dv.setUint32(RT + 8, 2048, true), im.regionTable()),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "metadata region overlaps the BAT",
    patch: (im) => {
      const bat = im.batRegion();
      const other = bat.entry === im.region(0) ? im.region(1) : im.region(0);
      im.dv.setBigUint64(other + 16, BigInt(bat.offset + 4096), true);
      im.regionTable();
    },
    expect: vhdxErrors.INVAL,
  },
  {
    name: "BAT region overlaps the log",
    patch: (im) => {
      const bat = im.batRegion();
      im.dv.setBigUint64(bat.entry + 16, im.dv.getBigUint64(H1 + 72, true), true);
      im.regionTable();
    },
    expect: vhdxErrors.INVAL,
  },
  {
    name: "unknown required region",
    patch: (im) => {
      im.dv.setUint32(RT + 8, 3, true);
      const e = im.region(2);
      im.b.fill(0x11, e, e + 16);
      im.dv.setBigUint64(e + 16, BigInt(40 * MiB), true);
      im.dv.setUint32(e + 24, MiB, true);
      im.dv.setUint32(e + 28, 1, true);
      im.regionTable();
    },
    expect: vhdxErrors.NOTSUP,
  },
  {
    name: "huge metadata entry count",
    patch: (im) => im.dv.setUint16(im.metadataOffset() + 10, 0xffff, true),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "BAT region 4 GiB long",
    patch: (im) => {
      const bat = im.batRegion();
      im.dv.setBigUint64(bat.entry + 16, BigInt(64 * MiB), true);
      im.dv.setUint32(bat.entry + 24, 0xfff00000, true);
      im.regionTable();
    },
    expect: vhdxErrors.IO,
  },
  {
    name: "BAT region too short for the disk",
    patch: (im) => (im.dv.setUint32(im.batRegion().entry + 24, 8, true), im.regionTable()),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "BAT entry past EOF",
    patch: (im) => im.dv.setBigUint64(im.batRegion().offset, BigInt(100 * MiB) | 6n, true),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "BAT entry offset overflow",
    patch: (im) => im.dv.setBigUint64(im.batRegion().offset + 8, 0xfffffffffff00006n, true),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "BAT entry on the metadata region",
    patch: (im) => im.dv.setBigUint64(im.batRegion().offset, BigInt(im.metadataOffset()) | 6n, true),
    expect: vhdxErrors.INVAL,
  },
  { name: "log needing replay", patch: (im) => logEntry(im, { crcOk: true }), expect: vhdxErrors.LOG_REPLAY },
  {
    name: "log entry with a data descriptor, wrapping the log's end",
    patch: (im) => logEntryAt(im, MiB - 4096, 3n, [{ sig: "desc", off: 300n * 4096n }]),
    expect: vhdxErrors.LOG_REPLAY,
  },
  {
    name: "log sequence 1, 2 then 7",
    patch: (im) => (logEntryAt(im, 0, 1n, []), logEntryAt(im, 4096, 2n, []), logEntryAt(im, 8192, 7n, [])),
    expect: vhdxErrors.LOG_REPLAY,
  },
  {
    name: "log entry with a misaligned descriptor",
    patch: (im) => logEntryAt(im, 0, 1n, [{ sig: "desc", off: 4097n }]),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "log zero descriptor of a length not a multiple of 4 KiB",
    patch: (im) => logEntryAt(im, 0, 5n, [{ sig: "zero", zeroLen: 100n, off: 300n * 4096n }]),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "log descriptor with another sequence number",
    patch: (im) => logEntryAt(im, 0, 5n, [{ sig: "zero", zeroLen: 8192n, off: 300n * 4096n, seq: 6n }]),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "virtual size 2^63 + 256 MiB with one BAT entry",
    patch: (im) => {
      setMetadataItem(im, FILE_PARAMS, (dv, at) => dv.setUint32(at, 256 * MiB, true));
      setMetadataItem(
        im,
        VIRTUAL_SIZE,
        (dv, at) => dv.setBigUint64(at, (1n << 63n) + BigInt(256 * MiB), true),
      );
      im.dv.setBigUint64(im.batRegion().offset, 0n, true); // no data block to run past EOF
    },
    expect: vhdxErrors.TOO_LARGE,
  },
  {
    name: "virtual size 0",
    patch: (im) => setMetadataItem(im, VIRTUAL_SIZE, (dv, at) => dv.setBigUint64(at, 0n, true)),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "has_parent without a parent locator",
    patch: (im) => setMetadataItem(im, FILE_PARAMS, (dv, at) => dv.setUint32(at + 4, 2, true)),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "differencing: has_parent and a parent locator",
    patch: (im) => {
      addParentLocator(im);
      setMetadataItem(im, FILE_PARAMS, (dv, at) => dv.setUint32(at + 4, 2, true));
    },
    expect: vhdxErrors.NOTSUP,
  },
  {
    name: "a parent locator without has_parent",
    patch: (im) => addParentLocator(im),
    expect: vhdxErrors.NOTSUP,
  },
  {
    name: "logical sector size 4096",
    patch: (im) => setMetadataItem(im, LOGICAL_SECTOR, (dv, at) => dv.setUint32(at, 4096, true)),
    expect: vhdxErrors.NOTSUP,
  },
  {
    name: "block size 3 MiB",
    patch: (im) => setMetadataItem(im, FILE_PARAMS, (dv, at) => dv.setUint32(at, 3 * MiB, true)),
    expect: vhdxErrors.INVAL,
  },
  {
    name: "log version 1",
    patch: (im) => (im.dv.setUint16(H1 + 64, 1, true), im.dv.setUint16(H2 + 64, 1, true), im.headers()),
    expect: vhdxErrors.INVAL,
  },
];

Deno.test("vhdx: hostile images fail as qemu-img 7.2 fails, fast", () => {
  const dir = tmp();
  try {
    const base = `${dir}/base.vhdx`;
    // 8 MiB file for a 64 MiB disk with 8 MiB blocks; data in block 0.
    img("create", "-f", "vhdx", base, "64M");
    io(base, "write -P 0x61 0 4k");
    for (const h of HOSTILE) {
      const im = new Image(base);
      h.patch(im);
      const p = im.save(`${dir}/h.vhdx`);
      const q = sh("qemu-img", ["info", "-f", "vhdx", p]);
      const run = hosted("info", p);
      assert.equal(q.code, 1, `${h.name}: qemu-img info should fail`);
      assert.ok(!run.ok, `${h.name}: the guest should fail`);
      const e = run.recs.find((r) => r.type === records.ERROR)!;
      assert.equal(e.fields.a0, BigInt(h.expect), `${h.name}: error class`);
      assert.equal(openFailureText(run, p), q.stderr, h.name);
      assert.ok(run.ms < 2000, `${h.name}: ${run.ms} ms`);
      // check opens the same way (no BAT check at open: that is check's own work)
      const qc = sh("qemu-img", ["check", "-f", "vhdx", p]);
      const rc = hosted("check", p);
      if (qc.code === 1) {
        assert.ok(!rc.ok, `${h.name}: check should fail to open`);
        assert.equal(openFailureText(rc, p), qc.stderr, `${h.name} (check)`);
      } else {
        compareCheck(p);
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vhdx: accepted oddities open as in qemu-img", () => {
  const dir = tmp();
  try {
    const base = `${dir}/base.vhdx`;
    img("create", "-f", "vhdx", base, "64M");
    const variants: [string, (im: Image) => void][] = [
      ["header 1 corrupt", (im) => im.b[H1 + 0x100] ^= 1],
      ["identical headers with equal sequence numbers", (im) => {
        im.b.copyWithin(H2, H1, H1 + 4096);
      }],
      ["log entry with a bad CRC", (im) => logEntry(im, { crcOk: false })],
      ["log GUID set, log empty", (im) => setLogGuid(im)],
      ["BAT states 4 and 7 (read fails, open works)", (im) => {
        const bat = im.batRegion();
        im.dv.setBigUint64(bat.offset, 4n, true);
        im.dv.setBigUint64(bat.offset + 8, 7n, true);
      }],
    ];
    for (const [name, patch] of variants) {
      const im = new Image(base);
      patch(im);
      const p = im.save(`${dir}/v.vhdx`);
      compareInfo(p, imageSubformats.DYNAMIC);
      compareCheck(p);
      void name;
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vhdx: a log search qemu never finishes is refused quickly", () => {
  const dir = tmp();
  try {
    const base = `${dir}/base.vhdx`;
    img("create", "-f", "vhdx", base, "64M");
    const im = new Image(base);
    logEntry(im, { crcOk: false, length: MiB }); // one entry as long as the whole log
    const p = im.save(`${dir}/loop.vhdx`);
    const run = hosted("info", p);
    assert.ok(!run.ok);
    const e = run.recs.find((r) => r.type === records.ERROR)!;
    assert.equal(e.fields.a0, BigInt(vhdxErrors.LOG_LOOP));
    assert.ok(run.ms < 2000);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vhdx: reads of BAT states qemu fails on are errors", () => {
  const dir = tmp();
  try {
    const base = `${dir}/base.vhdx`;
    img("create", "-f", "vhdx", base, "64M");
    const im = new Image(base);
    im.dv.setBigUint64(im.batRegion().offset + 8, 7n, true); // block 1: PARTIALLY_PRESENT
    const p = im.save(`${dir}/p.vhdx`);
    assert.notEqual(sh("qemu-img", ["convert", "-f", "vhdx", "-O", "raw", p, `${dir}/x.raw`]).code, 0);
    build();
    const r = sh(READER, ["-o", `${dir}/mine.raw`, `vhdx:${p}`]);
    const e = decodeRecords(r.stdout).find((x) => x.type === records.ERROR)!;
    assert.equal(e.fields.a0, BigInt(vhdxErrors.READ_STATE));
    assert.equal(e.fields.a1, 8n * BigInt(MiB));
    assert.equal(e.fields.a2, 7n);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vhdx: info and check in the KVM guest agree with the hosted build", async () => {
  const { runGuest, SandboxError } = await import("../lib/vmm/sandbox.ts");
  const { ops, runStatus } = await import("../lib/abi/spec.ts");
  try {
    await runGuest({
      op: "info",
      opCode: ops.INFO,
      inputs: [{ path: `${ROOT}README.md`, format: formats.RAW }],
    });
  } catch (e) {
    if (e instanceof SandboxError && e.status === runStatus.SETUP_ERROR) {
      console.log(`skipped: no KVM guest on this machine right now (${e.message})`);
      return;
    }
    throw e;
  }
  const dir = tmp();
  try {
    const p = `${dir}/vm.vhdx`;
    img("create", "-f", "vhdx", "-o", "block_size=1M", p, "40M");
    io(p, "write -P 0x5 2M 1M");
    const bad = new Image(p);
    bad.dv.setBigUint64(bad.batRegion().offset, BigInt(100 * MiB) | 6n, true);
    const q = bad.save(`${dir}/bad.vhdx`);
    const big = `${dir}/big.vhdx`;
    img("create", "-f", "vhdx", big, "64T");
    for (const path of [p, q, big]) {
      for (const [op, opCode] of [["info", ops.INFO], ["check", ops.CHECK]] as const) {
        const r = await runGuest({ op, opCode, inputs: [{ path, format: formats.VHDX }], timeoutMs: 10000 });
        const mine = hosted(op, path).recs;
        const strip = (recs: Rec[]) =>
          JSON.stringify(recs, (_k, v) => typeof v === "bigint" ? v.toString() : v);
        assert.equal(strip(r.records), strip(mine), `${op} ${path}`);
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vhdx: every readable BAT state reads as qemu-img reads it", () => {
  const dir = tmp();
  try {
    const base = `${dir}/base.vhdx`;
    img("create", "-f", "vhdx", "-o", "block_size=1M", base, "16M");
    io(base, "write -P 0x71 0 4M");
    const im = new Image(base);
    const bat = im.batRegion().offset;
    const e = (i: number) => im.dv.getBigUint64(bat + 8 * i, true);
    // blocks 0..3 are FULLY_PRESENT with data: give 1, 2, 3 the states
    // UNDEFINED, UNMAPPED and UNMAPPED_v095 with their offsets left in place
    im.dv.setBigUint64(bat + 8, (e(1) & ~7n) | 1n, true);
    im.dv.setBigUint64(bat + 16, (e(2) & ~7n) | 3n, true);
    im.dv.setBigUint64(bat + 24, (e(3) & ~7n) | 5n, true);
    // block 5: FULLY_PRESENT at file offset 0 (qemu reads the file's start)
    im.dv.setBigUint64(bat + 40, 6n, true);
    // block 6: FULLY_PRESENT, the same data block as block 0
    im.dv.setBigUint64(bat + 48, e(0), true);
    const p = im.save(`${dir}/states.vhdx`);
    compareInfo(p, imageSubformats.DYNAMIC);
    compareCheck(p);
    compareRead(dir, p);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
