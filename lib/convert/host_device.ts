// `convert -O host_device`: qemu's host_device protocol driver as the target
// format. It creates nothing: the target must already be a block device,
// which is then written as `-O raw` writes a device (docs/convert.md). Its
// create options are preallocation (off only) and size; everything else is
// qemu's words for a target that is not a device.
import { appendDescs, FILE_CREATE_OPTS, type OptDesc, optionHelp, parseOptions } from "../formats/options.ts";
import { hostPath } from "../host/context.ts";
import { OutputOptionError } from "./output_options.ts";

export const HOST_DEVICE = "host_device";

/** hdev's create options (file-posix.c raw_create_opts as host_device lists them). */
const HOST_DEVICE_OPTS: OptDesc[] = [
  { name: "preallocation", type: "string", help: "Preallocation mode (allowed values: off)" },
  { name: "size", type: "size", help: "Virtual disk size" },
];

/**
 * The create options img_convert parses: host_device's own, then those of
 * the protocol qemu probes for the target name (bdrv_find_protocol): a
 * device node is host_device itself, any other name the file protocol
 * (nocow, extent_size_hint). A name qemu appends twice keeps the first.
 */
function optionDescs(target: string | undefined): OptDesc[] {
  if (target === undefined) return HOST_DEVICE_OPTS;
  let device = false;
  try {
    const st = Deno.statSync(hostPath(target));
    device = st.isBlockDevice === true || st.isCharDevice === true;
  } catch { /* not there: the file protocol */ }
  return device ? HOST_DEVICE_OPTS : appendDescs(HOST_DEVICE_OPTS, FILE_CREATE_OPTS);
}

/** `-o help` for host_device, with or without a target name (print_block_option_help). */
export function hostDeviceHelp(target: string | undefined): string {
  const list = optionHelp(optionDescs(target));
  return target !== undefined ? `Supported options:\n${list}` : `Supported host_device options:\n${list}` +
    "\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n";
}

/** Parses `-o` (qemu_opts_do_parse's "Invalid parameter"): the preallocation mode. */
export function hostDeviceOptions(text: string, target: string): string {
  const parsed = parseOptions(text, optionDescs(target));
  if (!parsed.ok) throw new OutputOptionError(parsed.error.message);
  return parsed.value.items.findLast((i) => i.name === "preallocation")?.str ?? "off";
}

/** bdrv_co_create_opts_simple's refusal of a mode other than off (kubevirt matches this text). */
export function hostDevicePreallocationError(mode: string): string | undefined {
  return mode === "off" ? undefined : `Unsupported preallocation mode '${mode}'`;
}

/**
 * hdev_open of an existing name: undefined for a block device (or a
 * character device, which the caller refuses in its own words), else
 * qemu's reason the open failed.
 */
export async function hostDeviceOpenError(
  name: string,
  errnoText: (e: unknown) => string,
): Promise<string | undefined> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(hostPath(name));
  } catch (e) {
    return `Could not open '${name}': ${errnoText(e)}`;
  }
  if (st.isDirectory) return `Could not open '${name}': Is a directory`;
  if (st.isBlockDevice || st.isCharDevice) return undefined;
  return `'host_device' driver requires '${name}' to be either a character or block device`;
}
