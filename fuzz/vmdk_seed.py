# Small hand-made VMDK seeds for the vmdk_sparse / vmdk_stream / measure_scan
# fuzz targets (qemu-img's own sparse files start their grains at 64 KiB):
# a monolithicSparse file with 4 KiB grains, a redundant grain directory and
# a zeroed-grain GTE (12 KiB), and a streamOptimized file with two
# compressed grains, grain-table / grain-directory / footer / end-of-stream
# markers and its GD found from the footer (5.5 KiB), and a VMDK3 (COWD) file. qemu-img 7.2 opens,
# maps and checks both cleanly.
# usage: /usr/bin/python3 fuzz/vmdk_seed.py OUT_DIR
import os, sys
import struct, zlib
out = sys.argv[1] if len(sys.argv) > 1 else '.'
def header(flags, cap, gran, desc_off, desc_size, gtes, rgd, gd, grain_off, comp):
    h = b'KDMV' + struct.pack('<IIQQQQIQQQ', 1, flags, cap, gran, desc_off, desc_size, gtes, rgd, gd, grain_off)
    h += b'\0' + b'\n \r\n' + struct.pack('<H', comp)
    return h.ljust(512, b'\0')
desc = b'# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="monolithicSparse"\n'
# sparse: 256 sectors, 8-sector grains, 32 GT entries
gt = [0]*32; gt[0] = 8; gt[5] = 16; gt[9] = 1
img = bytearray(header(3 | 4, 256, 8, 1, 1, 32, 3, 2, 8, 0))
img += desc.ljust(512, b'\0')
img += struct.pack('<I', 4).ljust(512, b'\0')   # gd at 2 -> GT at 4
img += struct.pack('<I', 4).ljust(512, b'\0')   # rgd at 3
img += b''.join(struct.pack('<I', x) for x in gt).ljust(2048, b'\0')  # sectors 4..7
img += bytes([0x11]) * 4096 + bytes([0x22]) * 4096
open(os.path.join(out, 'sparse_small.vmdk'), 'wb').write(img)
# stream: compressed grains with markers, GD at the end (footer)
GD_AT_END = 2**64 - 1
s = bytearray(header(1 | (1 << 16) | (1 << 17), 256, 8, 1, 1, 32, 0, GD_AT_END, 2, 1))
s += desc.replace(b'monolithicSparse', b'streamOptimized').ljust(512, b'\0')
def pad(b): return b + b'\0' * (-len(b) % 512)
gte = [0]*32
for lba, byte in ((0, 0x33), (24, 0x44)):
    gte[lba // 8] = len(s) // 512
    z = zlib.compress(bytes([byte]) * 4096)
    s += pad(struct.pack('<QI', lba, len(z)) + z)
def marker(t, size): return struct.pack('<QII', size, 0, t).ljust(512, b'\0')
s += marker(1, 4); gt_sector = len(s) // 512
s += pad(b''.join(struct.pack('<I', x) for x in gte))
s += marker(2, 1); gd_sector = len(s) // 512
s += pad(struct.pack('<I', gt_sector))
s += marker(3, 1)
s += header(1 | (1 << 16) | (1 << 17), 256, 8, 1, 1, 32, 0, gd_sector, 2, 1)
s += marker(0, 0)
open(os.path.join(out, 'stream_small.vmdk'), 'wb').write(s)
# VMDK3 (COWD): descriptor (CID) at 0x200, GD at sector 2, a 4096-entry GT, two 4 KiB grains
h = b'COWD' + struct.pack('<10I', 1, 3, 1024, 8, 2, 1, 0, 0, 0, 0)
c = bytearray(h.ljust(512, b'\0'))
c += b'CID=abcdef01\nparentCID=ffffffff\n'.ljust(512, b'\0')
c += struct.pack('<I', 3).ljust(512, b'\0')
g = [0] * 4096; g[0] = 35; g[3] = 43
c += b''.join(struct.pack('<I', x) for x in g)
c += bytes([0x5a]) * 4096 + bytes([0xa5]) * 4096
open(os.path.join(out, 'cowd_small.vmdk'), 'wb').write(c)
