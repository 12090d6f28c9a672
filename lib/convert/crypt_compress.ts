// Compressed output (convert -c to qcow2, streamOptimized vmdk) from an
// encrypted source: which guest program reads the chain and compresses.
// The reading guests (convert_luks, convert_luks2, convert_qcrypt) have no
// compressor and the compressing ones (convert_zlib, convert_zstd) no
// decryption; each program stays under 384 KiB, so three more carry both,
// with only the readers an encrypted chain needs (guest/ops.mk):
// convert_crypt_zlib (every encrypted source), convert_qcrypt_zstd
// (encrypted qcow2 over qcow2 or raw layers, without libzstd's decoder) and
// convert_luks2_zstd (LUKS1, LUKS2: no backing file). A chain with a vpc,
// vhdx or vmdk layer: convert_crypt_other_zlib or convert_crypt_other_zstd
// (no LUKS2; the zstd one without libzstd's decoder either).
import { formats } from "../abi/spec.ts";

/** A source layer as the convert job lists it. */
export interface CryptLayer {
  formatCode: number;
  secret?: Uint8Array;
}

/** An image of the source chain as the command opened it (only what the choice needs). */
export interface CryptChainImage {
  secret?: Uint8Array;
  qcow2?: { compressionType: "zlib" | "zstd" };
  format?: string;
  luks2Ram?: number;
}

/** The program for compressing op `op` (convert_zlib or convert_zstd) over an encrypted chain. */
export function cryptCompressOp(layers: CryptLayer[], op: string): string {
  if (op === "convert_zlib") return "convert_crypt_zlib";
  if (op !== "convert_zstd") throw new Error(`no encrypted-source variant of ${op}`);
  const qcrypt = layers.some((l) => l.secret && l.formatCode === formats.QCOW2);
  return qcrypt ? "convert_qcrypt_zstd" : "convert_luks2_zstd";
}

/**
 * The refusal, if any, for compressed output from an encrypted chain: a
 * LUKS2 image with a vpc, vhdx or vmdk layer (convert_crypt_other_zlib and
 * _zstd have no LUKS2 reader), or zstd-compressed output over a
 * zstd-compressed qcow2 layer: convert_qcrypt_zstd and
 * convert_crypt_other_zstd have no zstd decoder (qemu writes no compressed
 * cluster into an encrypted qcow2; a plain backing file may have them).
 */
export function cryptCompressRefusal(chain: CryptChainImage[], outputZstd: boolean): string | undefined {
  const other = chain.some((img) =>
    img.format !== undefined && !["raw", "qcow2", "luks"].includes(img.format)
  );
  if (other && chain.some((img) => img.luks2Ram)) return cryptOtherLuks2Refusal;
  if (!outputZstd || !chain.some((img) => img.secret && img.qcow2)) return undefined;
  if (!chain.some((img) => img.qcow2?.compressionType === "zstd")) return undefined;
  return "Compressed zstd output from an encrypted qcow2 image over a zstd-compressed qcow2 layer " +
    "is not supported by instar convert";
}

/** convert_crypt_other_zlib and _zstd have no LUKS2 reader. */
export const cryptOtherLuks2Refusal =
  "Compressed output from a LUKS2 image beside a vpc, vhdx or vmdk image " +
  "is not supported by instar convert";
