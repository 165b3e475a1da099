"""Test helper: every single-byte change of a file must be detected."""

import cmodel
from cmodel import CmzError


def undetected_byte_flips(good: bytes, scratch) -> list[tuple[int, int]]:
    """The (position, xor mask) pairs, over every byte and the masks 0xFF and
    0x01, whose flipped file opens and passes ``verify()``."""
    undetected = []
    for pos in range(len(good)):
        for mask in (0xFF, 0x01):
            bad = bytearray(good)
            bad[pos] ^= mask
            scratch.write_bytes(bad)
            try:
                f = cmodel.open(scratch)
            except CmzError:
                continue
            try:
                f.verify()
            except CmzError:
                continue
            finally:
                f.close()
            undetected.append((pos, mask))
    return undetected
