// `convert -O host_device`: qemu's checks of the target before anything is
// written, in its order: the -o options, compression, preallocation, then
// the open of the device (lib/convert/host_device.ts words each).
import { errnoText } from "../host/errno.ts";
import { ConvertError } from "./errors.ts";
import { OutputOptionError } from "./output_options.ts";
import {
  HOST_DEVICE,
  hostDeviceOpenError,
  hostDeviceOptions,
  hostDevicePreallocationError,
} from "./host_device.ts";

export interface HostDeviceRequest {
  /** -o as given. */
  options?: string;
  /** -c */
  compress: boolean;
  /** -n */
  skipCreate: boolean;
}

/** Throws ConvertError in qemu's words when `target` cannot be written as a host_device. */
export async function checkHostDevice(a: HostDeviceRequest, target: string): Promise<void> {
  let mode: string;
  try {
    mode = hostDeviceOptions(a.options ?? "", target);
  } catch (e) {
    if (e instanceof OutputOptionError) throw new ConvertError(e.message);
    throw e;
  }
  if (a.compress) throw new ConvertError("Compression not supported for this file format");
  const prefix = `${target}: error while converting ${HOST_DEVICE}: `;
  const prealloc = a.skipCreate ? undefined : hostDevicePreallocationError(mode);
  if (prealloc) throw new ConvertError(prefix + prealloc);
  const why = await hostDeviceOpenError(target, errnoText);
  if (why === undefined) return;
  throw new ConvertError(
    a.skipCreate
      ? `Could not open '${target}': ${why}`
      : `${prefix}Protocol driver '${HOST_DEVICE}' does not support image creation, and opening the image failed: ${why}`,
  );
}
