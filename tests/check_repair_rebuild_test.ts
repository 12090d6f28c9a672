// check -r all where qemu rebuilds the refcount structures
// (rebuild_refcount_structure), and -r leaks where it refuses to ("ERROR
// need to rebuild refcount structures"). Images are made by qemu-img /
// qemu-io, then poked: a refcount zeroed under a referenced cluster
// (setRefcount), a refcount table entry pointed at a data cluster (the
// refcounts then read from garbage), or a reserved bit set in a refcount
// table entry (its low bit). Two copies of each image, one repaired by
// qemu-img, one by instar: stdout, stderr (program name aside), exit code
// and the repaired files must be the same, and `qemu-img check` must end
// the same on both.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { repairBoth } from "./support/check_repair.ts";
import { setRefcount, setReftableEntry } from "./support/qcow2_edit.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** Clears OFLAG_COPIED of active L1 entry 0. */
function clearL1Copied(path: string): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    const h = new Uint8Array(48);
    f.readSync(h);
    const at = Number(new DataView(h.buffer).getBigUint64(40));
    const b = new Uint8Array(1);
    f.seekSync(at, Deno.SeekMode.Start);
    f.readSync(b);
    b[0] &= 0x7f;
    f.seekSync(at, Deno.SeekMode.Start);
    f.writeSync(b);
  } finally {
    f.close();
  }
}

interface Case {
  name: string;
  create?: string[];
  write?: string;
  snapshot?: boolean;
  /** a persistent bitmap with dirty bits (qemu's close stores it anew) */
  bitmap?: boolean;
  poke: (path: string) => void;
  args: string[];
}

const zero = (cluster: number, leak?: number) => (p: string) => {
  if (leak !== undefined) setRefcount(p, leak, 1n);
  setRefcount(p, cluster, 0n);
};

const CASES: Case[] = [
  ...[1, 16, 64].map((rb): Case => ({
    name: `a referenced cluster's refcount zeroed, refcount_bits=${rb}`,
    create: ["-o", `refcount_bits=${rb}`],
    poke: zero(5, 40),
    args: ["-r", "all"],
  })),
  {
    name: "compat=0.10, json",
    create: ["-o", "compat=0.10"],
    poke: zero(6),
    args: ["-r", "all", "--output=json"],
  },
  // refcount table entry 0 names a data cluster: every refcount reads from its bytes
  {
    name: "refcount table entry 0 pointing at a data cluster",
    poke: (p) => setReftableEntry(p, 0, () => 0x80000n),
    args: ["-r", "all"],
  },
  {
    name: "refcount table entry 1 pointing at a data cluster",
    poke: (p) => setReftableEntry(p, 1, () => 0x90000n),
    args: ["-r", "all"],
  },
  {
    name: "a refcount table entry pointing at a data cluster, -r leaks",
    poke: (p) => setReftableEntry(p, 1, () => 0x90000n),
    args: ["-r", "leaks"],
  },
  {
    name: "a reserved bit in a refcount table entry, -r leaks",
    poke: (p) => setReftableEntry(p, 0, (v) => v | 1n),
    args: ["-r", "leaks"],
  },
  // a shared cluster zeroed, and a flag wrong: checked against the rebuilt counts
  {
    name: "snapshot, a shared refcount zeroed and a flag cleared",
    snapshot: true,
    poke: (p) => {
      setRefcount(p, 7, 0n);
      clearL1Copied(p);
    },
    args: ["-r", "all"],
  },
  // a bitmap: stored anew on the rebuilt structures; -r leaks stores it too, then fails
  ...["all", "leaks"].map((m): Case => ({
    name: `bitmap, a referenced cluster's refcount zeroed, -r ${m}`,
    bitmap: true,
    poke: zero(5, 40),
    args: ["-r", m],
  })),
  // several refcount blocks, the table placed among them
  {
    name: "4 KiB clusters, several refcount blocks",
    create: ["-o", "cluster_size=4096,refcount_bits=64"],
    write: "write -P 1 0 6M",
    poke: zero(1000, 1200),
    args: ["-r", "all"],
  },
  // a refcount table of several clusters
  {
    name: "512-byte clusters, 64-bit refcounts",
    create: ["-o", "cluster_size=512,refcount_bits=64"],
    write: "write -P 1 0 3M",
    poke: zero(100),
    args: ["-r", "all"],
  },
];

async function makeImage(dir: string, c: Case): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...(c.create ?? []), "img.qcow2", "64M");
  await sh(dir, "qemu-io", "-c", c.write ?? "write -P 1 0 1M", "img.qcow2");
  if (c.snapshot) await sh(dir, "qemu-img", "snapshot", "-c", "s1", "img.qcow2");
  if (c.bitmap) {
    await sh(dir, "qemu-img", "bitmap", "--add", "img.qcow2", "b0");
    await sh(dir, "qemu-io", "-c", "write -P 2 0 192k", "img.qcow2");
  }
  c.poke(`${dir}/img.qcow2`);
}

Deno.test(
  { name: "check -r rebuilds refcount structures as qemu-img does, byte for byte", ignore: !ready },
  async (t) => {
    for (const c of CASES) {
      await t.step(c.name, async () => {
        await repairBoth("instar-rebuild-", c.args, (dir) => makeImage(dir, c), async (q, qd, id) => {
          assert(/rebuild/i.test(q.stderr), `qemu-img did not rebuild: ${q.stderr}`);
          assertEquals(
            (await qemuImg(["check", "img.qcow2"], id)).code,
            (await qemuImg(["check", "img.qcow2"], qd)).code,
          );
        });
      });
    }
  },
);

// A reserved bit in a refcount table entry leaves its block uncounted, so
// qemu's rebuild allocates a new block over it, its overlap check stops the
// write and marks the image corrupt: instar refuses, writing nothing.
Deno.test(
  { name: "check -r all refuses a rebuild qemu would fail, writing nothing", ignore: !ready },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "instar-rebuild-" });
    try {
      await makeImage(dir, { name: "", poke: (p) => setReftableEntry(p, 0, (v) => v | 1n), args: [] });
      const before = await Deno.readFile(`${dir}/img.qcow2`);
      const r = await instarHere(["check", "-r", "all", "img.qcow2"], dir);
      assertEquals(r.code, 1, r.stderr);
      assert(
        /instar: Could not repair 'img.qcow2': .*overlap|write over.*nothing was written\n$/.test(r.stderr),
        r.stderr,
      );
      assertEquals(await Deno.readFile(`${dir}/img.qcow2`), before, "the image changed");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
