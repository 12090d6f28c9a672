// lib/cli/run.ts loads each command's module only when the command runs,
// through a specifier deno cannot see (see `lazy` there), so neither type
// checking nor a typo in the handler's name would surface before a user ran
// that command. This file imports every command module statically (so
// `deno test` type-checks them) and checks each table entry loads exactly
// that module's handler.
import assert from "node:assert/strict";
import { COMMANDS, INSTAR_COMMANDS } from "../lib/cli/run.ts";
import { amendCommand } from "../lib/cli/amend.ts";
import { bitmapCommand } from "../lib/cli/bitmap.ts";
import { checkCommand } from "../lib/cli/check.ts";
import { commitCommand } from "../lib/cli/commit.ts";
import { compareCommand } from "../lib/cli/compare.ts";
import { convertCommand } from "../lib/cli/convert.ts";
import { createCommand } from "../lib/cli/create.ts";
import { ddCommand } from "../lib/cli/dd.ts";
import { infoCommand } from "../lib/cli/info.ts";
import { mapCommand } from "../lib/cli/map.ts";
import { measureCommand } from "../lib/cli/measure.ts";
import { rebaseCommand } from "../lib/cli/rebase.ts";
import { resizeCommand } from "../lib/cli/resize.ts";
import { snapshotCommand } from "../lib/cli/snapshot.ts";
import { inspectCommand } from "../lib/cli/inspect.ts";
import { serveCommand } from "../lib/service/serve.ts";
import { installClientCommand } from "../lib/service/install.ts";
import { configCommand } from "../lib/config/command.ts";

const expected: Record<string, unknown> = {
  amend: amendCommand,
  bitmap: bitmapCommand,
  check: checkCommand,
  commit: commitCommand,
  compare: compareCommand,
  convert: convertCommand,
  create: createCommand,
  dd: ddCommand,
  info: infoCommand,
  map: mapCommand,
  measure: measureCommand,
  rebase: rebaseCommand,
  resize: resizeCommand,
  snapshot: snapshotCommand,
  inspect: inspectCommand,
  serve: serveCommand,
  "install-client": installClientCommand,
  config: configCommand,
};

Deno.test("every command's lazily loaded handler is its module's", async () => {
  const tables = { ...COMMANDS, ...INSTAR_COMMANDS };
  assert.deepEqual(Object.keys(tables).sort(), Object.keys(expected).sort());
  for (const [name, load] of Object.entries(tables)) {
    const handler = await load();
    assert.equal(typeof handler, "function", name);
    assert.equal(handler, expected[name], name);
  }
});
