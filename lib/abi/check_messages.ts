// Diagnostics `check` prints on stderr, one per CHECK_MSG record. The guest
// sends a code and up to four u64 arguments; the host formats the text with
// qemu-img's exact wording (qemu 7.2 block/qcow2-refcount.c). Templates use
// only these conversions, applied to a[0..3] in order:
//   %d  signed decimal (u64 reinterpreted as i64)   %u  unsigned decimal
//   %x  lower-case hex   %#x  0x-prefixed hex (as printf's %#x: "0" for 0)
//   %S  "ERROR" or "Leaked"/"Repairing" chosen by the code's `words` table, indexed by the arg
// A template ends with the newline qemu prints.
export interface CheckMessage {
  name: string;
  code: number;
  text: string;
  /** For %S: index -> word. */
  words?: string[];
}

export const checkMessages: CheckMessage[] = [
  {
    name: "REFCOUNT_MISMATCH",
    code: 1,
    text: "%S cluster %d refcount=%u reference=%u\n",
    words: ["ERROR", "Leaked"],
  },
];
