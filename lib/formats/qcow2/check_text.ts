// Formats the guest's CHECK_MSG records into qemu-img check's stderr lines,
// using the templates in lib/abi/check_messages.ts. Arguments are untrusted
// numbers; only the conversions the templates document are supported.
import { type CheckMessage, checkMessages } from "../../abi/check_messages.ts";

const byCode = new Map<number, CheckMessage>(checkMessages.map((m) => [m.code, m]));

export function formatCheckMessage(code: number, args: bigint[]): string {
  const m = byCode.get(code);
  if (!m) return `Check diagnostic ${code} (unknown)\n`;
  let i = 0;
  const next = () => args[i++] ?? 0n;
  return m.text.replace(/%(#x|[duxS%])/g, (conv) => {
    switch (conv) {
      case "%%":
        return "%";
      case "%d":
        return BigInt.asIntN(64, next()).toString();
      case "%u":
        return BigInt.asUintN(64, next()).toString();
      case "%x":
        return BigInt.asUintN(64, next()).toString(16);
      case "%#x": {
        const v = BigInt.asUintN(64, next());
        return v === 0n ? "0" : `0x${v.toString(16)}`;
      }
      case "%S": {
        const v = next();
        return m.words?.[Number(v)] ?? "?";
      }
    }
    return conv;
  });
}
