// CHS geometry for VHD, following the VHD specification's algorithm as qemu
// 7.2 applies it (calculate_geometry + calculate_rounded_image_size): qemu
// searches upward from the requested sector count until the geometry's
// C*H*S covers it, so the created image is never smaller than requested.
// Field widths match the footer: cylinders 16 bits, heads and sectors 8 bits.

const MAX_GEOMETRY = 65535 * 16 * 255;

export interface VpcChs {
  cylinders: number;
  heads: number;
  spc: number;
}

/** The spec's geometry for exactly `totalSectors` (may cover fewer sectors). */
export function chsFor(totalSectors: number): VpcChs {
  const ts = Math.min(totalSectors, MAX_GEOMETRY);
  let spc: number;
  let heads: number;
  let cth: number;
  if (ts >= 65535 * 16 * 63) {
    spc = 255;
    heads = 16;
    cth = Math.floor(ts / spc);
  } else {
    spc = 17;
    cth = Math.floor(ts / spc);
    // heads is an 8-bit field in qemu; the truncation never changes the
    // outcome (any real value above 16 takes the next branch) but is kept.
    heads = Math.ceil(cth / 1024) & 0xff;
    if (heads < 4) heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spc = 31;
      heads = 16;
      cth = Math.floor(ts / spc);
    }
    if (cth >= heads * 1024) {
      spc = 63;
      heads = 16;
      cth = Math.floor(ts / spc);
    }
  }
  return { cylinders: Math.floor(cth / heads) & 0xffff, heads, spc };
}

/**
 * The smallest-step geometry covering `sectors` (capped at the CHS maximum),
 * as qemu's upward search finds it. For 0 sectors the geometry is 0/0/0.
 */
export function vpcGeometry(sectors: bigint): VpcChs {
  const want = Number(sectors < BigInt(MAX_GEOMETRY) ? sectors : BigInt(MAX_GEOMETRY));
  let g: VpcChs = { cylinders: 0, heads: 0, spc: 0 };
  // Bounded: consecutive achievable products are at most 16*255 sectors
  // apart, and `want` never exceeds MAX_GEOMETRY, which is achievable.
  for (let i = 0; want > g.cylinders * g.heads * g.spc; i++) g = chsFor(want + i);
  return g;
}
