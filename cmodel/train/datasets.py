"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, and the
IDX file reader it needs (numpy only).

IDX (LeCun's MNIST format): a big-endian header ``00 00 TT NN`` — two zero
bytes, the element type ``TT`` (see ``IDX_TYPES``), the number of dimensions
``NN`` — then ``NN`` big-endian uint32 sizes, then the elements in C order,
big-endian.  The package ships the four files gzip-compressed under
``FASHION_MNIST_DIR``; plain (gunzipped) copies are read too.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from ..errors import CmzError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type byte → big-endian numpy dtype.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Largest decompressed IDX file read: Fashion-MNIST's biggest is 47 MB; the
# limit keeps a corrupt size field from asking for terabytes.
MAX_IDX_BYTES = 1 << 31

_GZIP_MAGIC = b"\x1f\x8b"


class DatasetMissing(FileNotFoundError):
    """A dataset file is not installed; the message says how to install it."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed or plain) into a native-endian array.

    Raises:
        CmzError: ``check='input'``: not an IDX file, an unknown type, or a
            length that does not match the header's sizes.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise CmzError("input", f"IDX file {path}: expected the magic 00 00 <type> <ndim>; found {head.hex(' ') or 'an empty file'}")
            dtype = IDX_TYPES.get(head[2])
            if dtype is None:
                raise CmzError("input", f"IDX file {path}: expected an element type in {', '.join(f'0x{t:02X}' for t in IDX_TYPES)}; found 0x{head[2]:02X}")
            ndim = head[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) != 4 * ndim:
                raise CmzError("input", f"IDX file {path}: expected {ndim} dimension sizes (4 bytes each); found {len(dims_raw)} bytes")
            shape = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            if nbytes > MAX_IDX_BYTES:
                raise CmzError("input", f"IDX file {path}: expected at most {MAX_IDX_BYTES} data bytes (MAX_IDX_BYTES); found a header declaring {nbytes} for shape {list(shape)}")
            data = f.read(nbytes + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
        raise CmzError("input", f"IDX file {path}: expected a sound gzip stream; found {type(e).__name__}: {e}") from None
    if len(data) != nbytes:
        raise CmzError("input", f"IDX file {path}: expected {nbytes} data bytes for shape {list(shape)} of {np.dtype(dtype).name}; found {len(data) if len(data) < nbytes else 'more'}")
    return np.frombuffer(data, dtype).astype(np.dtype(dtype).newbyteorder("="), copy=True).reshape(shape)


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise DatasetMissing(f"Fashion-MNIST not found (expected {stem}.gz or {stem} in {root}); install the Debian package "
                         f"{FASHION_MNIST_PACKAGE}: apt-get update && apt-get install -y {FASHION_MNIST_PACKAGE}")


def fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: the folder with the IDX files (default ``FASHION_MNIST_DIR``,
            where the Debian package ``dataset-fashion-mnist`` puts them).

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and uint8 ``[N]``.

    Raises:
        DatasetMissing: (a ``FileNotFoundError``) a file is absent; the
            one-line message names the package to install.
        CmzError: ``check='input'``: a file is not sound IDX, or images and
            labels disagree.

    Example:
        >>> x, y = fashion_mnist("test")   # doctest: +SKIP
    """
    if split not in FASHION_MNIST_FILES:
        raise CmzError("input", f"split: expected one of {sorted(FASHION_MNIST_FILES)}; found {split!r}")
    root = os.fspath(root) if root is not None else FASHION_MNIST_DIR
    img_stem, lab_stem = FASHION_MNIST_FILES[split]
    img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise CmzError("input", f"IDX file {img_path}: expected uint8 images [N, H, W]; found {images.dtype} of shape {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise CmzError("input", f"IDX file {lab_path}: expected {images.shape[0]} uint8 labels (one per image); found {labels.dtype} of shape {list(labels.shape)}")
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise CmzError("input", f"IDX file {lab_path}: expected labels 0..{len(FASHION_MNIST_CLASSES) - 1}; found {int(labels.max())}")
    return images, labels
