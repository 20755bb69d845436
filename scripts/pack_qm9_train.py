"""QM9's training split, packed small enough to travel beside the repository to a GPU machine.

    python scripts/pack_qm9_train.py pack .gpu/qm9_train.npz.xz          # here (needs qm9pack)
    python scripts/pack_qm9_train.py unpack .gpu/qm9_train.npz.xz /tmp/qm9_train.npz   # there

A GPU image without the qm9pack package (a 100 MB wheel) cannot build the split, and a machine
that receives the repository may receive little else (scripts/gpu_check.sh). Packed: positions
rounded to 0.001 Angstrom as int16 (at most 0.0005 A off, a tenth of the noise the sampler's last
step leaves), atomic numbers and atom counts as uint8, the npz compressed with LZMA: about 9 MB
for the 100,000 molecules, against about 45 MB as the float64 npz. `unpack` needs numpy alone
and writes the npz (positions, atomic_numbers, num_atoms) that `symdiff train --data` reads.
"""

from __future__ import annotations

import argparse
import io
import lzma
import sys
from pathlib import Path

import numpy as np

RESOLUTION = 1e-3  # Angstrom per int16 unit


def pack_molecules(packed) -> bytes:
    """The LZMA-compressed npz of `packed` (a PackedMolecules) at RESOLUTION."""
    positions = np.round(packed.positions / RESOLUTION)
    if np.abs(positions).max() >= 2**15:
        raise SystemExit(f"positions beyond {2**15 * RESOLUTION:g} A do not fit int16 at this resolution")
    buffer = io.BytesIO()
    np.savez(buffer, positions=positions.astype(np.int16), atomic_numbers=packed.atomic_numbers.astype(np.uint8),
             num_atoms=packed.num_atoms.astype(np.uint8), resolution=np.float64(RESOLUTION))
    return lzma.compress(buffer.getvalue(), preset=9)


def unpack_molecules(data: bytes) -> bytes:
    """The npz (positions float64, atomic_numbers, num_atoms int64) of a packed archive."""
    with np.load(io.BytesIO(lzma.decompress(data))) as arrays:
        buffer = io.BytesIO()
        np.savez(buffer, positions=arrays["positions"].astype(np.float64) * float(arrays["resolution"]),
                 atomic_numbers=arrays["atomic_numbers"].astype(np.int64),
                 num_atoms=arrays["num_atoms"].astype(np.int64))
    return buffer.getvalue()


def pack(out: Path) -> None:
    from symdiff_cli.data.qm9 import qm9_split

    packed = qm9_split("train")
    write_atomically(out, pack_molecules(packed))
    print(f"{out}: {len(packed):,} molecules, {out.stat().st_size / 1e6:.1f} MB")


def unpack(archive: Path, out: Path) -> None:
    write_atomically(out, unpack_molecules(archive.read_bytes()))
    with np.load(out) as arrays:
        print(f"{out}: {len(arrays['num_atoms']):,} molecules")


def write_atomically(path: Path, data: bytes) -> None:
    from symdiff_cli.io.atomic import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pack", help="write the packed training split").add_argument("out", type=Path)
    unpack_parser = sub.add_parser("unpack", help="write the npz that symdiff train --data reads")
    unpack_parser.add_argument("archive", type=Path)
    unpack_parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.out)
    else:
        unpack(args.archive, args.out)


if __name__ == "__main__":
    sys.exit(main())
