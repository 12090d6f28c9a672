// instar resize of vpc (VHD) and vhdx images, which qemu-img 7.2 refuses to
// resize ("Image format driver does not support resize"). Images are made
// here by qemu-img and qemu-io; after each resize:
//   - `qemu-img info` reports the new virtual size, computed the way qemu
//     computes it from the new header (vpc: CHS product or current_size by
//     creator app; vhdx: the virtual disk size item), and that size is the
//     planner's rounding of the request;
//   - `qemu-img check` of a vhdx is clean;
//   - the guest data below the old size (below the new size on a shrink),
//     flattened with `qemu-img convert -O raw`, is unchanged, and a grown
//     range reads as zeroes.
// Grows past the BAT's room move the BAT to the end of the file; qemu-io
// then reads the old data and writes and reads blocks past the old size
// (allocated after the moved BAT), and libvhdi's vhdiinfo reads the new
// size. Refusals (a header sequence number near 2^64, a shrink
// over allocated blocks or without --shrink, preallocation) exit 1 with the
// file's bytes unchanged.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { vpcRoundedSize } from "../lib/formats/vpc/create_plan.ts";
import { storeCrc32c } from "../lib/formats/vhdx/crc32c.ts";
import { digest, fileSha256 as sha256, isZero } from "./support/bytes.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();
const MiB = 1024 * 1024;

async function info(path: string, fmt: string, dir: string): Promise<Record<string, unknown>> {
  const o = await qemuImg(["info", "-f", fmt, "--output=json", path], dir);
  assertEquals(o.code, 0, o.stderr);
  return JSON.parse(o.stdout);
}

async function flat(path: string, fmt: string, dir: string, out: string): Promise<Uint8Array> {
  await sh(dir, "qemu-img", "convert", "-f", fmt, "-O", "raw", path, out);
  return await Deno.readFile(`${dir}/${out}`);
}

/** The virtual size qemu 7.2's vpc_open derives from the footer of `file`. */
async function vpcSizeFromFooter(file: string, fixed: boolean): Promise<bigint> {
  const b = await Deno.readFile(file);
  const f = fixed ? b.subarray(b.length - 512) : b.subarray(0, 512);
  const dv = new DataView(f.buffer, f.byteOffset, 512);
  const creator = String.fromCharCode(...f.subarray(28, 32));
  const cur = dv.getBigUint64(48);
  const chs = BigInt(dv.getUint16(56)) * BigInt(f[58]) * BigInt(f[59]);
  const byFooter = ["win ", "qem2", "d2v ", "CTXS", "tap\0"].includes(creator) || chs === 65535n * 16n * 255n;
  return byFooter ? (cur / 512n) * 512n : chs * 512n;
}

/** A size in qemu's suffix notation, as bytes. */
function bytesOf(s: string): bigint {
  const m = /^(\d+)([kMGT]?)$/.exec(s)!;
  return BigInt(m[1]) * ({ "": 1n, k: 1024n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n }[m[2]] as bigint);
}

interface Case {
  name: string;
  fmt: "vpc" | "vhdx";
  create: string[];
  size: string;
  /** qemu-io writes (offset, length in bytes) with pattern 0x5a + i. */
  writes: [number, number][];
  to: string; // absolute new size
  shrink?: boolean;
}

const CASES: Case[] = [
  {
    name: "vpc dynamic grow",
    fmt: "vpc",
    create: [],
    size: "10M",
    writes: [[0, 3 * MiB], [9 * MiB, MiB]],
    to: "110M",
  },
  // CHS rounding: neither size is a whole cylinder count
  {
    name: "vpc dynamic odd grow",
    fmt: "vpc",
    create: [],
    size: "100001k",
    writes: [[0, MiB], [96 * MiB, MiB]],
    to: "150001k",
  },
  {
    name: "vpc dynamic odd grow 2",
    fmt: "vpc",
    create: [],
    size: "33333k",
    writes: [[30 * MiB, MiB]],
    to: "77777k",
  },
  {
    name: "vpc dynamic force_size grow",
    fmt: "vpc",
    create: ["-o", "force_size=on"],
    size: "10000k",
    writes: [[0, MiB]],
    to: "100001k",
  },
  {
    name: "vpc dynamic shrink",
    fmt: "vpc",
    create: [],
    size: "100M",
    writes: [[0, 3 * MiB]],
    to: "10M",
    shrink: true,
  },
  {
    name: "vpc fixed grow",
    fmt: "vpc",
    create: ["-o", "subformat=fixed"],
    size: "10M",
    writes: [[0, MiB], [9 * MiB, MiB]],
    to: "17M",
  },
  {
    name: "vpc fixed odd grow",
    fmt: "vpc",
    create: ["-o", "subformat=fixed"],
    size: "3333k",
    writes: [[0, MiB]],
    to: "5555k",
  },
  {
    name: "vpc fixed force_size shrink",
    fmt: "vpc",
    create: ["-o", "subformat=fixed,force_size=on"],
    size: "20M",
    writes: [[0, 5 * MiB], [15 * MiB, MiB]],
    to: "7M",
    shrink: true,
  },
  ...["1M", "8M", "32M", "256M"].map((bs): Case => ({
    name: `vhdx block_size=${bs} grow`,
    fmt: "vhdx",
    create: ["-o", `block_size=${bs}`],
    size: "100M",
    writes: [[0, 2 * MiB], [99 * MiB, MiB]],
    to: "300M",
  })),
  {
    name: "vhdx log_size=4M odd grow",
    fmt: "vhdx",
    create: ["-o", "log_size=4M"],
    size: "10001k",
    writes: [[0, MiB]],
    to: "50003k",
  },
  {
    name: "vhdx block_size=1M shrink",
    fmt: "vhdx",
    create: ["-o", "block_size=1M"],
    size: "100M",
    writes: [[0, 3 * MiB]],
    to: "50M",
    shrink: true,
  },
  {
    name: "vhdx block_size=32M shrink inside allocated",
    fmt: "vhdx",
    create: ["-o", "block_size=32M"],
    size: "100M",
    writes: [[0, 3 * MiB], [40 * MiB, MiB]],
    to: "70M",
    shrink: true,
  },
];

Deno.test({ name: "resize of vpc and vhdx images qemu-img made", ignore: !ready }, async (t) => {
  for (const c of CASES) {
    await t.step(c.name, async () => {
      const dir = await Deno.makeTempDir({ prefix: "instar-resize-vhd-" });
      try {
        const file = `img.${c.fmt === "vpc" ? "vhd" : "vhdx"}`;
        await sh(dir, "qemu-img", "create", "-q", "-f", c.fmt, ...c.create, file, c.size);
        for (const [i, [off, len]] of c.writes.entries()) {
          await sh(dir, "qemu-io", "-f", c.fmt, "-c", `write -P ${0x5a + i} ${off} ${len}`, file);
        }
        const oldSize = BigInt((await info(file, c.fmt, dir))["virtual-size"] as number);
        const before = await flat(file, c.fmt, dir, "before.raw");
        const args = ["resize", "-f", c.fmt, ...(c.shrink ? ["--shrink"] : []), file, c.to];
        const r = await instarHere(args, dir);
        assertEquals(r, { stdout: "Image resized.\n", stderr: "", code: 0 }, `instar ${args.join(" ")}`);

        const got = BigInt((await info(file, c.fmt, dir))["virtual-size"] as number);
        let want = bytesOf(c.to);
        if (c.fmt === "vpc") {
          const fixed = c.create.some((o) => o.includes("subformat=fixed"));
          // what qemu derives from the new footer, and the planner's rounding of the request
          assertEquals(got, await vpcSizeFromFooter(`${dir}/${file}`, fixed));
          const force = c.create.some((o) => o.includes("force_size=on"));
          const rounded = vpcRoundedSize(want, force);
          assert(rounded.ok);
          want = rounded.value.size;
        }
        assertEquals(got, want);
        if (c.fmt === "vhdx") {
          const chk = await qemuImg(["check", "-f", "vhdx", file], dir);
          assertEquals(chk.code, 0, chk.stdout + chk.stderr);
          assert(chk.stdout.includes("No errors were found on the image."), chk.stdout);
        }
        const after = await flat(file, c.fmt, dir, "after.raw");
        assertEquals(BigInt(after.length), got);
        const keep = Number(oldSize < got ? oldSize : got);
        assertEquals(
          await digest(after.subarray(0, keep)),
          await digest(before.subarray(0, keep)),
          "data below the old size changed",
        );
        if (got > oldSize) assert(isZero(after.subarray(Number(oldSize))), "grown range not zero");
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});

interface Refusal {
  name: string;
  fmt: "vpc" | "vhdx";
  create: string[];
  size: string;
  writes?: [number, number][];
  prep?: (path: string) => Promise<void>;
  args: string[];
  stderr: RegExp;
}

/** Sets header `slot` (1 or 2) of a VHDX to sequence number `seq`, CRC-32C recomputed. */
async function setVhdxSequence(path: string, slot: 1 | 2, seq: bigint): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const h = new Uint8Array(4096);
    const at = slot * 64 * 1024;
    await f.seek(at, Deno.SeekMode.Start);
    for (let n = 0; n < h.length;) n += (await f.read(h.subarray(n)))!;
    new DataView(h.buffer).setBigUint64(8, seq, true);
    storeCrc32c(h, 4);
    await f.seek(at, Deno.SeekMode.Start);
    for (let n = 0; n < h.length;) n += await f.write(h.subarray(n));
  } finally {
    f.close();
  }
}

const REFUSALS: Refusal[] = [
  {
    name: "vhdx: past qemu's 64 TiB limit",
    fmt: "vhdx",
    create: ["-o", "block_size=1M"],
    size: "8M",
    args: ["65T"],
    stderr: /^instar: Could not resize 'img': Image size too large; max of 64TB\n$/,
  },
  ...[(1n << 64n) - 1n, (1n << 64n) - 2n].map((seq): Refusal => ({
    name: `vhdx: header sequence number ${seq} (seed 002's guard)`,
    fmt: "vhdx",
    create: [],
    size: "8M",
    prep: (p) => setVhdxSequence(p, 1, seq),
    args: ["16M"],
    stderr: /^instar: Could not resize 'img': VHDX header sequence number is too large to update\n$/,
  })),
  {
    name: "vhdx: second header's sequence number 2^64-1",
    fmt: "vhdx",
    create: [],
    size: "8M",
    prep: (p) => setVhdxSequence(p, 2, (1n << 64n) - 1n),
    args: ["--shrink", "4M"],
    stderr: /^instar: Could not resize 'img': VHDX header sequence number is too large to update\n$/,
  },
  {
    name: "vhdx: shrink over an allocated block",
    fmt: "vhdx",
    create: ["-o", "block_size=1M"],
    size: "100M",
    writes: [[60 * MiB, MiB]],
    args: ["--shrink", "50M"],
    stderr:
      /^instar: Could not resize 'img': Shrinking a VHDX image over allocated blocks is not supported\n$/,
  },
  {
    name: "vpc dynamic: shrink over an allocated block",
    fmt: "vpc",
    create: [],
    size: "100M",
    writes: [[60 * MiB, MiB]],
    args: ["--shrink", "50M"],
    stderr:
      /^instar: Could not resize 'img': Shrinking a dynamic VHD over allocated blocks is not supported\n$/,
  },
  ...(["vpc", "vhdx"] as const).map((fmt): Refusal => ({
    name: `${fmt}: shrink without --shrink (qemu's words)`,
    fmt,
    create: [],
    size: "100M",
    args: ["50M"],
    stderr: /^instar: Use the --shrink option to perform a shrink operation\.\ninstar: warning: Shrinking/,
  })),
  ...(["vpc", "vhdx"] as const).map((fmt): Refusal => ({
    name: `${fmt}: --preallocation=full`,
    fmt,
    create: [],
    size: "10M",
    args: ["--preallocation=full", "20M"],
    stderr: new RegExp(
      `^instar: Could not resize 'img': instar does not preallocate when resizing ${fmt} images\n$`,
    ),
  })),
];

Deno.test({ name: "resize of vpc and vhdx refuses cleanly, writing nothing", ignore: !ready }, async (t) => {
  for (const c of REFUSALS) {
    await t.step(c.name, async () => {
      const dir = await Deno.makeTempDir({ prefix: "instar-resize-vhd-" });
      try {
        await sh(dir, "qemu-img", "create", "-q", "-f", c.fmt, ...c.create, "img", c.size);
        for (const [off, len] of c.writes ?? []) {
          await sh(dir, "qemu-io", "-f", c.fmt, "-c", `write -P 0x77 ${off} ${len}`, "img");
        }
        if (c.prep) await c.prep(`${dir}/img`);
        const hash = await sha256(`${dir}/img`);
        const size = c.args[c.args.length - 1];
        const r = await instarHere(["resize", "-f", c.fmt, ...c.args.slice(0, -1), "img", size], dir);
        assertEquals(r.code, 1, r.stderr);
        assertEquals(r.stdout, "");
        assert(c.stderr.test(r.stderr), r.stderr);
        assertEquals(await sha256(`${dir}/img`), hash, "the image changed");
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});

/** qemu-io's output for `cmds` on `file`, which must report no failed verification. */
async function qemuIo(dir: string, fmt: string, file: string, cmds: string[]): Promise<void> {
  const o = await new Deno.Command("qemu-io", {
    args: ["-f", fmt, ...cmds.flatMap((c) => ["-c", c]), file],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
  assertEquals(o.code, 0, text);
  assert(!/fail|error/i.test(text), text);
}

const BAT_MOVES: { name: string; fmt: "vpc" | "vhdx"; create: string[]; size: string; to: string }[] = [
  // qemu pads a VHD BAT to whole sectors: 128 entries of 2 MiB, 256 MiB
  { name: "vpc dynamic 10M -> 10G", fmt: "vpc", create: [], size: "10M", to: "10G" },
  // a VHDX BAT region is 1 MiB: 128 GiB of 1 MiB blocks, ~4 TiB of 32 MiB ones
  {
    name: "vhdx block_size=1M 8M -> 200G",
    fmt: "vhdx",
    create: ["-o", "block_size=1M"],
    size: "8M",
    to: "200G",
  },
  { name: "vhdx block_size=32M 100M -> 10T", fmt: "vhdx", create: [], size: "100M", to: "10T" },
];

Deno.test({ name: "resize of vpc and vhdx moves a BAT that has no room", ignore: !ready }, async (t) => {
  for (const c of BAT_MOVES) {
    await t.step(c.name, async () => {
      const dir = await Deno.makeTempDir({ prefix: "instar-resize-vhd-" });
      try {
        await sh(dir, "qemu-img", "create", "-q", "-f", c.fmt, ...c.create, "img", c.size);
        await qemuIo(dir, c.fmt, "img", ["write -P 0x5a 0 3M", "write -P 0x5b 5M 1M"]);
        const r = await instarHere(["resize", "-f", c.fmt, "img", c.to], dir);
        assertEquals(r, { stdout: "Image resized.\n", stderr: "", code: 0 });
        const size = BigInt((await info("img", c.fmt, dir))["virtual-size"] as number);
        let want = bytesOf(c.to);
        if (c.fmt === "vpc") {
          const rounded = vpcRoundedSize(want, false);
          assert(rounded.ok);
          want = rounded.value.size;
        }
        assertEquals(size, want);
        const far = (size / 2n / (1n << 20n)) * (1n << 20n);
        await qemuIo(dir, c.fmt, "img", [
          "read -P 0x5a 0 3M",
          "read -P 0x5b 5M 1M",
          `read -P 0 ${bytesOf(c.size)} 1M`,
          `write -P 0x77 ${far} 3M`,
          "write -P 0x78 4M 1M",
        ]);
        await qemuIo(dir, c.fmt, "img", [
          "read -P 0x5a 0 3M",
          "read -P 0x78 4M 1M",
          "read -P 0x5b 5M 1M",
          `read -P 0x77 ${far} 3M`,
          `read -P 0 ${far + 3n * (1n << 20n)} 1M`,
        ]);
        if (c.fmt === "vhdx") {
          const chk = await qemuImg(["check", "-f", "vhdx", "img"], dir);
          assertEquals(chk.code, 0, chk.stdout + chk.stderr);
        }
        // an independent reader sees the new size
        const vi = await new Deno.Command("vhdiinfo", { args: ["img"], cwd: dir, stdout: "piped" }).output();
        const media = /Media size\s*:.*\((\d+) bytes\)/.exec(new TextDecoder().decode(vi.stdout));
        assertEquals(media?.[1], String(size));
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});
