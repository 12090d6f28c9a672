// `-` for stdin and stdout (docs/pipelines.md), through real pipes: instar
// runs as a child process of `sh -c` (the hosted stand-in where /dev/kvm is
// not usable, tests/support/kvm.ts). Streamed bytes equal those of the
// file-to-file convert (raw, qcow2) or compare identical and pass
// `qemu-img check` once saved (vpc, vhdx, vmdk: random ids; and every format
// cut into several windows, INSTAR_STREAM_WINDOW_MIB); a reader that
// closes early, a truncated stdin and a spool over its bound end with one
// line on stderr, exit 1 and nothing left behind.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { fileSha256 as sha } from "./support/bytes.ts";
import { nothingLeft, oneLine, pipeline, streamOptimized } from "./support/pipeline.ts";

const ready = built() && haveQemuImg();

async function same(a: string, b: string): Promise<boolean> {
  return await sha(a) === await sha(b);
}

/** An 8 MiB qcow2 with data scattered over several 1 MiB windows, and its raw image. */
async function source(dir: string) {
  await Deno.mkdir(`${dir}/spool`);
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "8M");
  await sh(
    dir,
    "qemu-io",
    "-c",
    "write -P 7 0 64k",
    "-c",
    "write -P 9 1536k 1M",
    "-c",
    "write -P 3 7M 4k",
    "src.qcow2",
  );
  await sh(dir, "qemu-img", "convert", "-O", "raw", "src.qcow2", "src.raw");
}

Deno.test({
  name: "convert to stdout: raw streams and qcow2 is written in order, equal to file-to-file",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      // Raw in one window and in 1 MiB windows (the bounded two-file buffer).
      for (const window of ["", "1"]) {
        const r = await pipeline(
          dir,
          `$I convert -O raw src.qcow2 - | tee piped.raw | sha256sum`,
          window ? { INSTAR_STREAM_WINDOW_MIB: window } : {},
        );
        assertEquals(r.code, 0, r.stderr);
        assertEquals(new TextDecoder().decode(r.stdout).split(" ")[0], await sha(`${dir}/src.raw`));
        assert(await same(`${dir}/piped.raw`, `${dir}/src.raw`), `window ${window}`);
      }
      for (const c of [[], ["-c"]]) {
        const f = await pipeline(dir, `$I convert -O qcow2 ${c.join(" ")} src.qcow2 file.qcow2`);
        assertEquals(f.code, 0, f.stderr);
        const p = await pipeline(dir, `$I convert -O qcow2 ${c.join(" ")} src.qcow2 - | cat > piped.qcow2`);
        assertEquals(p.code, 0, p.stderr);
        assert(await same(`${dir}/file.qcow2`, `${dir}/piped.qcow2`), `qcow2 ${c}`);
        assertEquals((await qemuImg(["check", "piped.qcow2"], dir)).code, 0);
        const cmp = await qemuImg(["compare", "src.qcow2", "piped.qcow2"], dir);
        assertEquals(cmp.stdout, "Images are identical.\n");
      }
      nothingLeft(dir, ["src.qcow2", "src.raw", "piped.raw", "file.qcow2", "piped.qcow2"]);
    });
  },
});

Deno.test({
  name: "convert to stdout: vpc, vhdx and streamOptimized vmdk pass qemu-img check and compare",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      for (
        const [fmt, opts] of [
          ["vpc", "-o force_size=on"],
          ["vhdx", ""],
          ["vmdk", "-o subformat=streamOptimized"],
          ["vmdk", ""],
        ]
      ) {
        const out = `piped.${fmt}`;
        const p = await pipeline(dir, `$I convert -O ${fmt} ${opts} src.qcow2 - > ${out}`);
        assertEquals(p.code, 0, p.stderr);
        // vpc: qemu-img has no check for it (63).
        assertEquals((await qemuImg(["check", out], dir)).code, fmt === "vpc" ? 63 : 0, `${fmt} ${opts}`);
        const cmp = await qemuImg(["compare", "-F", fmt, "src.qcow2", out], dir);
        assertEquals(cmp.stdout, "Images are identical.\n", `${fmt} ${opts}`);
        const f = await pipeline(dir, `$I convert -O ${fmt} ${opts} src.qcow2 file.${fmt}`);
        assertEquals(f.code, 0, f.stderr);
        assertEquals((await Deno.stat(`${dir}/${out}`)).size, (await Deno.stat(`${dir}/file.${fmt}`)).size);
        await Deno.remove(`${dir}/${out}`);
        await Deno.remove(`${dir}/file.${fmt}`);
      }
      // Two windows (4 MiB each, data in both): still valid images with the source's content.
      for (
        const [fmt, opts] of [
          ["qcow2", "-c"],
          ["vpc", "-o subformat=fixed,force_size=on"],
          ["vhdx", ""],
          ["vmdk", "-o subformat=streamOptimized"],
          ["vmdk", ""],
        ]
      ) {
        const p = await pipeline(dir, `$I convert -O ${fmt} ${opts} src.qcow2 - | cat > w.img`, {
          INSTAR_STREAM_WINDOW_MIB: "4",
        });
        assertEquals(p.code, 0, p.stderr);
        assertEquals((await qemuImg(["check", "-f", fmt, "w.img"], dir)).code, fmt === "vpc" ? 63 : 0, fmt);
        const cmp = await qemuImg(["compare", "-F", fmt, "src.qcow2", "w.img"], dir);
        assertEquals(cmp.stdout, "Images are identical.\n", `${fmt} ${opts} in windows`);
        await Deno.remove(`${dir}/w.img`);
      }
      // What cannot be one file written in order is refused, naming what can.
      const flat = await pipeline(dir, `$I convert -O vmdk -o subformat=monolithicFlat src.qcow2 - > x`);
      assertEquals(flat.code, 1);
      oneLine(
        flat.stderr,
        /^instar: -: error while converting vmdk: writing to stdout .* raw, qcow2, luks, vpc, vhdx/,
      );
      const n = await pipeline(dir, `$I convert -n -O raw src.qcow2 - > x`);
      assertEquals(n.code, 1);
      oneLine(n.stderr, /^instar: .*\(-n\) needs a target file/);
      await Deno.remove(`${dir}/x`);
      nothingLeft(dir, ["src.qcow2", "src.raw"]);
    });
  },
});

Deno.test({
  name: "convert from stdin: raw, qcow2 (probed), vhdx and streamOptimized vmdk equal file-to-file",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      await sh(dir, "qemu-img", "convert", "-O", "vhdx", "src.qcow2", "src.vhdx");
      await streamOptimized(dir, "src.qcow2", "so.vmdk");
      // Raw targets equal qemu-img's file-to-file raw image (src.raw).
      const cases: [string, string, string][] = [
        ["-f raw", "src.raw", "qcow2 -c"],
        ["", "src.qcow2", "raw"],
        ["", "src.vhdx", "raw"],
        ["-f vmdk", "so.vmdk", "raw"],
      ];
      for (const [f, src, to] of cases) {
        const a = await pipeline(dir, `cat ${src} | $I convert ${f} -O ${to} - from-pipe`);
        assertEquals(a.code, 0, a.stderr);
        let file = `${dir}/src.raw`;
        if (to !== "raw") {
          const b = await pipeline(dir, `$I convert ${f} -O ${to} ${src} from-file`);
          assertEquals(b.code, 0, b.stderr);
          file = `${dir}/from-file`;
        }
        if (f === "-f raw" && to !== "raw") {
          // One pass (below): the same disk, laid out behind a reserved L1 table.
          assertEquals((await qemuImg(["check", "from-pipe"], dir)).code, 0);
          assertEquals((await qemuImg(["compare", src, "from-pipe"], dir)).stdout, "Images are identical.\n");
        } else {
          assert(await same(`${dir}/from-pipe`, file), `${f} ${src} -O ${to}`);
        }
      }
      // stdin to stdout: qcow2 in, qcow2 out, saved from the pipe.
      const both = await pipeline(dir, `cat src.qcow2 | $I convert -O qcow2 - - | cat > both.qcow2`);
      assertEquals(both.code, 0, both.stderr);
      assertEquals((await qemuImg(["check", "both.qcow2"], dir)).code, 0);
      assertEquals(
        (await qemuImg(["compare", "src.qcow2", "both.qcow2"], dir)).stdout,
        "Images are identical.\n",
      );
      nothingLeft(dir, [
        "src.qcow2",
        "src.raw",
        "src.vhdx",
        "so.vmdk",
        "from-pipe",
        "from-file",
        "both.qcow2",
      ]);
    });
  },
});

Deno.test({
  name: "a reader that closes early ends convert with one line and exit 1, nothing left",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      for (const to of ["raw", "qcow2"]) {
        const r = await pipeline(
          dir,
          `{ $I convert -O ${to} src.qcow2 - 2>err; echo $? > rc; } | head -c 1048576 | wc -c`,
          { INSTAR_STREAM_WINDOW_MIB: "1" },
        );
        assertEquals(r.code, 0, r.stderr);
        assertEquals(new TextDecoder().decode(r.stdout).trim(), "1048576");
        assertEquals(Deno.readTextFileSync(`${dir}/rc`).trim(), "1", to);
        oneLine(
          Deno.readTextFileSync(`${dir}/err`),
          /^instar: error while writing at byte \d+: Broken pipe$/,
        );
        await Deno.remove(`${dir}/rc`);
        await Deno.remove(`${dir}/err`);
        nothingLeft(dir, ["src.qcow2", "src.raw"]);
      }
    });
  },
});

Deno.test({
  name: "truncated stdin and a spool over --max-spool are clear errors that leave nothing",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      // Random data: streamOptimized grains of nearly 64 KiB, so a cut lands mid-grain.
      await sh(dir, "sh", "-c", "head -c 1048576 /dev/urandom > rnd.raw && truncate -s 4M rnd.raw");
      await streamOptimized(dir, "rnd.raw", "rso.vmdk", "raw");
      await sh(dir, "qemu-img", "convert", "-O", "vhdx", "src.qcow2", "src.vhdx");
      const keep = ["src.qcow2", "src.raw", "rnd.raw", "rso.vmdk", "src.vhdx"];
      for (
        const [src, cut, f, re] of [
          ["src.qcow2", 300000, "", /^instar: Could not open '-': the image read from stdin is incomplete/],
          [
            "rso.vmdk",
            600000,
            "-f vmdk",
            // streamOptimized: read in one pass (tests/pipeline_vmdk_stdin_test.ts), not spooled.
            /^instar: Could not open '-': the vmdk stream ended inside a grain or marker at byte \d+; did the/,
          ],
          ["src.vhdx", 4500000, "", /points after end of file.*truncated/],
        ] as const
      ) {
        const r = await pipeline(dir, `head -c ${cut} ${src} | $I convert ${f} -O raw - out.raw`);
        assertEquals(r.code, 1, `${src}: ${r.stderr}`);
        assert(re.test(r.stderr.split("\n")[0]), r.stderr);
        assert(!/\bat (file|async|ext):/.test(r.stderr), r.stderr);
        nothingLeft(dir, keep);
      }
      const big = await pipeline(dir, `cat src.qcow2 | $I convert --max-spool 1M -f qcow2 -O raw - out.raw`);
      assertEquals(big.code, 1);
      oneLine(
        big.stderr,
        /^instar: Could not open '-': stdin holds more than the spool limit of 1048576 bytes/,
      );
      nothingLeft(dir, keep);
      // An image from stdin may not name another file (a backing file here).
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "src.qcow2",
        "-F",
        "qcow2",
        "over.qcow2",
      );
      const over = await pipeline(dir, `cat over.qcow2 | $I convert -O raw - out.raw`);
      assertEquals(over.code, 1);
      oneLine(
        over.stderr,
        /^instar: Could not open '-': an image read from stdin may not name a backing file$/,
      );
      nothingLeft(dir, [...keep, "over.qcow2"]);
    });
  },
});

Deno.test({
  name: "info, check, map, compare and measure read '-' as they read the file",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      for (
        const args of [
          ["check"],
          ["check", "--output=json"],
          ["map", "--output=json"],
          ["measure", "-O", "qcow2"],
          ["compare", "src.qcow2"],
          ["compare", "-f", "raw", "-F", "qcow2", "src.raw"],
        ]
      ) {
        const q = await qemuImg([...args, "src.qcow2"], dir);
        const r = await pipeline(dir, `$I ${args.join(" ")} - < src.qcow2`);
        assertEquals(
          { code: r.code, out: new TextDecoder().decode(r.stdout), err: r.stderr },
          { code: q.code, out: q.stdout.replaceAll("src.qcow2", "-"), err: q.stderr },
          args.join(" "),
        );
      }
      // info: the same facts but the name (and the spool's disk size).
      const info = await pipeline(dir, `cat src.qcow2 | $I info --output=json -`);
      assertEquals(info.code, 0, info.stderr);
      const j = JSON.parse(new TextDecoder().decode(info.stdout));
      const q = JSON.parse((await qemuImg(["info", "--output=json", "src.qcow2"], dir)).stdout);
      assertEquals({ ...j, "actual-size": 0 }, { ...q, filename: "-", "actual-size": 0 });
      const big = await pipeline(dir, `cat src.raw | $I map --max-spool 64k -f raw -`);
      assertEquals(big.code, 1);
      oneLine(
        big.stderr,
        /^instar: Could not open '-': stdin holds more than the spool limit of 65536 bytes/,
      );
      const cut = await pipeline(dir, `head -c 300000 src.qcow2 | $I info -`);
      assertEquals(cut.code, 1);
      oneLine(cut.stderr, /^instar: Could not open '-': the image read from stdin is incomplete or damaged/);
      nothingLeft(dir, ["src.qcow2", "src.raw"]);
    });
  },
});

const haveScript = (() => {
  try {
    return new Deno.Command("script", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "a terminal on stdout or stdin is refused in one line",
  ignore: !ready || !haveScript,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      // script(1) gives the command a pseudo-terminal on stdin and stdout.
      for (
        const [cmd, re] of [
          [
            "convert -O raw src.qcow2 -",
            /^instar: stdout is a terminal; redirect the image to a file or a pipe\r?$/,
          ],
          [
            "info -",
            /^instar: Could not open '-': stdin is a terminal; pipe or redirect an image into it\r?$/,
          ],
        ] as const
      ) {
        const r = await pipeline(dir, `script -qec "$I ${cmd}" /dev/null`);
        assertEquals(r.code, 1, cmd);
        const text = new TextDecoder().decode(r.stdout).trim();
        assertEquals(text.split("\n").length, 1, text);
        assert(re.test(text), text);
      }
      nothingLeft(dir, ["src.qcow2", "src.raw"]);
    });
  },
});

// `-f raw -` into a file: one pass, nothing spooled (lib/convert/stdin_raw.ts).
// --max-spool 1 would refuse any spooled stream, so passing proves there was
// none; 1 MiB windows cross several window boundaries, and a length that is
// not a whole sector ends in a partial window.
Deno.test({
  name: "a raw stream converts in one pass: raw equal to qemu-img's, qcow2 (-c) identical and clean",
  ignore: !ready,
  async fn() {
    await withTempDir("instar-pipe-", async (dir) => {
      await source(dir);
      await sh(dir, "sh", "-c", "cp src.raw odd.raw && printf xyz >> odd.raw");
      await sh(dir, "qemu-img", "convert", "-f", "raw", "-O", "raw", "odd.raw", "odd-qemu.raw");
      const env = { INSTAR_STREAM_WINDOW_MIB: "1" };
      const raw = await pipeline(dir, `cat odd.raw | $I convert --max-spool 1 -f raw -O raw - p.raw`, env);
      assertEquals(raw.code, 0, raw.stderr);
      assert(await same(`${dir}/p.raw`, `${dir}/odd-qemu.raw`));
      for (const opts of ["", "-c", "-o cluster_size=4096", "-o cluster_size=2M", "-o extended_l2=on"]) {
        const q = await pipeline(
          dir,
          `cat odd.raw | $I convert --max-spool 1 -f raw -O qcow2 ${opts} - p.qcow2`,
          env,
        );
        assertEquals(q.code, 0, q.stderr);
        assertEquals((await qemuImg(["check", "p.qcow2"], dir)).code, 0, opts);
        const cmp = await qemuImg(["compare", "-f", "raw", "-F", "qcow2", "odd-qemu.raw", "p.qcow2"], dir);
        assertEquals(cmp.stdout, "Images are identical.\n", opts);
        const info = await qemuImg(["info", "--output=json", "p.qcow2"], dir);
        assertEquals(JSON.parse(info.stdout)["virtual-size"], (await Deno.stat(`${dir}/odd-qemu.raw`)).size);
      }
      const empty = await pipeline(dir, `: | $I convert -f raw -O qcow2 - e.qcow2`);
      assertEquals(empty.code, 0, empty.stderr);
      assertEquals((await qemuImg(["check", "e.qcow2"], dir)).code, 0);
      nothingLeft(dir, ["src.qcow2", "src.raw", "odd.raw", "odd-qemu.raw", "p.raw", "p.qcow2", "e.qcow2"]);
    });
  },
});
