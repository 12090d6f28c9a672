// The qcow2 and raw rows of docs/security.md's attack table, end to end
// through the CLI: each hostile image is built here (qemu-img made, then
// patched where qemu-img would refuse to make it) and the test asserts a clean
// error or correct result, the documented exit code, no byte of a host file
// outside the attached inputs in the output, and bounded time.
import assert from "node:assert/strict";
import { asInstar, built, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";
import { cryptsetupLuks1Image, haveCryptsetup } from "./support/luks_images.ts";

const ready = built() && haveQemuImg();
const SECRET = "instar-secret-4f1c2a9e-do-not-leak";

async function tmp(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "instar-sec-" });
}

/** Overwrites bytes of a file at `at` (big-endian fields, as qcow2 stores them). */
async function patch(path: string, at: number, bytes: number[]): Promise<void> {
  const f = await Deno.open(path, { write: true });
  try {
    await f.seek(at, Deno.SeekMode.Start);
    await f.write(new Uint8Array(bytes));
  } finally {
    f.close();
  }
}
const be32 = (v: number) => [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
const be64 = (v: bigint) => [...be32(Number(v >> 32n)), ...be32(Number(v & 0xffffffffn))];

function noLeak(o: { stdout: string; stderr: string }) {
  assert.ok(!o.stdout.includes(SECRET) && !o.stderr.includes(SECRET), "host file content leaked");
}

async function timed<T>(limitMs: number, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const r = await f();
  const ms = performance.now() - t0;
  assert.ok(ms < limitMs, `took ${ms.toFixed(0)} ms, limit ${limitMs} ms`);
  return r;
}

Deno.test({
  name: "format confusion: raw files carrying other formats' headers",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    try {
      // A raw disk whose first sector is another format's header: without -f
      // instar must not silently treat it as that format or as raw.
      const vmdk = new Uint8Array(1 << 20);
      vmdk.set(new TextEncoder().encode("KDMV"), 0);
      await Deno.writeFile(`${d}/vmdk-head.img`, vmdk);
      const vhd = new Uint8Array(1 << 20);
      vhd.set(new TextEncoder().encode("conectix"), 0);
      await Deno.writeFile(`${d}/vhd-head.img`, vhd);
      const plain = new Uint8Array(1 << 20).fill(7);
      await Deno.writeFile(`${d}/plain.img`, plain);
      for (const name of ["vmdk-head.img", "vhd-head.img", "plain.img"]) {
        await t.step(`${name} without -f is refused`, async () => {
          const r = await instar(["info", name], d);
          assert.equal(r.code, 1, r.stderr);
          assert.match(r.stderr, /^instar: /);
          assert.equal(r.stdout, "");
        });
        await t.step(`${name} with -f raw is read as raw, like qemu-img`, async () => {
          const [q, i] = await Promise.all([
            qemuImg(["info", "-f", "raw", name], d),
            instar(["info", "-f", "raw", name], d),
          ]);
          assert.deepEqual(i, asInstar(q));
        });
      }
      await t.step("a qcow2 file read with -f raw is raw (-f is always honoured)", async () => {
        await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "1M");
        const [q, i] = await Promise.all([
          qemuImg(["info", "-f", "raw", "q.qcow2"], d),
          instar(["info", "-f", "raw", "q.qcow2"], d),
        ]);
        assert.deepEqual(i, asInstar(q));
      });
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test({
  name: "backing files naming host paths are reported, never opened",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    const outside = await tmp();
    try {
      await Deno.writeTextFile(`${outside}/secret.raw`, SECRET.repeat(64));
      await Deno.symlink(`${outside}/secret.raw`, `${d}/link.raw`);
      const names: Record<string, string> = {
        "abs.qcow2": `${outside}/secret.raw`,
        "dotdot.qcow2": `../${outside.split("/").pop()}/secret.raw`,
        "symlink.qcow2": "link.raw",
        "passwd.qcow2": "/etc/passwd",
        "json.qcow2": `json:{"driver":"raw","file":{"driver":"file","filename":"${outside}/secret.raw"}}`,
        "nbd.qcow2": "nbd://127.0.0.1:10809/x",
        "http.qcow2": "http://127.0.0.1/x",
        "file.qcow2": `file:${outside}/secret.raw`,
      };
      for (const [img, backing] of Object.entries(names)) {
        await sh(d, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", "raw", img, "1M");
      }
      for (const img of Object.keys(names)) {
        await t.step(`${img}: info prints the name like qemu-img and opens nothing`, async () => {
          const [q, i] = await Promise.all([qemuImg(["info", img], d), instar(["info", img], d)]);
          assert.deepEqual(i, asInstar(q));
        });
        for (const cmd of [["info", "--backing-chain"], ["map"], ["map", "--output=json"], ["check"]]) {
          await t.step(`${img}: ${cmd.join(" ")} refuses the backing file`, async () => {
            const r = await instar([...cmd, img], d);
            assert.equal(r.code, 1, `exit ${r.code}: ${r.stdout}${r.stderr}`);
            assert.match(r.stderr, /instar: /);
            noLeak(r);
          });
        }
      }
      await t.step("a FIFO named as backing file is never opened by info", async () => {
        await sh(d, "mkfifo", "fifo");
        await sh(
          d,
          "qemu-img",
          "create",
          "-q",
          "-u",
          "-f",
          "qcow2",
          "-b",
          "fifo",
          "-F",
          "raw",
          "fifo.qcow2",
          "1M",
        );
        const r = await timed(10000, () => instar(["info", "fifo.qcow2"], d));
        assert.equal(r.code, 0, r.stderr);
      });
    } finally {
      await Deno.remove(d, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  },
});

Deno.test({
  name: "circular and deep chains",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    try {
      const mk = (img: string, backing: string) =>
        sh(d, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", "qcow2", img, "1M");
      await mk("self.qcow2", "./self.qcow2"); // qemu-img refuses the exact same name
      await mk("a2.qcow2", "b2.qcow2");
      await mk("b2.qcow2", "a2.qcow2");
      await mk("a3.qcow2", "b3.qcow2");
      await mk("b3.qcow2", "c3.qcow2");
      await mk("c3.qcow2", "a3.qcow2");
      for (const img of ["self.qcow2", "a2.qcow2", "a3.qcow2"]) {
        await t.step(`${img}: cycle refused`, async () => {
          for (const cmd of [["info", "--backing-chain"], ["map"]]) {
            const r = await timed(10000, () => instar([...cmd, img], d));
            assert.equal(r.code, 1, r.stdout + r.stderr);
            assert.match(r.stderr, /^instar: /m);
          }
        });
      }
      // chain of 16 images (top + 15 backing files) is fine, 17 is refused.
      await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "c0.qcow2", "1M");
      for (let i = 1; i <= 16; i++) {
        await sh(
          d,
          "qemu-img",
          "create",
          "-q",
          "-f",
          "qcow2",
          "-b",
          `c${i - 1}.qcow2`,
          "-F",
          "qcow2",
          `c${i}.qcow2`,
          "1M",
        );
      }
      await t.step("16 images deep: same output as qemu-img", async () => {
        const [q, i] = await Promise.all([
          qemuImg(["info", "--backing-chain", "c15.qcow2"], d),
          instar(["info", "--backing-chain", "c15.qcow2"], d),
        ]);
        assert.deepEqual(i, asInstar(q));
      });
      await t.step("17 images deep: refused", async () => {
        const r = await instar(["info", "--backing-chain", "c16.qcow2"], d);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /^instar: /m);
      });
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test({
  name: "integer overflow and bounds: malformed qcow2 headers fail cleanly like qemu-img",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    try {
      const cases: [string, number, number[]][] = [
        ["cluster_bits 0", 20, be32(0)],
        ["cluster_bits 8", 20, be32(8)],
        ["cluster_bits 22", 20, be32(22)],
        ["cluster_bits 63", 20, be32(63)],
        ["cluster_bits 2^32-1", 20, be32(0xffffffff)],
        ["l1_size huge", 36, be32(0x7fffffff)],
        ["l1_size 2^32-1", 36, be32(0xffffffff)],
        ["l1 offset unaligned", 40, be64(0x10001n)],
        ["l1 offset past 2^63", 40, be64(0xffffffffffff0000n)],
        ["refcount_order 7", 96, be32(7)],
        ["refcount_order 255", 96, be32(255)],
        ["refcount table clusters huge", 56, be32(0xffffffff)],
        ["refcount table offset unaligned", 48, be64(0x123n)],
        ["virtual size 2^63", 24, be64(0x8000000000000000n)],
        ["virtual size 2^64-1", 24, be64(0xffffffffffffffffn)],
        ["header_length 0", 100, be32(0)],
        ["header_length huge", 100, be32(0xffffffff)],
        ["version 1", 4, be32(1)],
        ["version 4", 4, be32(4)],
        ["unknown incompatible bit", 72, be64(1n << 40n)],
        ["backing name offset past EOF", 8, [...be64(0xfffffffff0n), ...be32(10)]],
        ["backing name size huge", 8, [...be64(0x200n), ...be32(0xffffffff)]],
        ["backing name size 1024", 8, [...be64(0x200n), ...be32(1024)]],
        ["snapshots count huge", 60, be32(0xffffffff)],
        ["encrypted (aes)", 32, be32(1)],
      ];
      // version 1 turns the file into a qcow (v1) image: not parsed yet
      // (docs/quirks.md). crypt_method 1 is an AES-encrypted qcow2: info reads
      // it, the others ask for its key-secret as qemu-img does.
      const refusedOnPurpose = new Set(["version 1"]);

      let n = 0;
      for (const [label, at, bytes] of cases) {
        await t.step(label, async () => {
          const img = `h${n++}.qcow2`;
          await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M");
          await patch(`${d}/${img}`, at, bytes);
          for (const args of [["info", img], ["check", img], ["map", img], ["info", "--output=json", img]]) {
            const [q, i] = await Promise.all([qemuImg(args, d), timed(10000, () => instar(args, d))]);
            if (refusedOnPurpose.has(label)) {
              // Formats and features instar does not read yet: a clear refusal.
              assert.equal(i.code, 1, `${args.join(" ")}: ${i.stdout}${i.stderr}`);
              assert.match(i.stderr, /^instar: Could not open /);
            } else if (q.code !== 0) {
              // qemu-img refuses the image: instar refuses it with the same words
              // (hints such as "qemu-img check -r all" are qemu's own text).
              assert.deepEqual(
                i,
                { ...q, stderr: q.stderr.replace(/^qemu-img:/gm, "instar:") },
                args.join(" "),
              );
            } else {
              assert.ok(i.code === 0 || i.code === 1, `exit ${i.code}`);
              assert.ok(!i.stderr.includes("    at "), `stack trace: ${i.stderr}`);
            }
          }
        });
      }
      await t.step("truncated headers", async () => {
        const full = new Uint8Array(await Deno.readFile(`${d}/h0.qcow2`)).slice(0, 104);
        full.set(be32(16), 20);
        for (const len of [4, 8, 20, 71, 72, 103]) {
          const img = `trunc${len}.qcow2`;
          await Deno.writeFile(`${d}/${img}`, full.slice(0, len));
          const args = ["info", "-f", "qcow2", img];
          const [q, i] = await Promise.all([qemuImg(args, d), instar(args, d)]);
          assert.deepEqual(i, asInstar(q), `length ${len}`);
        }
      });
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test({
  name: "resource exhaustion: an empty 1 PiB qcow2 is inspected in well under a second",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    try {
      await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "big.qcow2", "1P");
      for (
        const args of [["info", "big.qcow2"], ["check", "big.qcow2"], ["map", "--output=json", "big.qcow2"]]
      ) {
        await t.step(args.join(" "), async () => {
          // Warm-up excludes Deno's own first-start compile cost.
          await instar(args, d);
          const t0 = performance.now();
          const i = await instar(args, d);
          const ms = performance.now() - t0;
          const q = await qemuImg(args, d);
          assert.deepEqual(i, asInstar(q));
          assert.ok(ms < 1000, `${args.join(" ")} took ${ms.toFixed(0)} ms`);
        });
      }
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test({
  name: "external data file naming a host file is never opened by map, compare or info",
  ignore: !ready,
  async fn() {
    const d = await tmp();
    const outside = await tmp();
    try {
      await Deno.writeTextFile(`${outside}/secret.raw`, SECRET.repeat(20000));
      await sh(
        d,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `data_file=${outside}/secret.raw,data_file_raw=on,preallocation=metadata`,
        "df.qcow2",
        "1M",
      );
      const want = await qemuImg(["info", "--output=json", "df.qcow2"], d);
      // Swap the data file for a FIFO: opening it would block, so finishing
      // at all proves instar never opened it (map needs only the L2 tables).
      await Deno.remove(`${outside}/secret.raw`);
      await sh(outside, "mkfifo", "secret.raw");
      const r = await timed(10000, () => instar(["info", "--output=json", "df.qcow2"], d));
      noLeak(r);
      // info's actual-size is the overlay's own; identical otherwise.
      assert.deepEqual(r, asInstar(want));
      // map (whose File column would name the data file) and compare are refused as convert is.
      for (const args of [["map", "--output=json", "df.qcow2"], ["compare", "df.qcow2", "df.qcow2"]]) {
        const m = await timed(10000, () => instar(args, d));
        noLeak(m);
        assert.equal(m.code, args[0] === "compare" ? 2 : 1);
        assert.equal(m.stdout, "");
        assert.match(m.stderr, /^instar: Could not open 'df.qcow2': Refusing to read an external data file/);
      }
    } finally {
      await Deno.remove(d, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  },
});

Deno.test({
  name: "images with internal snapshots: check and info match qemu-img",
  ignore: !ready,
  async fn() {
    const d = await tmp();
    try {
      await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "snap.qcow2", "8M");
      await sh(d, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", "snap.qcow2");
      await sh(d, "qemu-img", "snapshot", "-c", "s1", "snap.qcow2");
      const [q, i] = await Promise.all([
        qemuImg(["check", "snap.qcow2"], d),
        instar(["check", "snap.qcow2"], d),
      ]);
      assert.deepEqual(i, asInstar(q));
      const [qi, ii] = await Promise.all([
        qemuImg(["info", "snap.qcow2"], d),
        instar(["info", "snap.qcow2"], d),
      ]);
      assert.deepEqual(ii, asInstar(qi));
      assert.match(ii.stdout, /Snapshot list:/);
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

/** True when any file in `dir` contains the secret (convert outputs, temporary files). */
async function leakedInto(dir: string): Promise<boolean> {
  const needle = new TextEncoder().encode(SECRET.slice(0, 16));
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile) continue;
    const b = await Deno.readFile(`${dir}/${e.name}`);
    outer: for (
      let i = b.indexOf(needle[0]);
      i >= 0 && i <= b.length - needle.length;
      i = b.indexOf(needle[0], i + 1)
    ) {
      for (let j = 1; j < needle.length; j++) if (b[i + j] !== needle[j]) continue outer;
      return true;
    }
  }
  return false;
}

Deno.test({
  name:
    "convert: data files, json: and out-of-tree backing names are refused; no host byte reaches the output",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    const outside = await tmp();
    try {
      await Deno.writeTextFile(`${outside}/secret.raw`, SECRET.repeat(20000));
      // The CVE-2024-32498 shape: a raw external data file with metadata
      // preallocation maps every guest cluster onto the host file.
      await sh(
        d,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `data_file=${outside}/secret.raw,data_file_raw=on,preallocation=metadata`,
        "df.qcow2",
        "1M",
      );
      await Deno.writeTextFile(`${outside}/secret.raw`, SECRET.repeat(20000));
      await sh(
        d,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        `json:{"driver":"raw","file":{"driver":"file","filename":"${outside}/secret.raw"}}`,
        "-F",
        "raw",
        "json.qcow2",
        "1M",
      );
      await sh(
        d,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        `${outside}/secret.raw`,
        "-F",
        "raw",
        "abs.qcow2",
        "1M",
      );
      for (
        const [img, why] of [
          ["df.qcow2", /Refusing to read an external data file/],
          ["json.qcow2", /json:/],
          ["abs.qcow2", /outside/],
        ] as [string, RegExp][]
      ) {
        for (const fmt of ["raw", "qcow2"]) {
          await t.step(`${img} -O ${fmt}`, async () => {
            const r = await timed(10000, () => instar(["convert", "-O", fmt, img, `out.${fmt}`], d));
            noLeak(r);
            assert.equal(r.code, 1, r.stderr);
            assert.match(r.stderr, why);
            assert.ok(!(await leakedInto(d)), "a host file's bytes reached the output directory");
            await assert.rejects(Deno.stat(`${d}/out.${fmt}`), Deno.errors.NotFound);
          });
        }
      }
    } finally {
      await Deno.remove(d, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  },
});

Deno.test({
  name: "convert and compare of a 1 PiB qcow2 do work in proportion to its data, not its size",
  ignore: !ready,
  async fn() {
    const d = await tmp();
    try {
      await sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "huge.qcow2", "1P");
      await sh(d, "qemu-io", "-f", "qcow2", "-c", "write -P 7 500T 64k", "huge.qcow2");
      // qemu-img takes ~10 s here; a walk per 8 MiB chunk would take hours.
      const r = await timed(8000, () => instar(["convert", "-O", "qcow2", "huge.qcow2", "out.qcow2"], d));
      assert.deepEqual(r, { stdout: "", stderr: "", code: 0 });
      const c = await timed(5000, () => instar(["compare", "huge.qcow2", "out.qcow2"], d));
      assert.deepEqual(c, { stdout: "Images are identical.\n", stderr: "", code: 0 });
      const q = await qemuImg(["check", "out.qcow2"], d);
      assert.equal(q.code, 0, q.stdout);
      const m = await qemuImg(["map", "--output=json", "out.qcow2"], d);
      assert.equal(JSON.parse(m.stdout).filter((e: { data: boolean }) => e.data).length, 1, m.stdout);
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

/** Rewrites a VHDX region-table copy (64 KiB at `at`) through `edit`, then its CRC-32C. */
async function vhdxRegionEdit(path: string, at: number, edit: (dv: DataView) => void): Promise<void> {
  const { storeCrc32c } = await import("../lib/formats/vhdx/crc32c.ts");
  const b = await Deno.readFile(path);
  const t = b.subarray(at, at + 65536);
  edit(new DataView(t.buffer, t.byteOffset, t.byteLength));
  storeCrc32c(t, 4);
  await Deno.writeFile(path, b);
}

/** Rewrites a VHD's dynamic header (1 KiB at 512) through `edit`, then its checksum. */
async function vpcDynEdit(path: string, edit: (dv: DataView) => void): Promise<void> {
  const b = await Deno.readFile(path);
  const h = b.subarray(512, 1536);
  const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
  edit(dv);
  dv.setUint32(36, 0);
  let sum = 0;
  for (const x of h) sum = (sum + x) >>> 0;
  dv.setUint32(36, ~sum >>> 0);
  await Deno.writeFile(path, b);
}

Deno.test({
  name: "hostile VHD and VHDX headers: qemu-img's error and exit code, in bounded time",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    try {
      // qemu-img create -f vhdx 64M: headers at 64 KiB and 128 KiB, region
      // tables at 192 KiB and 256 KiB (entry 0 the BAT at 2 MiB, entry 1 the
      // metadata at 3 MiB), the metadata table's entry count at 3 MiB + 10.
      const RT = [192 * 1024, 256 * 1024];
      const entry = (i: number) => 16 + 32 * i;
      const cases: [string, "vpc" | "vhdx", (p: string) => Promise<void>][] = [
        ["both VHDX headers invalid", "vhdx", async (p) => {
          await patch(p, 64 * 1024 + 8, [1, 2, 3]);
          await patch(p, 128 * 1024 + 8, [1, 2, 3]);
        }],
        ["region table CRC mismatch (first copy)", "vhdx", (p) => patch(p, RT[0] + 20, [0x55])],
        ["region table CRC mismatch (both copies)", "vhdx", async (p) => {
          await patch(p, RT[0] + 20, [0x55]);
          await patch(p, RT[1] + 20, [0x55]);
        }],
        ["overlapping regions", "vhdx", async (p) => {
          for (const at of RT) {
            await vhdxRegionEdit(p, at, (dv) => dv.setBigUint64(entry(0) + 16, 3n << 20n, true));
          }
        }],
        ["BAT past EOF", "vhdx", async (p) => {
          for (const at of RT) {
            await vhdxRegionEdit(p, at, (dv) => dv.setBigUint64(entry(0) + 16, 1n << 40n, true));
          }
        }],
        ["BAT region of 4 GiB", "vhdx", async (p) => {
          for (const at of RT) {
            await vhdxRegionEdit(p, at, (dv) => dv.setUint32(entry(0) + 24, 0xfff00000, true));
          }
        }],
        ["huge metadata table", "vhdx", (p) => patch(p, (3 << 20) + 10, [0xff, 0xff])],
        ["VHD BAT past EOF", "vpc", (p) => vpcDynEdit(p, (dv) => dv.setBigUint64(16, 1n << 50n))],
        ["VHD BAT entries near 2^32", "vpc", (p) => vpcDynEdit(p, (dv) => dv.setUint32(28, 0xfffffff0))],
        ["VHD block size 0", "vpc", (p) => vpcDynEdit(p, (dv) => dv.setUint32(32, 0))],
      ];
      let n = 0;
      for (const [label, fmt, damage] of cases) {
        await t.step(label, async () => {
          const img = `h${n++}.${fmt === "vpc" ? "vhd" : "vhdx"}`;
          await sh(d, "qemu-img", "create", "-q", "-f", fmt, img, "64M");
          await damage(`${d}/${img}`);
          for (
            const args of [["info", img], ["check", img], ["map", "--output=json", img], [
              "convert",
              "-O",
              "raw",
              img,
              "o.raw",
            ]]
          ) {
            // qemu-img gets longer: some of these take it seconds. Not for convert: both
            // would write o.raw at once, and one would fail on the other's image lock.
            const [q, i] = args[0] === "convert"
              ? [await qemuImg(args, d), await timed(10000, () => instar(args, d))]
              : await Promise.all([qemuImg(args, d), timed(10000, () => instar(args, d))]);
            assert.deepEqual(i, asInstar(q), args.join(" "));
            assert.ok(!i.stderr.includes("    at "), `stack trace: ${i.stderr}`);
          }
        });
      }
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "a 64 TiB VHDX and a 2040 GiB VHD: info, map, check, measure and convert work in proportion to their data",
  ignore: !ready,
  async fn() {
    const d = await tmp();
    try {
      await sh(d, "qemu-img", "create", "-q", "-f", "vhdx", "big.vhdx", "64T");
      await sh(d, "qemu-io", "-f", "vhdx", "-c", "write -P 7 1T 1M", "big.vhdx");
      await sh(d, "qemu-img", "create", "-q", "-f", "vpc", "-o", "force_size=on", "big.vhd", "2040G");
      await sh(d, "qemu-io", "-f", "vpc", "-c", "write -P 8 1000G 1M", "big.vhd");
      for (const img of ["big.vhdx", "big.vhd"]) {
        for (
          const args of [["info", img], ["map", "--output=json", img], ["check", img], [
            "measure",
            "-O",
            "qcow2",
            img,
          ]]
        ) {
          const [q, i] = await Promise.all([qemuImg(args, d), timed(10000, () => instar(args, d))]);
          assert.deepEqual(i, asInstar(q), args.join(" "));
        }
        // qemu-img reads every byte of the VHDX here (hours); instar follows the blocks.
        const r = await timed(15000, () => instar(["convert", "-O", "qcow2", img, "out.qcow2"], d));
        assert.deepEqual(r, { stdout: "", stderr: "", code: 0 });
        const m = await qemuImg(["map", "--output=json", "out.qcow2"], d);
        const data = JSON.parse(m.stdout).filter((e: { data: boolean }) => e.data);
        assert.equal(data.length, 1, m.stdout);
        assert.equal(data[0].length, 1048576);
      }
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

/** A monolithicFlat descriptor naming `extent` (its text only: no file is made). */
function flatDescriptor(extent: string, sectors = 2048): string {
  return '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n' +
    `RW ${sectors} FLAT "${extent}" 0\n\nddb.adapterType = "ide"\n`;
}

Deno.test({
  name: "vmdk extents naming host paths are refused before anything is opened",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    const outside = await tmp();
    try {
      await Deno.writeTextFile(`${outside}/secret.raw`, SECRET.repeat(64 * 1024 / SECRET.length + 1));
      await Deno.symlink(`${outside}/secret.raw`, `${d}/link-flat.vmdk`);
      await sh(d, "mkfifo", "fifo-flat.vmdk");
      const cases: Record<string, string> = {
        "abs.vmdk": `${outside}/secret.raw`,
        "dotdot.vmdk": `../${outside.split("/").pop()}/secret.raw`,
        "symlink.vmdk": "link-flat.vmdk",
        "self.vmdk": "self.vmdk",
        "devzero.vmdk": "/dev/zero",
        "fifo.vmdk": "fifo-flat.vmdk",
        "json.vmdk": `json:{"driver":"file","filename":"${outside}/secret.raw"}`,
        "proto.vmdk": "nbd://127.0.0.1:10809/x",
      };
      for (const [img, extent] of Object.entries(cases)) {
        await Deno.writeTextFile(`${d}/${img}`, flatDescriptor(extent));
        for (const cmd of [["info"], ["map", "--output=json"], ["check"], ["convert", "-O", "raw"]]) {
          await t.step(`${img}: ${cmd.join(" ")} refuses the extent`, async () => {
            const args = cmd[0] === "convert" ? [...cmd, img, "out.raw"] : [...cmd, img];
            const r = await timed(10000, () => instar(args, d));
            assert.equal(r.code, 1, `exit ${r.code}: ${r.stdout}${r.stderr}`);
            assert.match(r.stderr, /^instar: Could not open '.*vmdk': /);
            assert.equal(r.stderr.split("\n").length, 2, r.stderr);
            assert.equal(r.stdout, "");
            noLeak(r);
            assert.ok(!(await Deno.stat(`${d}/out.raw`).catch(() => null)), "convert left an output file");
          });
        }
      }
      await t.step("10,000 extents: refused over the cap, in bounded time", async () => {
        const lines = Array.from({ length: 10000 }, (_, i) => `RW 1 FLAT "e${i}.raw" 0`).join("\n");
        await Deno.writeTextFile(
          `${d}/many.vmdk`,
          flatDescriptor("x").replace(/RW 2048 FLAT "x" 0/, lines),
        );
        const r = await timed(10000, () => instar(["info", "many.vmdk"], d));
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /names \d+ extents; instar opens at most 1024 extent files$/m);
      });
    } finally {
      await Deno.remove(d, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  },
});

Deno.test({
  name: "vmdk sparse headers: tables past EOF and near 2^32, a grain inflating past its size",
  ignore: !ready,
  async fn(t) {
    const d = await tmp();
    try {
      await sh(d, "qemu-img", "create", "-q", "-f", "vmdk", "s.vmdk", "64M");
      await sh(d, "qemu-io", "-f", "vmdk", "-c", "write -P 5 1M 64k", "s.vmdk");
      const le = (v: bigint, n: number) =>
        Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 255n));
      const cases: [string, number, number[]][] = [
        ["gd past EOF", 4 + 52, le(0x100000n, 8)],
        ["rgd past 2^63", 4 + 44, le(0x7fffffffffffffffn, 8)],
        ["capacity near 2^32 grain tables", 4 + 8, le(0xffffffffn * 128n * 512n, 8)],
        ["capacity 2^64-1", 4 + 8, le(0xffffffffffffffffn, 8)],
        ["grain table entries 512, granularity 2^32", 4 + 16, le(1n << 32n, 8)],
      ];
      let n = 0;
      for (const [label, at, bytes] of cases) {
        await t.step(label, async () => {
          const img = `h${n++}.vmdk`;
          await Deno.copyFile(`${d}/s.vmdk`, `${d}/${img}`);
          await patch(`${d}/${img}`, at, bytes);
          for (const args of [["info", img], ["map", "--output=json", img], ["check", img]]) {
            const [q, i] = await Promise.all([qemuImg(args, d), timed(10000, () => instar(args, d))]);
            assert.deepEqual(i, asInstar(q), args.join(" "));
          }
        });
      }
      await t.step("a compressed grain that inflates past the grain size fails the read", async () => {
        const { deflateSync } = await import("node:zlib");
        await sh(
          d,
          "qemu-img",
          "convert",
          "-O",
          "vmdk",
          "-o",
          "subformat=streamOptimized",
          "s.vmdk",
          "so.vmdk",
        );
        const b = await Deno.readFile(`${d}/so.vmdk`);
        const dv = new DataView(b.buffer);
        const grain = Number(dv.getBigUint64(4 + 60, true)) * 512; // the first grain's marker
        const bomb = new Uint8Array(deflateSync(new Uint8Array(1 << 20).fill(0x41)));
        assert.ok(bomb.length < 60000);
        dv.setUint32(grain + 8, bomb.length, true);
        b.set(bomb, grain + 12);
        await Deno.writeFile(`${d}/bomb.vmdk`, b);
        const q = await qemuImg(["convert", "-O", "raw", "bomb.vmdk", "q.raw"], d);
        const i = await timed(10000, () => instar(["convert", "-O", "raw", "bomb.vmdk", "i.raw"], d));
        assert.ok(q.code !== 0, q.stderr);
        assert.equal(i.code, 1, i.stderr);
        assert.match(i.stderr, /^instar: error while reading/);
        assert.ok(!(await Deno.stat(`${d}/i.raw`).catch(() => null)), "convert left an output file");
      });
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});

// LUKS1 headers made hostile by patching a cryptsetup image (guest/luks/header.c
// checks them as qemu 7.2 does; crypto.c bounds the PBKDF2 work).
Deno.test({
  name:
    "hostile LUKS1 headers: slot offsets past EOF, stripes near 2^32, huge key sizes and iteration counts",
  ignore: !ready || !haveCryptsetup,
  async fn(t) {
    const d = await tmp();
    try {
      await cryptsetupLuks1Image(d, "base.img", 3 << 20, "pw");
      const obj = ["--object", "secret,id=s,data=pw"];
      const opts = (f: string) => ["--image-opts", `driver=luks,key-secret=s,file.filename=${f}`];
      const variant = async (name: string, patches: [number, number[]][]) => {
        await Deno.copyFile(`${d}/base.img`, `${d}/${name}`);
        for (const [at, bytes] of patches) await patch(`${d}/${name}`, at, bytes);
      };
      const SLOT0 = 208;
      // Same words and exit code as qemu-img, in bounded time, nothing written.
      const same = async (name: string, patches: [number, number[]][]) => {
        await t.step(name, async () => {
          await variant(name, patches);
          for (const args of [["info", name], ["convert", ...obj, ...opts(name), "-O", "raw", "o.raw"]]) {
            const q = await qemuImg(args, d);
            const i = await timed(20000, () => instar(args, d));
            const e = asInstar(q);
            assert.deepEqual({ code: i.code, stderr: i.stderr }, { code: e.code, stderr: e.stderr });
          }
          assert.ok(!(await Deno.stat(`${d}/o.raw`).catch(() => null)), "convert left an output file");
        });
      };
      // Key material past the end of the file (the payload moved out of the way too): zeroes, no key.
      await same("slot-past-eof.img", [[104, be32(0x7fffff00)], [SLOT0 + 40, be32(0x7ffff000)]]);
      await same("stripes.img", [[SLOT0 + 44, be32(0xfffffff0)]]);
      await same("stripes-slot7.img", [[SLOT0 + 7 * 48 + 44, be32(0x80000000)]]);
      await same("key-bytes.img", [[108, be32(0x7fffffff)]]);
      await same("cipher-name.img", [[8, [...new TextEncoder().encode("a".repeat(32))]]]);
      await same("mode-string.img", [[40, [...new TextEncoder().encode("xts"), 0]]]);
      await same("hash.img", [[72, [...new TextEncoder().encode("whirlpool"), 0]]]);
      await same("mk-iters-zero.img", [[164, be32(0)]]);
      await same("overlap.img", [[SLOT0 + 48 + 40, be32(8)]]);
      // Iteration counts that would keep qemu-img busy for hours: instar stops at its bound.
      for (const [name, at] of [["slot-iters.img", SLOT0 + 4], ["mk-iters.img", 164]] as const) {
        await t.step(name, async () => {
          await variant(name, [[at, be32(0xffffffff)]]);
          const i = await timed(
            20000,
            () => instar(["convert", ...obj, ...opts(name), "-O", "raw", "o.raw"], d),
          );
          assert.equal(i.code, 1, i.stderr);
          assert.match(i.stderr, /asks for 4294967295 PBKDF2 iterations, more than instar allows/);
          assert.ok(!(await Deno.stat(`${d}/o.raw`).catch(() => null)), "convert left an output file");
        });
      }
    } finally {
      await Deno.remove(d, { recursive: true });
    }
  },
});
