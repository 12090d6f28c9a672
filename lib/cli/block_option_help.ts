// qemu-img's print_block_option_help: the creation options of a format (and,
// with a target filename, the protocol's too) for `-o help` of create and
// convert.
import { CliError } from "./messages.ts";
import type { Io } from "./common.ts";
import { driverFor } from "../formats/mod.ts";
import { appendDescs, FILE_CREATE_OPTS, optionHelp } from "../formats/options.ts";

/** qemu-img's print_block_option_help. */
export function blockOptionHelp(io: Io, filename: string | undefined, fmt: string): number {
  const create = driverFor(fmt)?.create;
  if (!create) {
    if (driverFor(fmt)) throw new CliError([`Creating '${fmt}' images is not supported by instar yet`]);
    throw new CliError([`Unknown file format '${fmt}'`]);
  }
  const own = create.own;
  if (filename !== undefined) {
    io.out("Supported options:\n" + optionHelp(appendDescs(own, FILE_CREATE_OPTS)));
  } else {
    io.out(
      `Supported ${fmt} options:\n` + optionHelp(own) +
        "\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n",
    );
  }
  return 0;
}
