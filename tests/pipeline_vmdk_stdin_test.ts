// `cat x.vmdk | instar convert -f vmdk - OUT` (docs/pipelines.md): a
// streamOptimized stream is read in one pass (lib/convert/stdin_vmdk.ts,
// guest/vmdk/stream.c), through real pipes. The streams come from qemu-img
// (tables in the header region) and from the independent VMDKstream writer
// (grain tables, directory and footer after the grains). The raw output is
// compared with `cmp` to instar's and qemu-img's file-to-file convert, the
// qcow2 output with `qemu-img compare` and `check`; windows of 1 MiB cut the
// stream (and the disk) several times. It does not spool: a `--max-spool`
// far below the stream's size still converts (the spooled path refuses it,
// as the monolithicSparse case shows). Truncated and hostile streams end
// with one line on stderr, exit 1 and no output file.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { oneLine, pipeline, spoolEmpty, streamOptimized } from "./support/pipeline.ts";

const PYTHON = "/usr/bin/python3"; // Debian's, with the VMDKstream module (scripts/deps.sh)

function haveVmdkStream(): boolean {
  try {
    return new Deno.Command(PYTHON, { args: ["-c", "import VMDKstream"], stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

const ready = built() && haveQemuImg() && haveVmdkStream();

async function ok(dir: string, script: string, env: Record<string, string> = {}) {
  const r = await pipeline(dir, script, env, "null");
  assertEquals(r.code, 0, `${script}: ${r.stderr}`);
  assertEquals(r.stderr, "", script);
}

/** One line on stderr matching `re`, exit 1, no stack trace, no output file, nothing in the spool directory. */
async function refused(dir: string, script: string, re: RegExp, out = "bad.raw", alone = true) {
  const r = await pipeline(dir, script, {}, "null");
  assertEquals(r.code, 1, `${script}: ${r.stderr}`);
  oneLine(r.stderr, re);
  assert(!exists(`${dir}/${out}`), `${script} left ${out}`);
  if (alone) spoolEmpty(dir);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** A 5 MiB + 1536-byte disk (the last grain partial): random data, zeroes, a repeated byte, data at the end. */
async function source(dir: string) {
  await Deno.mkdir(`${dir}/spool`);
  const size = (5 << 20) + 1536;
  const b = new Uint8Array(size);
  crypto.getRandomValues(b.subarray(0, 65536));
  b.subarray(65536, 1 << 20).set(b.subarray(0, 65536).subarray(0, 4096)); // compressible but not zero
  b.fill(1, 3 << 20, (3 << 20) + 300_000);
  crypto.getRandomValues(b.subarray(size - 5000));
  await Deno.writeFile(`${dir}/src.raw`, b);
  await streamOptimized(dir, "src.raw", "q.vmdk", "raw");
  await sh(dir, PYTHON, "-c", "import VMDKstream; VMDKstream.convert_to_stream('src.raw', 'v.vmdk')");
  await sh(dir, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", "q.vmdk", "qemu_q.raw");
  await sh(dir, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", "v.vmdk", "qemu_v.raw");
}

/** Stream offsets of the markers in a streamOptimized file (the test's own walk, for patching). */
function markers(b: Uint8Array): { at: number; lba: bigint; size: number; type: number }[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = [];
  for (let at = Number(v.getBigUint64(4 + 60, true)) * 512; at + 512 <= b.length;) {
    const lba = v.getBigUint64(at, true), size = v.getUint32(at + 8, true);
    if (size) {
      out.push({ at, lba, size, type: -1 });
      at += Math.ceil((12 + size) / 512) * 512;
    } else {
      const type = v.getUint32(at + 12, true);
      out.push({ at, lba, size, type });
      if (type === 0) break;
      at += 512 + Number(lba) * 512;
    }
  }
  return out;
}

Deno.test({
  name: "a streamOptimized stream converts in one pass, as the file does (qemu-img's and VMDKstream's)",
  ignore: !ready,
  fn: async () => {
    await withTempDir("instar-vmdkpipe-", async (dir) => {
      await source(dir);
      const w1 = { INSTAR_STREAM_WINDOW_MIB: "1" };
      // --max-spool 4096: the stream is never spooled (a spool would refuse it).
      await ok(dir, "$I convert -f vmdk -O raw q.vmdk file_q.raw");
      await sh(dir, "cmp", "file_q.raw", "qemu_q.raw");
      for (const img of ["q", "v"]) {
        await sh(dir, "cmp", `qemu_${img}.raw`, "src.raw");
        // 1 MiB windows: the stream and the disk are cut several times.
        await ok(dir, `cat ${img}.vmdk | $I convert --max-spool 4096 -f vmdk -O raw - p_${img}.raw`, w1);
        await sh(dir, "cmp", `p_${img}.raw`, "file_q.raw");
        await sh(dir, "cmp", `p_${img}.raw`, `qemu_${img}.raw`);
        await ok(dir, `cat ${img}.vmdk | $I convert --max-spool 4096 -f vmdk -O qcow2 - p_${img}.qcow2`, w1);
        await sh(dir, "qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", "src.raw", `p_${img}.qcow2`);
        await sh(dir, "qemu-img", "check", "-q", `p_${img}.qcow2`);
      }
      // -c and small clusters: the convert guest packs what the stream guest decoded.
      await ok(dir, "cat v.vmdk | $I convert -f vmdk -O qcow2 -c -o cluster_size=4096 - pc.qcow2", w1);
      await sh(dir, "qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", "src.raw", "pc.qcow2");
      await sh(dir, "qemu-img", "check", "-q", "pc.qcow2");
      // Within one window the qcow2 is the file-to-file convert's, byte for byte.
      await ok(dir, "cat q.vmdk | $I convert -f vmdk -O qcow2 - one.qcow2");
      await ok(dir, "$I convert -f vmdk -O qcow2 q.vmdk file_q.qcow2");
      await sh(dir, "cmp", "one.qcow2", "file_q.qcow2");
      assertEquals([...Deno.readDirSync(`${dir}/spool`)].map((e) => e.name), []);
    });
  },
});

Deno.test({
  name: "other vmdk subformats from stdin are still spooled (--max-spool applies)",
  ignore: !ready,
  fn: async () => {
    await withTempDir("instar-vmdkpipe-", async (dir) => {
      await source(dir);
      await sh(dir, "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "src.raw", "m.vmdk");
      await ok(dir, "cat m.vmdk | $I convert -f vmdk -O raw - m.raw");
      await sh(dir, "cmp", "m.raw", "src.raw");
      await refused(dir, "cat m.vmdk | $I convert --max-spool 4096 -f vmdk -O raw - bad.raw", /spool limit/);
    });
  },
});

Deno.test({
  name: "a truncated or hostile vmdk stream: one line, exit 1, no output",
  ignore: !ready,
  fn: async () => {
    await withTempDir("instar-vmdkpipe-", async (dir) => {
      await source(dir);
      const v = await Deno.readFile(`${dir}/v.vmdk`);
      const ms = markers(v);
      const grains = ms.filter((m) => m.type === -1);
      const gt = ms.find((m) => m.type === 1)!, footer = ms.find((m) => m.type === 3)!;
      assert(grains.length > 4 && gt && footer);
      const write = (name: string, b: Uint8Array) => Deno.writeFile(`${dir}/${name}`, b);
      const patched = async (name: string, src: Uint8Array, edit: (d: DataView) => void) => {
        const b = src.slice();
        edit(new DataView(b.buffer));
        await write(name, b);
      };
      /** [stream file (or a shell command), target format, the error it must give] */
      const cases: [string, string, RegExp][] = [];
      // Mid-header (the spool path's words), mid-grain, before the tables, before the footer's sector;
      // 1 MiB windows for some (the truncation found in a later window).
      const ends = [400, grains[1].at + 100, gt.at, footer.at + 512];
      for (const [i, n] of ends.entries()) {
        await write(`t${i}.vmdk`, v.subarray(0, n));
        cases.push([
          `cat t${i}.vmdk | INSTAR_STREAM_WINDOW_MIB=${i % 2 ? 1 : 128}`,
          i === 1 ? "qcow2" : "raw",
          n < 512 ? /Could not open '-': / : /Could not open '-': .*(ended|Invalid footer).*/,
        ]);
      }
      const cap = BigInt((5 << 20) + 1536) / 512n;
      // A grain past the disk's end, one out of order, a huge compressed size, a deflate stream that does
      // not hold a whole grain, a bad marker type, a footer that disagrees with the header.
      await patched("lba.vmdk", v, (d) => d.setBigUint64(grains[2].at, cap + 128n, true));
      cases.push(["cat lba.vmdk |", "raw", /not a grain of the/]);
      await patched("order.vmdk", v, (d) => d.setBigUint64(grains[2].at, 0n, true));
      cases.push(["cat order.vmdk |", "raw", /disk order/]);
      await patched("huge.vmdk", v, (d) => d.setUint32(grains[2].at + 8, 0x7fffffff, true));
      cases.push(["cat huge.vmdk |", "qcow2", /larger than a grain/]);
      await patched("short.vmdk", v, (d) => d.setUint32(grains[0].at + 8, 20, true));
      cases.push(["cat short.vmdk |", "raw", /does not inflate to a whole grain/]);
      await patched("type.vmdk", v, (d) => d.setUint32(gt.at + 12, 9, true));
      cases.push(["cat type.vmdk |", "raw", /unknown or malformed marker/]);
      await patched("foot.vmdk", v, (d) => d.setBigUint64(footer.at + 512 + 12, cap * 2n, true));
      cases.push(["cat foot.vmdk |", "raw", /Invalid footer/]);
      // Bytes after the end-of-stream marker of a footer-at-end stream: qemu would not find the footer.
      cases.push(["(cat v.vmdk; echo more) |", "raw", /Invalid footer/]);
      // qemu-img's streams keep their grain tables in the header region, and qemu reads the disk through
      // them: a grain that is not where its table says, or a table naming a grain the stream lacks, is refused.
      const q = await Deno.readFile(`${dir}/q.vmdk`);
      const qv = new DataView(q.buffer);
      const gtAt = qv.getUint32(Number(qv.getBigUint64(56, true)) * 512, true) * 512;
      await patched("swap.vmdk", q, (d) => {
        const a = d.getUint32(gtAt, true);
        d.setUint32(gtAt, d.getUint32(gtAt + 4, true), true);
        d.setUint32(gtAt + 4, a, true);
      });
      cases.push(["cat swap.vmdk |", "raw", /not where the grain tables say/]);
      await patched("extra.vmdk", q, (d) => d.setUint32(gtAt + 40 * 4, d.getUint32(gtAt, true), true));
      cases.push(["cat extra.vmdk |", "raw", /grain tables name \d+ grains, the stream holds/]);
      // qemu-img's streams may end after their last grain (no end-of-stream marker): cut at a grain's start.
      await write("qcut.vmdk", q.subarray(0, markers(q).filter((m) => m.type === -1)[3].at));
      cases.push([
        "cat qcut.vmdk |",
        "qcow2",
        /tables name \d+ grains, the stream holds 3; did the stream end early/,
      ]);
      // Three at a time (each is a process of its own), each with its own output name.
      for (let i = 0; i < cases.length; i += 3) {
        await Promise.all(
          cases.slice(i, i + 3).map(([input, fmt, re], k) => {
            const out = `bad${i + k}.${fmt}`;
            return refused(dir, `${input} $I convert -f vmdk -O ${fmt} - ${out}`, re, out, false);
          }),
        );
        spoolEmpty(dir);
      }
    });
  },
});
