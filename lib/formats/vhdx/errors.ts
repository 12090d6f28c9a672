// qemu-img 7.2's words for a vhdx open that failed in the guest: ERROR
// records with code guestErrors.FORMAT carry a0 = the guest's enum vhdx_error
// (guest/vhdx/vhdx.h), a1/a2 its values. Verified against qemu-img 7.2 on
// crafted images (tests/vhdx_guest_test.ts).
//
// vhdx_open failures without an Error of their own reach qemu-img as
// bdrv_open's "Could not open 'FILE': <strerror>", which qemu-img wraps again:
//   qemu-img: Could not open 'FILE': Could not open 'FILE': Invalid argument
// Region overlaps and BAT entries past EOF print their own lines first
// (CHECK_MSG codes 60..63, lib/abi/check_messages.ts).

/** enum vhdx_error (guest/vhdx/vhdx.h) */
export const vhdxErrors = {
  IO: 1,
  INVAL: 2,
  NOTSUP: 3,
  NO_HEADER: 4,
  LOG_REPLAY: 5,
  LOG_LOOP: 6,
  READ_STATE: 7,
  BAT_RANGE: 8,
  TOO_LARGE: 9,
  CHECK_WORK: 10,
} as const;

/**
 * The text qemu-img prints after "Could not open 'FILE': " for vhdx error
 * `code` (ERROR.a0). Lines after the first are qemu's hint lines. Read-time
 * errors (READ_STATE, BAT_RANGE) give the strerror text the caller's read
 * message ends with. Unknown codes (untrusted guest values) get a generic
 * text rather than a throw.
 */
export function vhdxErrorText(code: number | bigint, a1: bigint, _a2: bigint, filename: string): string {
  const again = (reason: string) => `Could not open '${filename}': ${reason}`;
  switch (Number(code)) {
    case vhdxErrors.IO:
      return again("Input/output error");
    case vhdxErrors.INVAL:
      return again("Invalid argument");
    case vhdxErrors.NOTSUP:
      return again("Operation not supported");
    case vhdxErrors.NO_HEADER:
      return "No valid VHDX header found";
    case vhdxErrors.LOG_REPLAY:
      return `VHDX image file '${filename}' opened read-only, but contains a log that needs to be replayed\n` +
        `To replay the log, run:\nqemu-img check -r all '${filename}'`;
    case vhdxErrors.LOG_LOOP:
      // qemu 7.2's log search never ends (or runs for hours) on this log.
      return `VHDX log search does not terminate (${a1} log sectors visited); refusing the image`;
    case vhdxErrors.TOO_LARGE:
      return "Could not refresh total sector count: File too large";
    case vhdxErrors.CHECK_WORK:
      return `VHDX region overlap checks exceed instar's work bound (at BAT entry ${a1}); refusing the image`;
    case vhdxErrors.READ_STATE:
    case vhdxErrors.BAT_RANGE:
      return "Input/output error";
    default:
      return again("Invalid argument");
  }
}
