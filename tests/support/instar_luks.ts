// instar run in this process for the LUKS-writing tests, with PBKDF2's
// calibration answer given (INSTAR_LUKS_PBKDF2_RATE) so key slots are cheap
// to make and open; `calibrate` leaves the calibration to instar.
import type { Outcome } from "../cli_helpers.ts";
import { run } from "../../lib/cli/run.ts";

export async function instarLuks(args: string[], cwd: string, calibrate = false): Promise<Outcome> {
  let stdout = "", stderr = "";
  const env = Deno.env.toObject();
  if (!calibrate) env.INSTAR_LUKS_PBKDF2_RATE = "200000";
  const code = await run(args, {
    out: (t) => (stdout += t),
    err: (t) => (stderr += t),
    context: { cwd, env },
  });
  return { stdout, stderr, code };
}
