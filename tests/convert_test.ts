// instar convert against qemu-img convert, on images qemu-img and qemu-io
// make here: the raw-flattened SHA-256 of every output equals qemu-img's,
// qcow2 outputs pass `qemu-img check` and carry the same `qemu-img info`
// as qemu-img's own output for the same command (except the sizes, whose
// layout differs by design: docs/convert.md), errors print qemu's words,
// and nothing half-written is ever left under the target name.
import { CLI_ENTRY } from "./support/kvm.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";
import { loopDevice } from "./support/loop_device.ts";
import { fileSha256 as sha256, sameBytes } from "./support/bytes.ts";

const ready = built() && haveQemuImg();

async function qemuIo(dir: string, file: string, fmt: string, ...cmds: string[]) {
  await sh(dir, "qemu-io", "-f", fmt, ...cmds.flatMap((c) => ["-c", c]), file);
}

/** qemu-img info --output=json without the fields a different layout changes. */
async function infoJson(dir: string, file: string): Promise<Record<string, unknown>> {
  const r = await qemuImg(["info", "--output=json", file], dir);
  assertEquals(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  delete j["actual-size"];
  delete j.filename;
  return j;
}

async function checkClean(dir: string, file: string) {
  const r = await qemuImg(["check", file], dir);
  assertEquals(r.code, 0, `qemu-img check ${file}: ${r.stdout}${r.stderr}`);
  assert(r.stdout.includes("No errors were found on the image."), r.stdout);
}

/** Raw-flattens `file` with qemu-img and returns its SHA-256. */
async function flatSha(dir: string, file: string, fmt?: string): Promise<string> {
  const out = `${file}.flat`;
  const r = await qemuImg(["convert", ...(fmt ? ["-f", fmt] : []), "-O", "raw", file, out], dir);
  assertEquals(r.code, 0, r.stderr);
  const s = await sha256(`${dir}/${out}`);
  await Deno.remove(`${dir}/${out}`);
  return s;
}

/** Leftover temporary files of a convert into `dir`. */
async function temps(dir: string): Promise<string[]> {
  const out = [];
  for await (const e of Deno.readDir(dir)) if (e.name.includes(".instar-")) out.push(e.name);
  return out;
}

Deno.test(
  { name: "convert: qcow2 variants to raw and qcow2, compared with qemu-img", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-" });
    try {
      const writes = [
        "write -P 0x11 0 128k",
        "write -P 0x22 1M 4k",
        "write -z 2M 64k",
        "write -P 0x33 3M 65k",
      ];
      const variants: [string, string[], string[]][] = [
        ["v2", ["-o", "compat=0.10"], writes],
        ["v3", [], writes],
        ["c512", ["-o", "cluster_size=512"], writes],
        ["c4k", ["-o", "cluster_size=4k"], writes],
        ["c2m", ["-o", "cluster_size=2M"], writes],
        ["rc1", ["-o", "refcount_bits=1"], writes],
        ["rc64", ["-o", "refcount_bits=64"], writes],
        ["extl2", ["-o", "extended_l2=on"], [...writes, "write -P 0x44 5M 2k"]],
        ["zstdtype", ["-o", "compression_type=zstd"], writes],
        ["lazy", ["-o", "lazy_refcounts=on"], writes],
      ];
      for (const [name, opts, cmds] of variants) {
        await t.step(name, async () => {
          const src = `${name}.qcow2`;
          await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...opts, src, "6M");
          await qemuIo(dir, src, "qcow2", ...cmds);
          const want = await flatSha(dir, src);
          // -O raw: byte-identical to qemu-img convert -O raw.
          const raw = await instar(["convert", "-O", "raw", src, `${name}.raw`], dir);
          assertEquals(raw, { stdout: "", stderr: "", code: 0 });
          assertEquals(await sha256(`${dir}/${name}.raw`), want);
          // -O qcow2 with the source's options, and back to raw.
          const out = await instar(["convert", "-O", "qcow2", ...opts, src, `${name}.out.qcow2`], dir);
          assertEquals(out, { stdout: "", stderr: "", code: 0 });
          await sh(dir, "qemu-img", "convert", "-O", "qcow2", ...opts, src, `${name}.q.qcow2`);
          await checkClean(dir, `${name}.out.qcow2`);
          assertEquals(await flatSha(dir, `${name}.out.qcow2`), want);
          assertEquals(await infoJson(dir, `${name}.out.qcow2`), await infoJson(dir, `${name}.q.qcow2`));
          const back = await instar(["convert", "-O", "raw", `${name}.out.qcow2`, `${name}.back.raw`], dir);
          assertEquals(back.code, 0, back.stderr);
          assertEquals(await sha256(`${dir}/${name}.back.raw`), want);
        });
      }

      await t.step("compressed inputs (zlib and zstd)", async () => {
        for (const ctype of ["zlib", "zstd"]) {
          const plain = `plain-${ctype}.qcow2`;
          await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", plain, "4M");
          await qemuIo(dir, plain, "qcow2", "write -P 0x5a 0 1M", "write -P 0x01 2M 64k");
          await sh(
            dir,
            "qemu-img",
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            `compression_type=${ctype}`,
            plain,
            `cin-${ctype}.qcow2`,
          );
          const want = await flatSha(dir, plain);
          assertEquals(
            (await instar(["convert", "-O", "raw", `cin-${ctype}.qcow2`, `cin-${ctype}.raw`], dir)).code,
            0,
          );
          assertEquals(await sha256(`${dir}/cin-${ctype}.raw`), want);
        }
      });

      await t.step("raw input to qcow2 and a raw round trip", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "in.raw", "5M");
        await qemuIo(dir, "in.raw", "raw", "write -P 0x77 0 100k", "write -P 0x78 4M 512");
        const want = await sha256(`${dir}/in.raw`);
        assertEquals(
          (await instar(["convert", "-f", "raw", "-O", "qcow2", "in.raw", "in.qcow2"], dir)).code,
          0,
        );
        await checkClean(dir, "in.qcow2");
        assertEquals(await flatSha(dir, "in.qcow2"), want);
        assertEquals(
          (await instar(["convert", "-f", "raw", "-O", "raw", "in.raw", "copy.raw"], dir)).code,
          0,
        );
        assertEquals(await sha256(`${dir}/copy.raw`), want);
        // A size that is not a multiple of 512 rounds up, as qemu's does.
        await Deno.writeFile(`${dir}/odd.raw`, new Uint8Array(1000).fill(7));
        const q = await qemuImg(["convert", "-f", "raw", "-O", "raw", "odd.raw", "odd.q.raw"], dir);
        const i = await instar(["convert", "-f", "raw", "-O", "raw", "odd.raw", "odd.i.raw"], dir);
        assertEquals(i, asInstar(q));
        assert(await sameBytes(`${dir}/odd.i.raw`, `${dir}/odd.q.raw`));
      });

      await t.step("sparse output, and -S 0 allocating everything", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "sp.qcow2", "64M");
        await qemuIo(dir, "sp.qcow2", "qcow2", "write -P 1 0 64k", "write -P 0 1M 1M", "write -P 2 32M 8k");
        assertEquals((await instar(["convert", "-O", "raw", "sp.qcow2", "sp.raw"], dir)).code, 0);
        await sh(dir, "qemu-img", "convert", "-O", "raw", "sp.qcow2", "sp.q.raw");
        const mine = (await Deno.stat(`${dir}/sp.raw`)).blocks!;
        const theirs = (await Deno.stat(`${dir}/sp.q.raw`)).blocks!;
        assert(mine <= theirs, `instar allocated ${mine} blocks, qemu-img ${theirs}`);
        assertEquals(
          (await instar(["convert", "-S", "0", "-O", "raw", "sp.qcow2", "full.raw"], dir)).code,
          0,
        );
        assert(
          (await Deno.stat(`${dir}/full.raw`)).blocks! * 512 >= 64 * 1024 * 1024,
          "-S 0 output is not fully allocated",
        );
        assert(await sameBytes(`${dir}/full.raw`, `${dir}/sp.q.raw`));
      });

      await t.step("-c zlib and zstd: same content and compressed-cluster count as qemu-img", async () => {
        // Compressible, incompressible (stored plain, as qemu does) and zero data.
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "mix.raw", "80M");
        const rnd = new Uint8Array(1 << 20);
        for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, i + 65536));
        const f = await Deno.open(`${dir}/mix.raw`, { write: true });
        await f.seek(3 << 20, Deno.SeekMode.Start);
        await f.write(rnd);
        await f.seek(70 << 20, Deno.SeekMode.Start);
        await f.write(rnd);
        f.close();
        // 10M..11M: zeroes stored as data, so the first guest writes fewer
        // clusters than it counted (a gap before the second guest's data).
        await qemuIo(
          dir,
          "mix.raw",
          "raw",
          "write -P 0x61 0 2M",
          "write -P 0 10M 1M",
          "write -P 0x62 75M 1M",
        );
        const want = await sha256(`${dir}/mix.raw`);
        for (const ctype of ["zlib", "zstd"]) {
          const o = ["-o", `compression_type=${ctype}`];
          await sh(
            dir,
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-c",
            "-O",
            "qcow2",
            ...o,
            "mix.raw",
            `q-${ctype}.qcow2`,
          );
          const counts = async (file: string) =>
            (await qemuImg(["check", file], dir)).stdout.match(/[\d.]+% compressed/)?.[0];
          const out = `i-${ctype}.qcow2`;
          const r = await instar(["convert", "-f", "raw", "-c", "-O", "qcow2", ...o, "mix.raw", out], dir);
          assertEquals(r, { stdout: "", stderr: "", code: 0 });
          await checkClean(dir, out);
          assertEquals(await flatSha(dir, out), want);
          assertEquals(await infoJson(dir, out), await infoJson(dir, `q-${ctype}.qcow2`));
          assertEquals(await counts(out), await counts(`q-${ctype}.qcow2`));
        }
      });

      await t.step(
        "-c with 1-, 2- and 4-bit refcounts: no host cluster shared past its refcount",
        async () => {
          // Smallest reproducer: streams of ~22 bytes would pack 187 into one
          // 4 KiB host cluster, more than a narrow refcount can count.
          await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "pat.qcow2", "8M");
          await qemuIo(dir, "pat.qcow2", "qcow2", "write -P 0x61 0 4M");
          const want = await flatSha(dir, "pat.qcow2");
          for (const bits of [1, 2, 4]) {
            const out = `narrow${bits}.qcow2`;
            const r = await instar([
              "convert",
              "-c",
              "-O",
              "qcow2",
              "-o",
              `refcount_bits=${bits},cluster_size=4k`,
              "pat.qcow2",
              out,
            ], dir);
            assertEquals(r, { stdout: "", stderr: "", code: 0 });
            await checkClean(dir, out);
            assertEquals(await flatSha(dir, out), want);
          }
        },
      );

      await t.step("one guest or two: identical content", async () => {
        const run = async (guests: string, args: string[]) => {
          const r = await new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", CLI_ENTRY, ...args],
            cwd: dir,
            env: { INSTAR_GUESTS: guests },
            stdout: "piped",
            stderr: "piped",
          }).output();
          const dec = new TextDecoder();
          return { stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr), code: r.code };
        };
        const want = await sha256(`${dir}/mix.raw`);
        for (
          const [tag, opts] of [["raw", ["-O", "raw"]], ["qcow2", ["-O", "qcow2"]], ["c", [
            "-c",
            "-O",
            "qcow2",
          ]]]
        ) {
          for (const guests of ["1", "2"]) {
            const out = `g${guests}-${tag}.img`;
            const r = await run(guests, ["convert", "-f", "raw", ...opts, "mix.raw", out]);
            assertEquals(r.code, 0, r.stderr);
            if (tag !== "raw") await checkClean(dir, out);
            assertEquals(
              await flatSha(dir, out, tag === "raw" ? "raw" : "qcow2"),
              want,
              `${tag} with ${guests} guest(s)`,
            );
          }
        }
        // compare: a difference only the second half's guest sees, and none.
        const b = await Deno.readFile(`${dir}/mix.raw`);
        b[75 * 1024 * 1024 + 1234] ^= 1;
        await Deno.writeFile(`${dir}/mix2.raw`, b);
        for (const pair of [["mix.raw", "mix2.raw"], ["mix.raw", "g2-c.img"]]) {
          const args = ["compare", "-f", "raw", "-F", pair[1].endsWith(".img") ? "qcow2" : "raw", ...pair];
          const q = asInstar(await qemuImg(args, dir));
          for (const guests of ["1", "2"]) {
            assertEquals(await run(guests, args), q, `${args.join(" ")} (${guests})`);
          }
        }
      });

      await t.step("errors print qemu-img's words and leave nothing behind", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "e.qcow2", "1M");
        const cases = [
          ["convert", "-O", "foo", "e.qcow2", "x"],
          ["convert", "-c", "-O", "raw", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "foo=1", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "cluster_size=1000", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "cluster_size=abc", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "compat=0.9", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "extended_l2=maybe", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "refcount_bits=abc", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-c", "-o", "preallocation=metadata", "e.qcow2", "x"],
          ["convert", "-S", "100", "e.qcow2", "x"],
          ["convert", "e.qcow2"],
          ["convert", "missing.qcow2", "x"],
          ["convert", "-c", "-C", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "e.qcow2", "nodir/x"],
          ["convert", "-O", "qcow2", "-o", ",foo", "e.qcow2", "x"],
          ["convert", "-O", "qcow2", "-o", "help", "e.qcow2", "x"],
          ["convert", "-O", "raw", "-o", "help"],
          ["convert", "-O", "raw", "-o", "preallocation=xyz", "e.qcow2", "x"],
          ["convert", "-O", "raw", "-o", "preallocation=metadata", "e.qcow2", "x"],
          ["convert", "-T", "bogus", "e.qcow2", "x"],
          ["convert", "e.qcow2", "."],
        ];
        for (const args of cases) {
          const [q, i] = [await qemuImg(args, dir), await instar(args, dir)];
          assertEquals(i, asInstar(q), args.join(" "));
          await Deno.remove(`${dir}/x`).catch(() => {});
        }
        assertEquals(await temps(dir), []);
      });

      await t.step("-p: qemu's first and last progress lines; --progress=json", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "empty.qcow2", "8M");
        const args = ["convert", "-p", "-O", "raw", "empty.qcow2", "pe.raw"];
        assertEquals(await instar(args, dir), asInstar(await qemuImg(args, dir)));
        const full = ["convert", "-p", "-O", "raw", "v3.qcow2", "pf.raw"];
        const [q, i] = [await qemuImg(full, dir), await instar(full, dir)];
        const end = "    (100.00/100%)\r    (100.00/100%)\r\n";
        for (const o of [q, i]) {
          assert(
            o.stdout.startsWith("    (0.00/100%)\r") && o.stdout.endsWith(end),
            JSON.stringify(o.stdout),
          );
        }
        const j = await instar(["convert", "--progress=json", "-O", "raw", "v3.qcow2", "pj.raw"], dir);
        assertEquals(j.code, 0);
        const lines = j.stderr.trim().split("\n").map((l) => JSON.parse(l));
        assertEquals(lines[lines.length - 1], { done: 6291456, total: 6291456 });
      });

      await t.step("a symlinked target is written through, as qemu-img does", async () => {
        await Deno.writeTextFile(`${dir}/real.raw`, "old");
        await Deno.symlink("real.raw", `${dir}/link.raw`);
        assertEquals((await instar(["convert", "-O", "raw", "v3.qcow2", "link.raw"], dir)).code, 0);
        assert((await Deno.lstat(`${dir}/link.raw`)).isSymlink, "the link itself was replaced");
        assertEquals(await sha256(`${dir}/real.raw`), await flatSha(dir, "v3.qcow2"));
      });

      await t.step("a source that fails mid-read leaves no target and no temporary file", async () => {
        // A compressed cluster whose stream is garbage: qemu fails the read with EIO.
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "g.qcow2", "1M");
        await qemuIo(dir, "g.qcow2", "qcow2", "write -c -P 0x41 0 64k");
        const img = await Deno.readFile(`${dir}/g.qcow2`);
        // The compressed stream is the last thing qemu-io wrote: smash its tail.
        let last = img.length - 1;
        while (last > 0 && img[last] === 0) last--;
        img.fill(0xff, last - 40, last + 1);
        await Deno.writeFile(`${dir}/g.qcow2`, img);
        const q = await qemuImg(["convert", "-O", "raw", "g.qcow2", "gq.raw"], dir);
        const i = await instar(["convert", "-O", "raw", "g.qcow2", "gi.raw"], dir);
        assertEquals(i.code, q.code);
        assert(i.code !== 0, "a corrupt compressed cluster must fail the convert");
        await assertMissing(`${dir}/gi.raw`);
        assertEquals(await temps(dir), []);
      });

      await t.step("SIGINT leaves nothing under the target name", async () => {
        await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "big.raw", "3G");
        await qemuIo(dir, "big.raw", "raw", "write -P 9 0 512M", "write -P 8 2G 512M");
        const child = new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", CLI_ENTRY, "convert", "-f", "raw", "-c", "-O", "qcow2", "big.raw", "int.qcow2"],
          cwd: dir,
          stdout: "null",
          stderr: "null",
        }).spawn();
        // Wait until the temporary output exists (a named one; an unnamed
        // O_TMPFILE output never shows: then 1 s, well inside the 4-5 s this
        // convert takes on an idle machine), then interrupt.
        for (let i = 0; i < 40 && (await temps(dir)).length === 0; i++) {
          await new Promise((r) => setTimeout(r, 25));
        }
        await new Promise((r) => setTimeout(r, 300));
        child.kill("SIGINT");
        const st = await child.status;
        assert(!st.success, "the interrupted convert must not succeed");
        await assertMissing(`${dir}/int.qcow2`);
        assertEquals(await temps(dir), []);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

async function assertMissing(path: string) {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  throw new Error(`${path} exists`);
}

Deno.test(
  { name: "convert: backing chains of 1, 3 and 16 images flatten; 17 are refused", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-chain-" });
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "l0.qcow2", "4M");
      await qemuIo(dir, "l0.qcow2", "qcow2", "write -P 0x10 0 1M");
      // l<k> is the top of a chain of k+1 images.
      for (let i = 1; i <= 16; i++) {
        await sh(
          dir,
          "qemu-img",
          "create",
          "-q",
          "-f",
          "qcow2",
          "-b",
          `l${i - 1}.qcow2`,
          "-F",
          "qcow2",
          `l${i}.qcow2`,
        );
        await qemuIo(dir, `l${i}.qcow2`, "qcow2", `write -P ${i} ${i * 64}k 4k`, `write -z ${i * 128}k 512`);
      }
      for (const depth of [1, 3, 16]) {
        await t.step(`${depth} images`, async () => {
          const top = `l${depth - 1}.qcow2`;
          const want = await flatSha(dir, top);
          const r = await instar(["convert", "-O", "raw", top, `flat${depth}.raw`], dir);
          assertEquals(r.code, 0, r.stderr);
          assertEquals(await sha256(`${dir}/flat${depth}.raw`), want);
          const q = await instar(["convert", "-O", "qcow2", top, `flat${depth}.qcow2`], dir);
          assertEquals(q.code, 0, q.stderr);
          assertEquals(await flatSha(dir, `flat${depth}.qcow2`), want);
          // The output stands alone: no backing file.
          assertEquals((await infoJson(dir, `flat${depth}.qcow2`))["backing-filename"], undefined);
        });
      }
      await t.step("17 images are refused before anything is written", async () => {
        const r = await instar(["convert", "-O", "raw", "l16.qcow2", "flat17.raw"], dir);
        assertEquals(r.code, 1);
        assert(
          r.stderr.includes("Could not open 'l16.qcow2'") && r.stderr.includes("longer than 16"),
          r.stderr,
        );
        await assertMissing(`${dir}/flat17.raw`);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  { name: "convert onto a device node is refused and leaves the node in place", ignore: !ready },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-dev-" });
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "1M");
      // A character device like /dev/null, made here (as root) so that a
      // regression replaces a node of this test's own, never one in /dev.
      const mk = await new Deno.Command("mknod", { args: [`${dir}/dev`, "c", "1", "3"], stderr: "null" })
        .output();
      if (!mk.success) return; // not root: nothing to test here
      const r = await instar(["convert", "-O", "raw", "src.qcow2", "dev"], dir);
      assertEquals(r.code, 1, r.stderr);
      assertEquals(r.stderr, "instar: Converting onto a device is not supported by instar yet: 'dev'\n");
      assert(Deno.statSync(`${dir}/dev`).isCharDevice, "the device node was replaced");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  { name: "convert -O raw onto a block device writes into it, as qemu-img does", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-blk-" });
    const detach: (() => Promise<void>)[] = [];
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "8M");
      await sh(dir, "qemu-io", "-c", "write -P 5 1M 1M", "-c", "write -z 3M 64k", "src.qcow2");
      await sh(dir, "qemu-img", "convert", "-O", "raw", "src.qcow2", "want.raw");
      const big = await loopDevice(dir, "big", 16 << 20);
      if (!big) return; // no loop devices here (not root, or none left)
      detach.push(big.detach);
      await t.step("the image is written, the rest of the device kept, the node left in place", async () => {
        const r = await instar(["convert", "-O", "raw", "src.qcow2", "big"], dir);
        assertEquals(r, { stdout: "", stderr: "", code: 0 });
        assert(Deno.statSync(big.node).isBlockDevice, "the device node was replaced");
        const got = await Deno.readFile(big.node);
        const want = await Deno.readFile(`${dir}/want.raw`);
        assertEquals(got.subarray(0, want.length), want);
        assert(got.subarray(want.length).every((b) => b === 0xaa), "the device past the image changed");
      });
      const small = await loopDevice(dir, "small", 1 << 20);
      if (!small) return;
      detach.push(small.detach);
      await t.step("a device smaller than the image: qemu-img's error", async () => {
        const q = await qemuImg(["convert", "-O", "raw", "src.qcow2", "small"], dir);
        const i = await instar(["convert", "-O", "raw", "src.qcow2", "small"], dir);
        assertEquals(i, asInstar(q));
        assert(Deno.statSync(small.node).isBlockDevice);
      });
    } finally {
      for (const d of detach) await d();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  { name: "convert -n -O raw writes into the existing file as qemu-img does", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-convert-n-" });
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "8M");
      await sh(dir, "qemu-io", "-c", "write -P 5 1M 1M", "-c", "write -z 3M 64k", "src.qcow2");
      // An existing target longer than the image, with bytes everywhere.
      const old = crypto.getRandomValues(new Uint8Array(12 << 20).subarray(0, 65536));
      const fill = new Uint8Array(12 << 20);
      for (let at = 0; at < fill.length; at += old.length) fill.set(old, at);
      const cases = [
        ["-n", "-O", "raw", "src.qcow2", "t.raw"],
        ["-n", "--target-is-zero", "-O", "raw", "src.qcow2", "t.raw"],
        ["-n", "-O", "raw", "src.qcow2", "missing.raw"],
        ["-n", "-O", "raw", "src.qcow2", "small.raw"],
        ["-n", "-O", "raw", "-o", "preallocation=full", "src.qcow2", "t.raw"],
      ];
      for (const args of cases) {
        await t.step(args.join(" "), async () => {
          for (const d of ["q", "i"]) {
            await Deno.mkdir(`${dir}/${d}`, { recursive: true });
            await Deno.copyFile(`${dir}/src.qcow2`, `${dir}/${d}/src.qcow2`);
            await Deno.writeFile(`${dir}/${d}/t.raw`, fill);
            await Deno.writeFile(`${dir}/${d}/small.raw`, new Uint8Array(1 << 20));
          }
          const q = await qemuImg(["convert", ...args], `${dir}/q`);
          const i = await instar(["convert", ...args], `${dir}/i`);
          assertEquals(i, asInstar(q));
          assertEquals(await Deno.readFile(`${dir}/i/t.raw`), await Deno.readFile(`${dir}/q/t.raw`));
          // qemu punches holes where the image reads as zeroes; so does instar
          assertEquals(Deno.statSync(`${dir}/i/t.raw`).blocks, Deno.statSync(`${dir}/q/t.raw`).blocks);
          await Deno.remove(`${dir}/q`, { recursive: true });
          await Deno.remove(`${dir}/i`, { recursive: true });
        });
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  { name: "convert -O raw -o preallocation=falloc|full: qemu-img's bytes and allocation", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-prealloc-" });
    try {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "8M");
      await sh(dir, "qemu-io", "-c", "write -P 5 1M 1M", "-c", "write -z 3M 64k", "src.qcow2");
      for (const mode of ["falloc", "full"]) {
        await t.step(mode, async () => {
          const args = (o: string) => ["convert", "-O", "raw", "-o", `preallocation=${mode}`, "src.qcow2", o];
          assertEquals(await instar(args("i.raw"), dir), asInstar(await qemuImg(args("q.raw"), dir)));
          assertEquals(await Deno.readFile(`${dir}/i.raw`), await Deno.readFile(`${dir}/q.raw`));
          // Every block allocated, as qemu's are (not a sparse file with holes for zeroes).
          const [qs, is] = [await Deno.stat(`${dir}/q.raw`), await Deno.stat(`${dir}/i.raw`)];
          assertEquals(is.blocks, qs.blocks);
          assert(is.blocks! * 512 >= is.size, "the output is not fully allocated");
        });
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
