// The guest's VHD ("vpc") parser (guest/vpc/) against qemu-img 7.2: the
// hosted `info` program's IMAGE_INFO record against `qemu-img info -f vpc`,
// the layer's block status (tests/support/vpc_walk.c prints map JSON)
// against `qemu-img map --output=json -f vpc`, and hostile images made by
// patching qemu-made ones: each gives one ERROR record whose text
// (lib/formats/vpc/errors.ts) is qemu-img's, fast, with a clean exit.
import assert from "node:assert/strict";
import { decodeRecords } from "../lib/abi/records.ts";
import type { Rec } from "../lib/abi/records.ts";
import { formats, guestErrors, imageSubformats, records } from "../lib/abi/spec.ts";
import { vpcErrors, vpcErrorText } from "../lib/formats/vpc/errors.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HOST = `${ROOT}build/host`;

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
function build(): void {
  if (built) return;
  ok("make", ["-s", "-C", `${ROOT}guest/host`]);
  const g = `${ROOT}guest`;
  ok("cc", [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-DINSTAR_HOSTED",
    "-DHOST_OP=OP_MAP",
    `-I${g}/include`,
    `-I${g}`,
    "-O1",
    "-g",
    "-o",
    `${HOST}/vpc_walk`,
    `${ROOT}tests/support/vpc_walk.c`,
    `${g}/vpc/vpc.c`,
    `${g}/vpc/layer.c`,
    `${g}/host/rt_host.c`,
    `${g}/rt/common.c`,
  ]);
  built = true;
}

const img = (...a: string[]) => ok("qemu-img", a);
const io = (file: string, ...cmds: string[]) =>
  ok("qemu-io", ["-f", "vpc", ...cmds.flatMap((c) => ["-c", c]), file]);

function tmp(): string {
  return Deno.makeTempDirSync({ prefix: "instar-vpc-" });
}

/** Runs hosted info on vpc:path; returns the records and the time taken. */
function info(path: string): { recs: Rec[]; ms: number } {
  build();
  const t0 = performance.now();
  const r = sh(`${HOST}/info`, [`vpc:${path}`]);
  const ms = performance.now() - t0;
  // exit 0 = GUEST_OK, 1 = GUEST_ERROR (an ERROR record); anything else is a crash
  assert.ok(r.code === 0 || r.code === 1, `info exited ${r.code}: ${r.stderr}`);
  // The info program probes first (a PROBE record saying vpc), then describes.
  const all = decodeRecords(r.stdout);
  const probe = all.filter((x) => x.type === records.PROBE);
  assert.ok(probe.length === 1 && probe[0].fields.format === formats.VPC, JSON.stringify(all, big));
  return { recs: all.filter((x) => x.type !== records.PROBE), ms };
}

function compareInfo(path: string): void {
  const q = JSON.parse(img("info", "--output=json", "-f", "vpc", path));
  const { recs } = info(path);
  assert.deepEqual(recs.map((r) => r.type), [records.IMAGE_INFO], JSON.stringify(recs, big));
  const i = recs[0].fields;
  assert.equal(i.format, formats.VPC);
  assert.equal(i.virtual_size, BigInt(q["virtual-size"]));
  // qemu-img omits cluster-size when the driver reports 0 (fixed disks)
  assert.equal(i.cluster_size === 0n ? undefined : Number(i.cluster_size), q["cluster-size"]);
  assert.equal(i.flags, 0);
  assert.equal(q["dirty-flag"], false);
}

function compareMap(path: string): void {
  build();
  const q = img("map", "--output=json", "-f", "vpc", path);
  const r = sh(`${HOST}/vpc_walk`, [`vpc:${path}`]);
  assert.equal(r.code, 0, r.stderr);
  const mine = r.stderr.split("\n").filter((l) => !l.startsWith("runs ")).join("\n");
  assert.equal(mine, q);
}

function big(_k: string, v: unknown) {
  return typeof v === "bigint" ? v.toString() : v;
}

// ---- byte patching (footer and dynamic header fields, then a fixed checksum) ------------------

type Patch = [where: "footer" | "end" | number, off: number, width: 1 | 2 | 4 | 8, value: bigint];

function footerChecksum(b: Uint8Array, base: number): number {
  let sum = 0;
  for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum = (sum + b[base + i]) >>> 0;
  return (~sum) >>> 0;
}

function patched(src: string, dst: string, patches: Patch[], fixChecksum = true): string {
  const b = Deno.readFileSync(src);
  const dv = new DataView(b.buffer);
  for (const [where, off, width, value] of patches) {
    const base = where === "footer" ? 0 : where === "end" ? b.length - 512 : where;
    const at = base + off;
    if (width === 1) dv.setUint8(at, Number(value));
    else if (width === 2) dv.setUint16(at, Number(value));
    else if (width === 4) dv.setUint32(at, Number(value));
    else dv.setBigUint64(at, value);
  }
  if (fixChecksum) {
    for (const base of [0, b.length - 512]) {
      if (new TextDecoder().decode(b.subarray(base, base + 8)) === "conectix") {
        dv.setUint32(base + 64, footerChecksum(b, base));
      }
    }
  }
  Deno.writeFileSync(dst, b);
  return dst;
}

// ---- good images -------------------------------------------------------------------------------

Deno.test("vpc info and map match qemu-img on images qemu-img and qemu-io made", async (t) => {
  const d = tmp();
  try {
    const cases: [string, string[], string[]][] = [
      ["dynamic 64M", ["-o", "subformat=dynamic"], ["64M"]],
      ["fixed 64M", ["-o", "subformat=fixed"], ["64M"]],
      ["dynamic force_size 65M", ["-o", "force_size=on"], ["65M"]],
      ["fixed force_size 10000896", ["-o", "subformat=fixed,force_size=on"], ["10000896"]],
      ["dynamic 1M", [], ["1M"]],
      ["dynamic 3000000 (CHS rounds up)", [], ["3000000"]],
      ["dynamic 100M", [], ["100M"]],
      ["dynamic 1G+512", [], ["1073742336"]],
      ["dynamic 127G (255-sector geometry)", [], ["127G"]],
      ["fixed 5M", ["-o", "subformat=fixed"], ["5M"]],
    ];
    let n = 0;
    for (const [name, opts, size] of cases) {
      await t.step(name, () => {
        const p = `${d}/i${n++}.vhd`;
        img("create", "-q", "-f", "vpc", ...opts, p, ...size);
        compareInfo(p);
        compareMap(p);
        const q = JSON.parse(img("info", "--output=json", "-f", "vpc", p));
        const vs = q["virtual-size"] as number;
        // data at the start, across a block boundary, in the middle and at the end
        io(
          p,
          "write -P 0xab 0 64k",
          `write -P 0xcd ${Math.max(0, Math.min(2 * 1048576 - 4096, vs - 8192))} 8k`,
          `write -P 0x11 ${Math.floor(vs / 2 / 512) * 512} 512`,
          `write -z ${vs - 512} 512`,
        );
        compareInfo(p);
        compareMap(p);
      });
    }
    await t.step("max-size vpc (2040 GiB, force_size): info and map fast", () => {
      const p = `${d}/max.vhd`;
      img("create", "-q", "-f", "vpc", "-o", "force_size=on", p, "2040G");
      io(p, "write -P 1 1T 4k", "write -P 2 2039G 4k");
      const t0 = performance.now();
      compareInfo(p);
      compareMap(p);
      assert.ok(performance.now() - t0 < 5000);
    });
    await t.step("convert -O vpc from raw with data", () => {
      const raw = `${d}/src.raw`;
      img("create", "-q", "-f", "raw", raw, "20M");
      ok("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0x01 15M 512", raw]);
      for (const sub of ["dynamic", "fixed"]) {
        const p = `${d}/conv-${sub}.vhd`;
        img("convert", "-f", "raw", "-O", "vpc", "-o", `subformat=${sub}`, raw, p);
        compareInfo(p);
        compareMap(p);
      }
    });
    await t.step("footer type fields: differencing and fixed at offset 0 open as qemu opens them", () => {
      const src = `${d}/t.vhd`;
      img("create", "-q", "-f", "vpc", src, "16M");
      io(src, "write -P 0x77 2M 1M");
      for (const [type, sub] of [[4, imageSubformats.DIFFERENCING], [2, imageSubformats.FIXED]]) {
        const p = patched(src, `${d}/type${type}.vhd`, [["footer", 60, 4, BigInt(type)]]);
        compareInfo(p);
        compareMap(p);
        assert.equal(info(p).recs[0].fields.subformat, sub);
      }
    });
    await t.step("creator apps that select current_size, and the 511-byte footer", () => {
      const src = `${d}/c.vhd`;
      img("create", "-q", "-f", "vpc", src, "16M");
      for (const [app, size] of [[0x71656d32n, 12345678n], [0x74617000n, 1000000n], [0x77696e20n, 4096n]]) {
        const p = patched(src, `${d}/app${app}.vhd`, [["footer", 28, 4, app], ["footer", 48, 8, size]]);
        compareInfo(p);
        compareMap(p);
      }
      const f = `${d}/f.vhd`;
      img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", f, "4M");
      const b = Deno.readFileSync(f);
      Deno.writeFileSync(`${d}/f511.vhd`, b.subarray(0, b.length - 1));
      compareInfo(`${d}/f511.vhd`);
      compareMap(`${d}/f511.vhd`);
      // sizes whose footer sits after a partial sector still open (length rounds up)
      const dyn = `${d}/tail.vhd`;
      img("create", "-q", "-f", "vpc", dyn, "8M");
      io(dyn, "write -P 1 0 4k");
      const db = Deno.readFileSync(dyn);
      Deno.writeFileSync(dyn, db.subarray(0, db.length - 513)); // drop the trailing footer + 1 byte
      compareInfo(dyn);
      compareMap(dyn);
    });
  } finally {
    Deno.removeSync(d, { recursive: true });
  }
});

// ---- hostile images ----------------------------------------------------------------------------

Deno.test("hostile vpc images: qemu's error, as an ERROR record, fast", async (t) => {
  const d = tmp();
  try {
    const dyn = `${d}/d.vhd`;
    img("create", "-q", "-f", "vpc", dyn, "64M");
    io(dyn, "write -P 0xab 0 1M", "write -P 0xcd 5M 512k");
    const fixed = `${d}/f.vhd`;
    img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", fixed, "8M");
    const H = 512; // the dynamic header's offset in qemu-made images
    const cases: [string, string, Patch[], number, boolean?][] = [
      ["block_size 0", dyn, [[H, 32, 4, 0n]], vpcErrors.BLOCK_SIZE],
      ["block_size 1000", dyn, [[H, 32, 4, 1000n]], vpcErrors.BLOCK_SIZE],
      ["block_size 256", dyn, [[H, 32, 4, 256n]], vpcErrors.BLOCK_SIZE],
      ["block_size 2^31", dyn, [[H, 32, 4, 0x80000000n]], vpcErrors.TRUNCATED],
      ["block_size 4K: table too small", dyn, [[H, 32, 4, 4096n]], vpcErrors.TABLE_TOO_SMALL],
      ["max_table_entries 0xffffffff", dyn, [[H, 28, 4, 0xffffffffn]], vpcErrors.TABLE_TOO_LARGE],
      ["max_table_entries 2^30", dyn, [[H, 28, 4, 0x40000000n]], vpcErrors.TABLE_TOO_LARGE],
      ["max_table_entries 2^29-1 (read > request max)", dyn, [[H, 28, 4, 0x1fffffffn]], vpcErrors.READ_TABLE],
      // (2^29-128 entries is the largest BAT qemu reads: it then reports TRUNCATED too, after
      // reading 2 GiB; too slow for this test)
      ["max_table_entries 2^24 (BAT past EOF)", dyn, [[H, 28, 4, 0x1000000n]], vpcErrors.TRUNCATED],
      ["max_table_entries 3", dyn, [[H, 28, 4, 3n]], vpcErrors.TABLE_TOO_SMALL],
      ["BAT past EOF", dyn, [[H, 16, 8, 0x100000000n]], vpcErrors.TRUNCATED],
      ["BAT offset 2^63", dyn, [[H, 16, 8, 1n << 63n]], vpcErrors.READ_TABLE],
      ["BAT offset near 2^63", dyn, [[H, 16, 8, 0x7fffffffc0000000n - 16n]], vpcErrors.READ_TABLE],
      ["BAT entry near 2^32", dyn, [[3 * 512, 0, 4, 0xfffffff0n]], vpcErrors.TRUNCATED],
      ["BAT entry 0xfffffffe", dyn, [[3 * 512, 4, 4, 0xfffffffen]], vpcErrors.TRUNCATED],
      ["dynamic header magic", dyn, [[H, 0, 8, 0n]], vpcErrors.DYNHDR_MAGIC],
      ["dynamic header past EOF", dyn, [["footer", 16, 8, 0x10000000000n]], vpcErrors.DYNHDR_MAGIC],
      ["dynamic header offset 2^64-1", dyn, [["footer", 16, 8, (1n << 64n) - 1n]], vpcErrors.READ_DYNHDR],
      ["footer checksum", dyn, [["footer", 64, 4, 1n]], vpcErrors.CHECKSUM, false],
      ["fixed footer checksum", fixed, [["end", 64, 4, 1n]], vpcErrors.CHECKSUM, false],
      ["fixed footer type 3", fixed, [["end", 60, 4, 3n]], vpcErrors.INVALID],
      ["fixed footer type 4", fixed, [["end", 60, 4, 4n]], vpcErrors.INVALID],
      ["geometry 65535x255x255", dyn, [["footer", 56, 2, 65535n], ["footer", 58, 1, 255n], [
        "footer",
        59,
        1,
        255n,
      ]], vpcErrors.TABLE_TOO_SMALL],
      ["max geometry, current_size 2 TiB", dyn, [["footer", 56, 2, 65535n], ["footer", 58, 1, 16n], [
        "footer",
        59,
        1,
        255n,
      ], ["footer", 48, 8, 1n << 41n]], vpcErrors.TOO_LARGE],
      ["qem2, current_size 2^64-1", dyn, [["footer", 28, 4, 0x71656d32n], [
        "footer",
        48,
        8,
        (1n << 64n) - 1n,
      ]], vpcErrors.TOO_LARGE],
    ];
    for (const [name, src, patches, code, fix] of cases) {
      await t.step(name, () => {
        const p = patched(src, `${d}/h.vhd`, patches, fix ?? true);
        expectError(p, code);
      });
    }
    await t.step("truncated and tiny files", () => {
      const b = Deno.readFileSync(fixed);
      // the length rounds up to 512: a footer missing its zero tail still opens
      Deno.writeFileSync(`${d}/cut300.vhd`, b.subarray(0, b.length - 300));
      compareInfo(`${d}/cut300.vhd`);
      Deno.writeFileSync(`${d}/cut.vhd`, b.subarray(0, b.length - 600));
      expectError(`${d}/cut.vhd`, vpcErrors.INVALID);
      const db = Deno.readFileSync(dyn);
      Deno.writeFileSync(`${d}/d511.vhd`, db.subarray(0, 511));
      expectError(`${d}/d511.vhd`, vpcErrors.DYNHDR_MAGIC);
      Deno.writeFileSync(`${d}/dcut.vhd`, db.subarray(0, db.length - 1200));
      expectError(`${d}/dcut.vhd`, vpcErrors.TRUNCATED);
      Deno.writeFileSync(`${d}/empty.vhd`, new Uint8Array(0));
      expectError(`${d}/empty.vhd`, vpcErrors.FILE_TOO_SMALL);
      Deno.writeFileSync(`${d}/one.vhd`, new Uint8Array(1));
      expectError(`${d}/one.vhd`, vpcErrors.INVALID);
    });
    await t.step("a 256 MiB BAT in a sparse file is scanned in bounded memory", () => {
      // max_table_entries 2^26 whose table lies inside a (sparse) file: qemu
      // reads 256 MiB; the guest scans it through a 1 MiB window.
      const empty = `${d}/e.vhd`;
      img("create", "-q", "-f", "vpc", empty, "64M");
      // the footer copy after the BAT would read as entries far past EOF
      const wipe: Patch[] = Array.from({ length: 64 }, (_, k) => [2048 + 8 * k, 0, 8, 0n] as Patch);
      const p = patched(empty, `${d}/bigbat.vhd`, [[H, 28, 4, 0x4000000n], ...wipe]);
      const f = Deno.openSync(p, { write: true });
      f.truncateSync(0x10000000 + 4096);
      f.close();
      compareInfo(p);
    });
  } finally {
    Deno.removeSync(d, { recursive: true });
  }

  function expectError(p: string, code: number): void {
    const q = sh("qemu-img", ["info", "-f", "vpc", p]);
    assert.equal(q.code, 1, q.stderr);
    const { recs, ms } = info(p);
    assert.ok(ms < 3000, `took ${ms} ms`);
    assert.deepEqual(recs.map((r) => r.type), [records.ERROR], JSON.stringify(recs, big));
    const e = recs[0].fields;
    assert.equal(e.code, guestErrors.FORMAT);
    assert.equal(e.a0, BigInt(code), JSON.stringify(e, big));
    const text = vpcErrorText(e.a0 as bigint, e.a1 as bigint, e.a2 as bigint, p);
    assert.equal(`qemu-img: Could not open '${p}': ${text}\n`, q.stderr);
  }
});
