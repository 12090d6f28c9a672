// Reading VMDK: for every subformat qemu-img creates (data written by
// qemu-io, zeroed grains included), streamOptimized from qemu-img and from
// the independent VMDKstream writer, adapter types, hwversions and a
// multi-extent image over 2 GiB, instar's info (human and JSON), check and
// map (human and JSON) print what qemu-img 7.2 prints, convert -O raw|qcow2
// writes the same disk and compare agrees. Hostile descriptors and headers
// fail as qemu-img fails.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { assertSame, built, exec, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";
import { sameBytes } from "./support/bytes.ts";

const ready = built() && haveQemuImg();
/** Debian's python3 (with the VMDKstream module); `python3` on PATH may be another. */
const PYTHON = "/usr/bin/python3";

function haveVmdkStream(): boolean {
  try {
    return new Deno.Command(PYTHON, { args: ["-c", "import VMDKstream"], stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

/** The multi-extent images over 2 GiB. */
const BIG = ["split.vmdk", "splitflat.vmdk"];

/** Images of every subformat, each with data; names and their qemu-io writes. */
async function makeImages(dir: string): Promise<string[]> {
  const list: [string, string[], string, string[]][] = [
    ["sparse.vmdk", [], "20M", ["write -P 1 0 1M", "write -P 2 5M 64k", "write -P 3 9000k 3k"]],
    [
      "zeroed.vmdk",
      ["-o", "zeroed_grain=on,adapter_type=lsilogic,hwversion=7"],
      "8M",
      ["write -P 4 0 2M", "write -z 512k 512k", "write -z 6M 1M"],
    ],
    ["compat6.vmdk", ["-o", "compat6=on,adapter_type=buslogic"], "3M", ["write -P 5 1M 100k"]],
    ["flat.vmdk", ["-o", "subformat=monolithicFlat,adapter_type=legacyESX"], "6M", ["write -P 6 2M 1M"]],
    ["split.vmdk", ["-o", "subformat=twoGbMaxExtentSparse"], "5G", [
      "write -P 7 2047M 2M",
      "write -P 8 4G 64k",
    ]],
    ["splitflat.vmdk", ["-o", "subformat=twoGbMaxExtentFlat"], "3G", ["write -P 9 2047M 2M"]],
  ];
  const out: string[] = [];
  for (const [name, opts, size, writes] of list) {
    await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", ...opts, name, size);
    await sh(dir, "qemu-io", "-f", "vmdk", ...writes.flatMap((w) => ["-c", w]), name);
    out.push(name);
  }
  // streamOptimized: qemu-img's writer (convert) and VMDKstream's.
  await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "src.raw", "7M");
  await sh(dir, "qemu-io", "-f", "raw", "-c", "write -P 10 0 1M", "-c", "write -P 11 3M 100k", "src.raw");
  await sh(
    dir,
    "qemu-img",
    "convert",
    "-f",
    "raw",
    "-O",
    "vmdk",
    "-o",
    "subformat=streamOptimized",
    "src.raw",
    "so.vmdk",
  );
  out.push("so.vmdk");
  if (haveVmdkStream()) {
    const py = await exec(PYTHON, [
      "-c",
      "import VMDKstream; VMDKstream.convert_to_stream('src.raw', 'vs.vmdk')",
    ], dir);
    assertEquals(py.code, 0, py.stderr);
    out.push("vs.vmdk");
  }
  return out;
}

Deno.test({ name: "vmdk: info, check and map print what qemu-img prints", ignore: !ready }, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "instar-vmdk-" });
  try {
    for (const name of await makeImages(dir)) {
      for (
        const args of [["info"], ["info", "--output=json"], ["check"], ["map"], ["map", "--output=json"]]
      ) {
        await t.step(`${args.join(" ")} ${name}`, async () => {
          await assertSame([...args, name], dir);
        });
      }
      await t.step(`info -f vmdk --output=json ${name}`, async () => {
        await assertSame(["info", "-f", "vmdk", "--output=json", name], dir);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "vmdk: convert and compare read the disk qemu-img reads", ignore: !ready }, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "instar-vmdk-conv-" });
  try {
    for (const name of await makeImages(dir)) {
      if (BIG.includes(name)) {
        // Over 2 GiB: compared through qemu-img, not hashed.
        await t.step(`convert -O qcow2 ${name}`, async () => {
          const i = await instar(["convert", "-O", "qcow2", name, `${name}.i.qcow2`], dir);
          assertEquals(i.code, 0, i.stderr);
          const c = await qemuImg(["compare", "-F", "qcow2", name, `${name}.i.qcow2`], dir);
          assertEquals(c.stdout, "Images are identical.\n");
        });
        continue;
      }
      await t.step(`convert -O raw ${name}`, async () => {
        await sh(dir, "qemu-img", "convert", "-O", "raw", name, `${name}.q.raw`);
        const i = await instar(["convert", "-O", "raw", name, `${name}.i.raw`], dir);
        assertEquals(i.code, 0, i.stderr);
        assert(await sameBytes(`${dir}/${name}.i.raw`, `${dir}/${name}.q.raw`));
      });
      await t.step(`compare ${name} with its raw copy`, async () => {
        await assertSame(["compare", "-F", "raw", name, `${name}.q.raw`], dir);
      });
    }
    for (const name of ["so.vmdk", "zeroed.vmdk"]) {
      await t.step(`convert -O qcow2 ${name}; measure`, async () => {
        const out = `${name}.i.qcow2`;
        const i = await instar(["convert", "-O", "qcow2", name, out], dir);
        assertEquals(i.code, 0, i.stderr);
        const c = await qemuImg(["compare", "-f", "raw", "-F", "qcow2", `${name}.q.raw`, out], dir);
        assertEquals(c.stdout, "Images are identical.\n");
        assertEquals((await qemuImg(["check", out], dir)).code, 0);
        await assertSame(["measure", "-O", "qcow2", name], dir);
      });
    }
    await t.step("compare across subformats, and a mismatch", async () => {
      await assertSame(["compare", "so.vmdk", "src.raw", "-F", "raw"], dir);
      await assertSame(["compare", "split.vmdk", "splitflat.vmdk"], dir);
      await assertSame(["compare", "split.vmdk", "split.vmdk.i.qcow2"], dir);
      await assertSame(["compare", "sparse.vmdk", "zeroed.vmdk"], dir);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Writes `text` as a descriptor file. */
function desc(dir: string, name: string, extents: string, createType = "monolithicFlat", extra = ""): void {
  Deno.writeTextFileSync(
    `${dir}/${name}`,
    `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n${extra}createType="${createType}"\n\n` +
      `# Extent description\n${extents}\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "ide"\n`,
  );
}

Deno.test(
  { name: "vmdk: descriptors and headers qemu refuses fail with qemu's words", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-vmdk-bad-" });
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "d-flat.vmdk", "1M");
      await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", "s.vmdk", "4M");
      await sh(dir, "qemu-io", "-f", "vmdk", "-c", "write -P 1 64k 64k", "s.vmdk");
      await sh(
        dir,
        "qemu-img",
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "s.vmdk",
        "so.vmdk",
      );
      desc(dir, "type.vmdk", 'RW 2048 FLAT "d-flat.vmdk" 0', "fancyType");
      desc(dir, "line.vmdk", 'RW 2048 FLAT "d-flat.vmdk"');
      desc(dir, "missing.vmdk", 'RW 2048 FLAT "nothere.vmdk" 0');
      desc(dir, "rdonly.vmdk", 'RDONLY 2048 FLAT "d-flat.vmdk" 0\nRW 1024 FLAT "d-flat.vmdk" 1024');
      desc(dir, "vmfs.vmdk", 'RW 2048 VMFS "d-flat.vmdk"', "vmfs");
      desc(dir, "notvmdk.vmdk", 'RW 2048 SPARSE "d-flat.vmdk"', "twoGbMaxExtentSparse");
      Deno.writeTextFileSync(
        `${dir}/nocid.vmdk`,
        'version=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "d-flat.vmdk" 0\n',
      );
      const patch = (src: string, dst: string, at: number, bytes: number[]) => {
        const b = Deno.readFileSync(`${dir}/${src}`);
        b.set(bytes, at);
        Deno.writeFileSync(`${dir}/${dst}`, b);
      };
      patch("s.vmdk", "version.vmdk", 4, [4]);
      patch("s.vmdk", "gtes.vmdk", 4 + 40, [0, 4]); // 1024 entries per grain table
      patch("s.vmdk", "gran.vmdk", 4 + 16, [0, 0, 0x40]); // 0x400000-sector grains
      patch("s.vmdk", "trunc.vmdk", 4 + 60, [0, 0, 0, 1]); // grain_offset past the file
      const so = Deno.statSync(`${dir}/so.vmdk`).size;
      patch("so.vmdk", "footer.vmdk", so - 1024 + 12, [9]); // end-of-stream marker type
      for (
        const name of [
          "type.vmdk",
          "line.vmdk",
          "missing.vmdk",
          "rdonly.vmdk",
          "vmfs.vmdk",
          "notvmdk.vmdk",
          "nocid.vmdk",
          "version.vmdk",
          "gtes.vmdk",
          "gran.vmdk",
          "trunc.vmdk",
          "footer.vmdk",
        ]
      ) {
        for (const cmd of ["info", "map"]) {
          await t.step(`${cmd} ${name}`, async () => {
            await assertSame([cmd, name], dir);
          });
        }
      }
      await t.step("parentFileNameHint: info prints it as qemu-img does, nothing follows it", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", "-b", "s.vmdk", "-F", "vmdk", "child.vmdk");
        await assertSame(["info", "child.vmdk"], dir);
        await assertSame(["info", "--output=json", "child.vmdk"], dir);
        for (const cmd of [["map"], ["convert", "-O", "raw", "child.vmdk", "child.raw"]]) {
          const i = await instar(cmd[0] === "map" ? [...cmd, "child.vmdk"] : cmd, dir);
          assertEquals(i.code, 1);
          assert(/Refusing to follow VMDK parent 's.vmdk'/.test(i.stderr), i.stderr);
        }
      });
      await t.step("a VMDK3 (COWD) sparse file reads as in qemu-img", async () => {
        // header, descriptor (CID) at 0x200, grain directory, one 4096-entry grain table, two 4 KiB grains
        const b = new Uint8Array(35 * 512 + 8192);
        const dv = new DataView(b.buffer);
        b.set(new TextEncoder().encode("COWD"), 0);
        [1, 3, 1024, 8, 2, 1].forEach((v, i) => dv.setUint32(4 + 4 * i, v, true));
        b.set(new TextEncoder().encode("CID=abcdef01\nparentCID=ffffffff\n"), 512);
        dv.setUint32(1024, 3, true);
        dv.setUint32(1536, 35, true);
        dv.setUint32(1536 + 12, 43, true);
        b.fill(0x5a, 35 * 512, 43 * 512);
        b.fill(0xa5, 43 * 512);
        Deno.writeFileSync(`${dir}/cowd.vmdk`, b);
        for (const args of [["info"], ["info", "--output=json"], ["map", "--output=json"], ["check"]]) {
          await assertSame([...args, "cowd.vmdk"], dir);
        }
        await sh(dir, "qemu-img", "convert", "-O", "raw", "cowd.vmdk", "cowd.q.raw");
        const i = await instar(["convert", "-O", "raw", "cowd.vmdk", "cowd.i.raw"], dir);
        assertEquals(i.code, 0, i.stderr);
        assertEquals(Deno.readFileSync(`${dir}/cowd.i.raw`), Deno.readFileSync(`${dir}/cowd.q.raw`));
      });
      await t.step("probing: qemu's vmdk_probe decides, the raw gate refuses the rest", async () => {
        // comments, blank lines of spaces (CRLF too), then version=1: vmdk
        Deno.writeTextFileSync(
          `${dir}/crlf.vmdk`,
          '#c\n   \n  \r\nversion=1\r\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n' +
            '# x\nRW 2048 FLAT "d-flat.vmdk" 0\n',
        );
        await assertSame(["info", "crlf.vmdk"], dir);
        await assertSame(["info", "--output=json", "crlf.vmdk"], dir);
        // version=4: qemu probes raw; instar refuses the raw file with a vmdk signature
        Deno.writeTextFileSync(
          `${dir}/v4.vmdk`,
          '# Disk DescriptorFile\nversion=4\ncreateType="monolithicFlat"\nRW 2048 FLAT "d-flat.vmdk" 0\n',
        );
        assertEquals(
          JSON.parse((await qemuImg(["info", "--output=json", "v4.vmdk"], dir)).stdout).format,
          "raw",
        );
        const i = await instar(["info", "v4.vmdk"], dir);
        assertEquals(i.code, 1);
        assert(/Refusing to read a file with a vmdk signature as raw/.test(i.stderr), i.stderr);
        // -f vmdk on a file that is no vmdk at all
        await assertSame(["info", "-f", "vmdk", "d-flat.vmdk"], dir);
      });
      // A compressed grain whose marker says more than two grains, and one
      // that inflates past its grain: qemu's read fails (EINVAL), instar's
      // too; neither prints disk bytes.
      const b = Deno.readFileSync(`${dir}/so.vmdk`);
      const gd = Number(new DataView(b.buffer).getBigUint64(4 + 52, true));
      assert(gd > 0);
      await t.step("a corrupt compressed grain fails convert", async () => {
        // the first grain's marker sits right after the header's grain_offset
        const grainOff = Number(new DataView(b.buffer).getBigUint64(4 + 60, true)) * 512;
        const bad = b.slice();
        new DataView(bad.buffer).setUint32(grainOff + 8, 0x7fffffff, true);
        Deno.writeFileSync(`${dir}/grain.vmdk`, bad);
        const q = await qemuImg(["convert", "-O", "raw", "grain.vmdk", "q.raw"], dir);
        const i = await instar(["convert", "-O", "raw", "grain.vmdk", "i.raw"], dir);
        assert(q.code !== 0 && i.code !== 0, i.stderr);
        assertEquals(i.stdout, "");
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

export { assertEquals };
