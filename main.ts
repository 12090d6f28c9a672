import { run } from "./lib/cli/run.ts";
Deno.exit(await run(Deno.args));
