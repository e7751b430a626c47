"""Fashion-MNIST from local IDX files (Debian ``dataset-fashion-mnist``), a ``--data`` folder, or a download.

:func:`find_fashion_mnist` uses the given folder if any (and nothing else); otherwise
``/usr/share/datasets/fashion-mnist`` (the Debian package), then the cache ``~/.cache/internimage/FashionMNIST/raw``;
if neither has the four files and ``download`` is set, torchvision downloads them (needs network).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["FASHION_MNIST_CLASSES", "find_fashion_mnist", "load_fashion_mnist"]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "internimage"
INSTALL_HINT = (
    "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
    "pass --data DIR holding the *-ubyte(.gz) files, or run once with network access to download it"
)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path) -> bool:
    return all(_find_file(directory, stem) for pair in _FILES.values() for stem in pair)


def find_fashion_mnist(data: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Folder holding the four Fashion-MNIST IDX files.

    Args:
        data: The folder to use (also ``data/FashionMNIST/raw``); no other place is searched then.
        download: Fall back to torchvision's download into ``~/.cache/internimage``.

    Raises:
        FileNotFoundError: with installation instructions in one line.
    """
    if data is not None:  # an explicit folder is the only place looked at
        for directory in (Path(data), Path(data) / "FashionMNIST" / "raw"):
            if directory.is_dir() and _complete(directory):
                return directory
        raise FileNotFoundError(
            f"--data {data} does not hold the four Fashion-MNIST *-ubyte(.gz) files. {INSTALL_HINT}"
        )
    for directory in (DEBIAN_DIR, CACHE_DIR / "FashionMNIST" / "raw"):
        if directory.is_dir() and _complete(directory):
            return directory
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            logger.info("downloading Fashion-MNIST to %s", CACHE_DIR)
            for train in (True, False):
                FashionMNIST(str(CACHE_DIR), train=train, download=True)
            directory = CACHE_DIR / "FashionMNIST" / "raw"
            if _complete(directory):
                return directory
        except Exception as err:  # no network: URLError, socket errors, HTTP errors ...
            logger.debug("download failed: %s", err)
    raise FileNotFoundError(INSTALL_HINT)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # unsigned byte payload
        raise ValueError(f"{path} is not an IDX ubyte file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {payload.size} bytes for shape {shape}")
    return payload.reshape(shape)


def load_fashion_mnist(directory: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of ``split`` (``train``: 60k, ``test``: 10k)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    paths = [_find_file(directory, stem) for stem in _FILES[split]]
    if any(p is None for p in paths):
        raise FileNotFoundError(f"{directory} lacks the Fashion-MNIST {split} files. {INSTALL_HINT}")
    images, labels = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
