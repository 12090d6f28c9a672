// VMDK seSparse extents (and VMFSSPARSE) read as qemu-img 7.2 reads them.
// qemu-img cannot create seSparse, so tests/support/sesparse_image.ts writes
// the structures qemu's vmdk_open_se_sparse reads; every command's output is
// compared with the real qemu-img's, byte for byte:
//   - a disk with data grains in two grain tables, zero and unmapped grains
//     and a partial last grain: info (human, JSON), map (human, JSON), check,
//     measure, convert -O raw|qcow2, compare;
//   - a VMFSSPARSE extent (a qemu-img sparse file under a vmfsSparse
//     descriptor);
//   - qemu opens seSparse read-only: resize, commit, snapshot -c, check -r,
//     amend, bitmap and rebase fail with qemu's words, the files untouched;
//   - every check of the const and volatile headers, with qemu's messages;
//   - hostile grain directory and table entries (offsets past the end of the
//     file, past 2^32 sectors, wrapping, grain indexes near 2^32 and 2^60,
//     reserved type nibbles): what qemu prints, or qemu's failure as one
//     line with nothing written, in bounded time.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { assertSameHere, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { digest } from "./support/bytes.ts";
import { FULL_TESTS } from "./support/full.ts";
import {
  seAllocatedGte,
  type SeGrain,
  seSparseDescriptor,
  type SeSparseSpec,
  writeSeSparse,
} from "./support/sesparse_image.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();
const GT = 4096; // grains per grain table

/** Grains with data, zeroes and unmapped entries across three grain tables. */
function sampleGrains(): Map<number, SeGrain> {
  return new Map<number, SeGrain>([
    [0, { kind: "data", fill: 0x11 }],
    [1, { kind: "data", fill: 0x22 }],
    [2, { kind: "data", fill: 0x23 }],
    [5, { kind: "zero" }],
    [6, { kind: "unmapped" }],
    [7, { kind: "data", fill: 0x24 }],
    [100, { kind: "data", fill: 0x33 }],
    [GT + 3, { kind: "data", fill: 0x44 }],
    [GT + 4, { kind: "zero" }],
    [2 * GT, { kind: "data", fill: 0x55 }], // the partial last grain of a 65541-sector disk
    [2 * GT + 1, { kind: "unmapped" }], // past that disk's end
  ]);
}

/** qemu-img's and instar's convert -O raw of `name`: equal bytes, or both fail (instar writing nothing). */
async function sameConvert(dir: string, name: string): Promise<void> {
  const q = await qemuImg(["convert", "-O", "raw", name, `${name}.q.raw`], dir);
  const i = await instarHere(["convert", "-O", "raw", name, `${name}.i.raw`], dir);
  assertEquals(i.code, q.code, `convert ${name}: ${i.stderr}`);
  assertEquals(i.stdout, "");
  if (q.code === 0) {
    assertEquals(
      await digest(await Deno.readFile(`${dir}/${name}.i.raw`)),
      await digest(await Deno.readFile(`${dir}/${name}.q.raw`)),
      `convert ${name}`,
    );
    return;
  }
  // qemu: "error while reading block status at offset N" / "at byte N" (and a partial file)
  assert(/^instar: error while reading the source image: Input\/output error\n$/.test(i.stderr), i.stderr);
  assert(!(await exists(`${dir}/${name}.i.raw`)), "nothing written");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test(
  { name: "vmdk seSparse: every read command prints what qemu-img prints", ignore: !ready },
  async (t) => {
    await withTempDir("instar-sesparse-", async (dir) => {
      // 32 MiB + 5 sectors: the last grain is partial, the descriptor's size is ignored (the header's counts)
      writeSeSparse(dir, "se.vmdk", { sectors: 65541n, grains: sampleGrains(), descSectors: 8n });
      for (
        const args of [["info"], ["info", "--output=json"], ["map"], ["map", "--output=json"], ["check"]]
      ) {
        await t.step(`${args.join(" ")}`, async () => {
          const q = await assertSameHere([...args, "se.vmdk"], dir);
          assertEquals(q.code, 0, q.stderr);
        });
      }
      await t.step("check --output=json, map with a range, info -f vmdk", async () => {
        await assertSameHere(["check", "--output=json", "se.vmdk"], dir);
        await assertSameHere([
          "map",
          "--output=json",
          "--start-offset",
          "6144",
          "--max-length",
          "17M",
          "se.vmdk",
        ], dir);
        await assertSameHere(["info", "-f", "vmdk", "--output=json", "se.vmdk"], dir);
      });
      await t.step("measure", async () => {
        await assertSameHere(["measure", "-O", "qcow2", "se.vmdk"], dir);
        await assertSameHere(["measure", "-O", "raw", "se.vmdk"], dir);
      });
      await t.step("convert -O raw: qemu-img's bytes", async () => {
        await sameConvert(dir, "se.vmdk");
      });
      await t.step("compare with qemu-img's raw copy, and with a changed one", async () => {
        await assertSameHere(["compare", "-F", "raw", "se.vmdk", "se.vmdk.q.raw"], dir);
        const b = await Deno.readFile(`${dir}/se.vmdk.q.raw`);
        b[GT * 4096 + 3 * 4096 + 17] ^= 1; // inside grain GT + 3
        await Deno.writeFile(`${dir}/changed.raw`, b);
        const q = await assertSameHere(["compare", "-F", "raw", "se.vmdk", "changed.raw"], dir);
        assertEquals(q.code, 1);
        await assertSameHere(["compare", "-s", "-F", "raw", "se.vmdk", "se.vmdk.q.raw"], dir);
      });
      await t.step("convert -O qcow2: qemu-img finds the same disk", async () => {
        const i = await instarHere(["convert", "-O", "qcow2", "se.vmdk", "se.qcow2"], dir);
        assertEquals(i.code, 0, i.stderr);
        const c = await qemuImg(["compare", "se.vmdk", "se.qcow2"], dir);
        assertEquals(c.stdout, "Images are identical.\n", c.stderr);
      });
    });
  },
);

Deno.test(
  { name: "vmdk seSparse: a VMFSSPARSE extent reads as a sparse extent", ignore: !ready },
  async (t) => {
    await withTempDir("instar-vmfssparse-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", "x-sparse.vmdk", "8M");
      await sh(
        dir,
        "qemu-io",
        "-f",
        "vmdk",
        "-c",
        "write -P 7 1M 64k",
        "-c",
        "write -P 8 7M 4k",
        "x-sparse.vmdk",
      );
      await Deno.writeTextFile(
        `${dir}/vmfs.vmdk`,
        seSparseDescriptor({
          sectors: 16384n,
          createType: "vmfsSparse",
          extentType: "VMFSSPARSE",
          extentName: "x-sparse.vmdk",
        }),
      );
      for (const args of [["info"], ["info", "--output=json"], ["map", "--output=json"], ["check"]]) {
        await t.step(args.join(" "), async () => {
          const q = await assertSameHere([...args, "vmfs.vmdk"], dir);
          assertEquals(q.code, 0, q.stderr);
        });
      }
      await t.step("convert -O raw", async () => {
        await sameConvert(dir, "vmfs.vmdk");
      });
      await t.step("a VMDK3 (COWD) file under a VMFSSPARSE line", async () => {
        // header, descriptor at 0x200, grain directory, one 4096-entry grain table, two 4 KiB grains
        const b = new Uint8Array(35 * 512 + 8192);
        const dv = new DataView(b.buffer);
        b.set(new TextEncoder().encode("COWD"), 0);
        [1, 3, 1024, 8, 2, 1].forEach((v, i) => dv.setUint32(4 + 4 * i, v, true));
        dv.setUint32(1024, 3, true);
        dv.setUint32(1536, 35, true);
        dv.setUint32(1536 + 12, 43, true);
        b.fill(0x5a, 35 * 512, 43 * 512);
        b.fill(0xa5, 43 * 512);
        await Deno.writeFile(`${dir}/cowd-ext.vmdk`, b);
        await Deno.writeTextFile(
          `${dir}/cowd.vmdk`,
          seSparseDescriptor({
            sectors: 1024n,
            createType: "vmfsSparse",
            extentType: "VMFSSPARSE",
            extentName: "cowd-ext.vmdk",
          }),
        );
        for (const args of [["info", "--output=json"], ["map", "--output=json"], ["check"]]) {
          const q = await assertSameHere([...args, "cowd.vmdk"], dir);
          assertEquals(q.code, 0, q.stderr);
        }
        await sameConvert(dir, "cowd.vmdk");
      });
    });
  },
);

Deno.test({ name: "vmdk seSparse: read-write opens fail as qemu's do", ignore: !ready }, async (t) => {
  await withTempDir("instar-sesparse-rw-", async (dir) => {
    writeSeSparse(dir, "se.vmdk", { sectors: 32768n, grains: sampleGrains() });
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "other.qcow2", "16M");
    const before = [
      await digest(await Deno.readFile(`${dir}/se.vmdk`)),
      await digest(await Deno.readFile(`${dir}/x-sesparse.vmdk`)),
    ];
    for (
      const args of [
        ["resize", "se.vmdk", "32M"],
        ["commit", "se.vmdk"],
        ["snapshot", "-c", "s1", "se.vmdk"],
        ["check", "-r", "all", "se.vmdk"],
        ["amend", "-o", "compat6=on", "se.vmdk"],
        ["bitmap", "--add", "se.vmdk", "b0"],
        ["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "se.vmdk"],
      ]
    ) {
      await t.step(args.join(" "), async () => {
        const q = await assertSameHere(args, dir);
        assertEquals(q.code, 1);
        assert(q.stderr.includes("No write support for seSparse images available"), q.stderr);
      });
    }
    await t.step("the files are unchanged; snapshot -l (read-only) opens", async () => {
      assertEquals(
        [
          await digest(await Deno.readFile(`${dir}/se.vmdk`)),
          await digest(await Deno.readFile(`${dir}/x-sesparse.vmdk`)),
        ],
        before,
      );
      await assertSameHere(["snapshot", "-l", "se.vmdk"], dir);
    });
  });
});

Deno.test({ name: "vmdk seSparse: malformed headers fail with qemu's words", ignore: !ready }, async (t) => {
  await withTempDir("instar-sesparse-bad-", async (dir) => {
    const g = sampleGrains();
    const cases: Record<string, Partial<SeSparseSpec>> = {
      magic: { constOverride: { magic: 0xdeadbeefn } },
      version: { constOverride: { version: 0x100000001n } },
      grain: { constOverride: { grain_size: 16n } },
      table: { constOverride: { grain_table_size: 128n } },
      flags: { constOverride: { flags: 0x8000000000000001n } },
      reserved: { constOverride: { reserved2: 0xabcn, reserved4: 1n << 63n } },
      cpad: { constPad: 1 },
      vmagic: { volatileOverride: { magic: 5n } },
      dirty: { volatileOverride: { replay_journal: 1n } },
      vpad: { volatilePad: 7 },
      // offset * 512 past qemu's request limit: a read error naming the extent file
      voloff: { constOverride: { volatile_header_offset: 1n << 54n } },
      // offset * 512 wrapping to 0: the const header read as the volatile one
      volwrap: { constOverride: { volatile_header_offset: 1n << 55n } },
      voleof: { constOverride: { volatile_header_offset: 100000n } },
      gdbig: { constOverride: { grain_dir_size: (1n << 22n) + 1n } },
      gdneg: { constOverride: { grain_dir_offset: 1n << 54n } },
      gdmax: { constOverride: { grain_dir_offset: 0x7fffffffc0000000n / 512n } },
    };
    for (const [name, c] of Object.entries(cases)) {
      writeSeSparse(dir, `${name}.vmdk`, { sectors: 65536n, grains: g, extentName: `${name}-se.vmdk`, ...c });
      await t.step(name, async () => {
        const q = await assertSameHere(["info", `${name}.vmdk`], dir);
        assertEquals(q.code, 1);
        await assertSameHere(["map", "--output=json", `${name}.vmdk`], dir);
      });
    }
    await t.step("an extent named in a subdirectory is named so in the error", async () => {
      await Deno.mkdir(`${dir}/sub`);
      writeSeSparse(dir, "subdir.vmdk", {
        sectors: 65536n,
        extentName: "sub/s-se.vmdk",
        constOverride: { volatile_header_offset: 1n << 54n },
      });
      const q = await assertSameHere(["info", "subdir.vmdk"], dir);
      assert(q.stderr.includes("'sub/s-se.vmdk'"), q.stderr);
    });
  });
});

Deno.test(
  { name: "vmdk seSparse: hostile table entries as qemu-img reads them", ignore: !ready },
  async (t) => {
    await withTempDir("instar-sesparse-rows-", async (dir) => {
      const g = sampleGrains;
      const raw = (entries: [number, bigint][]) =>
        new Map<number, SeGrain>(entries.map(([i, gte]) => [i, { kind: "raw", gte }]));
      const cases: Record<string, Partial<SeSparseSpec>> = {
        gd_wrong_type: { grains: g(), gdOverride: new Map([[0, 0x2000000000000000n]]) },
        gd_index_2_32: { grains: g(), gdOverride: new Map([[1, 0x10000000ffffffffn]]) },
        gd_past_eof: { grains: g(), constOverride: { grain_dir_offset: 1000000n } },
        gd_wraps_to_0: { grains: g(), constOverride: { grain_dir_offset: 1n << 55n } },
        gd_size_wraps: { grains: g(), constOverride: { grain_dir_size: (1n << 55n) + 1n } },
        gd_size_0: { grains: g(), constOverride: { grain_dir_size: 0n } },
        tables_near_2_32: { grains: g(), constOverride: { grain_tables_offset: 0xfffffff0n } },
        tables_at_0: { grains: g(), constOverride: { grain_tables_offset: 0n } },
        tables_wrap: { grains: g(), constOverride: { grain_tables_offset: -64n } },
        tables_past_eof: { grains: g(), constOverride: { grain_tables_offset: 0xffff0000n } },
        grains_2_63: { grains: g(), constOverride: { grains_offset: 1n << 54n } },
        grains_wrap: { grains: g(), constOverride: { grains_offset: -8n } },
        gte_low_bits: { grains: raw([[0, 5n], [1, seAllocatedGte(0n)]]) },
        gte_types: {
          grains: raw([[2, 0x1000000000000123n], [9, 0x2fffffffffffffffn], [12, 0x4000000000000000n]]),
        },
        gte_type_f: { grains: raw([[3, 0xf000000000000000n]]) },
        gte_index_2_32: {
          grains: raw([[2, seAllocatedGte(0xffffffffn)], [3, seAllocatedGte(0x100000000n)]]),
        },
        gte_index_2_60: { grains: raw([[2, 0x3fffffffffffffffn], [3, 0x3000000100000000n]]) },
        gte_past_eof: { grains: raw([[2, seAllocatedGte(16n)]]) },
        capacity_past_gd: { grains: g(), sectors: 1n << 50n, gdEntries: 4 },
      };
      // 16 MiB + 20 KiB: two grain directory entries, the second one with data and zero grains
      const sectors = 32808n;
      await Deno.writeFile(`${dir}/zero.raw`, new Uint8Array(Number(sectors) * 512));
      for (const [name, c] of Object.entries(cases)) {
        writeSeSparse(dir, `${name}.vmdk`, { sectors, extentName: `${name}-se.vmdk`, ...c });
        await t.step(name, async () => {
          const t0 = Date.now();
          // the default run: block status (map), the check walk, the read path (convert); the rest whole
          // with INSTAR_FULL_TESTS=1
          const img = `${name}.vmdk`;
          for (
            const args of FULL_TESTS
              ? [["info"], ["map"], ["map", "--output=json"], ["check"]]
              : [["map", "--output=json"], ["check"]]
          ) {
            await assertSameHere([...args, img], dir);
          }
          if (name !== "capacity_past_gd") {
            if (FULL_TESTS) await assertSameHere(["compare", "-F", "raw", img, "zero.raw"], dir);
            await sameConvert(dir, img);
          }
          assert(Date.now() - t0 < 60_000, `${name} took ${Date.now() - t0} ms`);
        });
      }
    });
  },
);

Deno.test(
  { name: "vmdk seSparse: a 64 TiB disk of empty tables in bounded time", ignore: !ready },
  async () => {
    // qemu-img walks it grain by grain (2^34 grains, hours); instar skips each
    // directory entry without a table. The answers are qemu's for such a disk.
    await withTempDir("instar-sesparse-big-", async (dir) => {
      const sectors = 1n << 37n;
      writeSeSparse(dir, "big.vmdk", { sectors, gdEntries: 8, constOverride: { grain_dir_size: 1n << 16n } });
      const t0 = Date.now();
      const info = await qemuImg(["info", "--output=json", "big.vmdk"], dir);
      assertEquals(JSON.parse(info.stdout)["virtual-size"], Number(sectors * 512n));
      await assertSameHere(["info", "big.vmdk"], dir);
      const c = await instarHere(["check", "big.vmdk"], dir);
      assertEquals(c, { code: 0, stdout: "No errors were found on the image.\n", stderr: "" });
      const m = await instarHere(["map", "--output=json", "big.vmdk"], dir);
      assertEquals(
        m.stdout,
        `[{ "start": 0, "length": ${
          sectors * 512n
        }, "depth": 0, "present": false, "zero": true, "data": false}]\n`,
      );
      assert(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
    });
  },
);
