// --object and --image-opts against qemu-img 7.2: the keyval / QemuOpts
// parsers (lib/config/qemu_opts.ts) as units, then every command line below
// run by qemu-img and by instar with the same stdout, stderr and exit code.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseKeyval, parseQemuOpts } from "../lib/config/qemu_opts.ts";
import { assertSameHere, haveQemuImg, instarHere, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

Deno.test("keyval: implied key, ,, escape, last value wins, help", () => {
  const kv = parseKeyval("secret,id=s,data=a,,b,data=c,,d,", "qom-type");
  assertEquals([...kv.entries], [["qom-type", "secret"], ["id", "s"], ["data", "c,d"]]);
  assert(parseKeyval("help", "qom-type").help);
  assert(parseKeyval("secret,help", "qom-type").help);
  assert(!parseKeyval("secret,id=x", "qom-type").help);
});

Deno.test("QemuOpts: implied file, ,, in values, short-form booleans warn", () => {
  const p = parseQemuOpts("a,,b.img,driver=raw,nofoo,bar", "file");
  assertEquals(p.opts, [
    { name: "file", value: "a,b.img" },
    { name: "driver", value: "raw" },
    { name: "foo", value: "off" },
    { name: "bar", value: "on" },
  ]);
  assertEquals(p.warnings.length, 4);
  assertEquals(parseQemuOpts("driver=raw,,x", "file").opts, [{ name: "driver", value: "raw,x" }]);
});

const OBJECTS = [
  "secret,id=s,data=pw",
  "secret,id=s,data=pw,keyid=k",
  "secret,id=s,data=pw,iv=abc",
  "foo,id=x",
  "iothread,id=x",
  "secret,id=s",
  "secret,id=s,data=pw,file=/etc/hostname",
  "secret,data=pw",
  "secret,id=s,data=pw,format=hex",
  "secret,id=s,data=!!,format=base64",
  "secret,id=s,data=cHc=,format=base64",
  "secret,id=s,file=/nonexistent-instar",
  "secret,id=s,file=/tmp",
  "secret,id=s,data=pw,bogus=1",
  "",
  "secret",
  "id=x",
  "secret,id=s,data=a,,b",
  "secret,,x",
  "=x",
  "secret,id=1s,data=x",
  "secret,id=s,data",
  "secret,id=s,a.b=1",
  "qom-type=secret,id=s,data=x",
  "help",
  "secret,help",
  '{"qom-type":"secret","id":"s","data":"x"}',
  '{"qom-type":"secret"}',
];

if (haveQemuImg()) {
  await useHostedGuestsWithoutKvm();

  Deno.test("--object: qemu-img's words and exit codes (info, compare's 2)", async () => {
    await withTempDir("instar-opts-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M");
      for (const o of OBJECTS) {
        await assertSameHere(["info", "--object", o, "a.qcow2"], dir);
      }
      for (const o of ["foo", "secret,id=s", "secret,id=s,data=x"]) {
        await assertSameHere(["compare", "--object", o, "a.qcow2", "a.qcow2"], dir);
        await assertSameHere(["map", "--object", o, "a.qcow2"], dir);
      }
      // Two objects: a duplicate id, and keyid naming a secret defined before.
      await assertSameHere(
        ["info", "--object", "secret,id=s,data=a", "--object", "secret,id=s,data=b", "a.qcow2"],
        dir,
      );
      await assertSameHere(
        ["info", "--object", "secret,id=k,data=x", "--object", "secret,id=s,data=pw,keyid=k", "a.qcow2"],
        dir,
      );
      // An object error comes where getopt meets it: before the operand checks.
      await assertSameHere(["info", "--object", "foo"], dir);
    });
  });

  Deno.test("--object: other types qemu-img creates are refused clearly", async () => {
    await withTempDir("instar-opts-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "a.img", "1M");
      const r = await instarHere(["info", "--object", "throttle-group,id=t", "a.img"], dir);
      assertEquals(r.code, 1);
      assertEquals(
        r.stderr,
        "instar: Object type 'throttle-group' is not supported by instar (only 'secret' is)\n",
      );
    });
  });

  const IMAGE_OPTS = [
    "driver=raw,file.filename=r.img",
    "file.filename=q.qcow2", // probed (a raw file without partitions is refused by instar: quirks.md)
    "driver=raw,file.driver=file,file.filename=r.img",
    "driver=raw,file.filename=r.img,read-only=on",
    "driver=qcow2,file.filename=q.qcow2",
    "driver=qcow2,file.filename=q.qcow2,encrypt.key-secret=s",
    "driver=raw,file.filename=r.img,foo=1",
    "driver=foo,file.filename=r.img",
    "filename=r.img",
    "driver=raw,filename=r.img",
    "driver=qcow2,file.filename=r.img",
    "driver=raw,file.filename=r.img,key-secret=s",
    "driver=raw,file.filename=nonexist",
    "json:{}",
    "driver=raw",
    "",
    "driver=raw,file.filename=r.img,file.foo=1",
    "r.img",
    "driver=raw,,x",
    "driver=raw,file.filename=r.img,bogus",
    "driver=raw,file.filename=r.img,nobogus",
    "driver=raw,file.filename=r.img,id=x",
  ];

  Deno.test("--image-opts: info, map, check and compare as qemu-img", async () => {
    await withTempDir("instar-opts-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "r.img", "1M");
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "1M");
      for (const o of IMAGE_OPTS) {
        await assertSameHere(["info", "--image-opts", o], dir);
      }
      await assertSameHere(["info", "--output=json", "--image-opts", "driver=raw,file.filename=r.img"], dir);
      await assertSameHere(["map", "--image-opts", "driver=qcow2,file.filename=q.qcow2"], dir);
      await assertSameHere(["check", "--image-opts", "driver=qcow2,file.filename=q.qcow2"], dir);
      await assertSameHere(["info", "--image-opts", "-f", "raw", "r.img"], dir);
      await assertSameHere(
        ["compare", "--image-opts", "driver=raw,file.filename=r.img", "file.filename=q.qcow2"],
        dir,
      );
      await assertSameHere(["compare", "--image-opts", "file.filename=nonexist", "r.img"], dir);
      await assertSameHere(
        ["convert", "--image-opts", "driver=qcow2,file.filename=q.qcow2", "-O", "raw", "out.raw"],
        dir,
      );
      await assertSameHere(["info", "--image-opts", "driver=raw,file.filename=nonexist,foo=1"], dir);
      // --target-image-opts (with -n): the target's options, opened after the source.
      for (
        const t of ["driver=raw,file.filename=missing.img", "driver=raw,file.filename=missing.img,foo=1"]
      ) {
        await assertSameHere(["convert", "-n", "--target-image-opts", "-f", "raw", "r.img", t], dir);
      }
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "t1.img", "1M");
      await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "t2.img", "1M");
      await sh(dir, "qemu-img", "convert", "-n", "-f", "qcow2", "q.qcow2", "t1.img");
      await assertSameHere(
        ["convert", "-n", "--target-image-opts", "-f", "qcow2", "q.qcow2", "driver=raw,file.filename=t2.img"],
        dir,
      );
      assertEquals(await Deno.readFile(`${dir}/t1.img`), await Deno.readFile(`${dir}/t2.img`));
    });
  });
}
