// getopt_long's prefix rule with instar's own long options next to qemu-img's.
import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import { getopt, type LongOption, type Parsed } from "./getopt.ts";

const LONGS: LongOption[] = [
  { name: "max-length", hasArg: true, id: "l" },
  { name: "start-offset", hasArg: true, id: "s" },
  { name: "max-spool", hasArg: true, id: "max-spool", instar: true },
  { name: "backing-dir", hasArg: true, id: "backing-dir", instar: true },
];

function parse(...args: string[]): Parsed[] {
  const seen: Parsed[] = [];
  getopt(["map", ...args], ":f:", LONGS, (p) => seen.push(p));
  return seen;
}

Deno.test("getopt: a qemu-img abbreviation keeps its meaning next to instar's options", () => {
  assertEquals(parse("--max", "5"), [{ id: "l", value: "5" }]);
  assertEquals(parse("--max-s=7"), [{ id: "max-spool", value: "7" }]);
  assertEquals(parse("--back", "d"), [{ id: "backing-dir", value: "d" }]);
  assertEquals(parse("--st=1"), [{ id: "s", value: "1" }]);
});

Deno.test("getopt: a prefix two qemu-img options share is refused as qemu-img refuses it", () => {
  const longs: LongOption[] = [{ name: "object", hasArg: true, id: "o" }, {
    name: "output",
    hasArg: true,
    id: "p",
  }];
  throws(() => getopt(["info", "--o=x"], ":", longs, () => {}), /unrecognized option '--o=x'/);
});
