"""Helpers shared by several test modules (pytest puts this folder on ``sys.path`` for ``conftest``).

* NaN/Inf cases of the DCN operators, for every backend's tests: every backend must propagate non-finite values
  exactly as the reference does. A case is a small float64 (input, offset, mask, grad_output, args) with a few
  non-finite entries placed in one of the inputs. Backends are compared with :func:`assert_same_nonfinite`: NaN
  positions (for infinite inputs: non-finite positions, since ``inf * (a + b)`` and ``inf * a + inf * b`` differ)
  must be identical and finite entries close. The reference itself is pinned by hand in ``tests/test_ops.py``.
* Tiny data sets on disk: an image folder (:func:`make_folder`) and Fashion-MNIST IDX files (:func:`write_idx`).
* :func:`require_kernel`: build (or load) a C++ kernel once, or skip the module that needs it.
* :func:`cli_fails`: run the CLI in-process and check it failed with exactly one ``internimage <cmd>: error:`` line.
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.ops import make_args
from internimage.ops.args import DCNv3Args

NAN, INF = float("nan"), float("inf")
#: (poisoned input, value): NaN and both infinities in each of the three inputs.
POISONS = [(name, value) for name in ("input", "offset", "mask") for value in (NAN, INF, -INF)]
POISON_IDS = [f"{name}-{value}" for name, value in POISONS]
NAMES = ("output", "grad_input", "grad_offset", "grad_mask")


def nonfinite_case(
    poisoned: str, value: float, softmax: bool, n: int = 1, h: int = 4, w: int = 5, group: int = 2, d: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, DCNv3Args]:
    """Random float64 (input, offset, mask, grad_output, args) with ``value`` written into ``poisoned``.

    Offsets spread +-3 pixels, so some samples fall outside the image (where a non-finite mask still counts) and
    some inside. ``offset`` gets ``value`` in one x and one y component of two points of different pixels;
    ``mask`` in two weights (logits with ``softmax``), of a point sampling inside and one sampling outside; ``input`` in
    two channels of two pixels.
    """
    gen = torch.Generator().manual_seed(11)
    args = make_args(3, 1, 1, 1, group, 1.0, False, softmax)
    ho, wo = args.output_size(h, w)
    p = args.num_points
    x = torch.randn(n, h, w, group * d, generator=gen, dtype=torch.float64)
    offset = torch.randn(n, ho, wo, group * p * 2, generator=gen, dtype=torch.float64) * 1.5
    mask = torch.rand(n, ho, wo, group * p, generator=gen, dtype=torch.float64)
    grad = torch.randn(n, ho, wo, group * d, generator=gen, dtype=torch.float64)
    if poisoned == "input":
        x[0, 1, 2, 0] = value
        x[0, 3, 0, group * d - 1] = value
    elif poisoned == "offset":
        offset[0, 1, 1, 2 * 4] = value  # group 0, centre point, x
        offset[0, 2, 3, 2 * p + 2 * 7 + 1] = value  # group 1, point 7, y
    elif poisoned == "mask":
        offset[0, 2, 2, 6:8] = 0.25  # group 0, point 3 of pixel (2, 2) samples inside the image...
        mask[0, 2, 2, 3] = value  # ...with a non-finite weight
        offset[0, 0, 0, 2 * p + 2 * 5] = -40.0  # group 1, point 5 of pixel (0, 0) samples far outside...
        mask[0, 0, 0, p + 5] = value  # ...with a non-finite weight
    else:
        raise ValueError(f"unknown input {poisoned!r}")
    return x, offset, mask, grad, args


def assert_same_nonfinite(
    name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, kinds: bool = True
) -> None:
    """Identical NaN and +-Inf positions (only non-finite positions if not ``kinds``), finite entries close.

    ``kinds=False`` is for comparisons across different association of the same arithmetic, where
    ``inf * (a - b)`` on one side is ``inf * a - inf * b`` (NaN) on the other.
    """
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    tests = (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf))
    for label, test in tests if kinds else (("non-finite", lambda t: ~torch.isfinite(t)),):
        where_got, where_want = test(got), test(want)
        if not torch.equal(where_got, where_want):
            extra = (where_got & ~where_want).nonzero().tolist()[:4]
            missing = (where_want & ~where_got).nonzero().tolist()[:4]
            raise AssertionError(f"{name}: {label} positions differ: missing at {missing}, unexpected at {extra}")
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def make_folder(root: Path, classes: int = 3, per_class: int = 4, corrupt: int = 1, size: int = 20) -> Path:
    """A tiny ImageFolder whose class is the dominant colour; ``corrupt`` broken files per class 0."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    for i in range(corrupt):
        (root / "class0" / f"broken{i}.jpg").write_bytes(b"not an image at all")
    if corrupt:  # a truncated PNG: header fine, data cut
        data = (root / "class1" / "0.png").read_bytes()
        (root / "class1" / "truncated.png").write_bytes(data[: len(data) // 2])
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8 values) as a gzipped IDX file, the Fashion-MNIST / MNIST format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def require_kernel(available: Callable[[], bool], title: str) -> None:
    """Build (or load) a C++ kernel; skip the calling test only if it truly cannot be built here."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = available()
    if not ok:
        pytest.skip(f"the {title} cannot be built here: {[str(w.message) for w in caught]}")


def cli_fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run ``internimage ARGV`` in-process; assert exit 1, one ``internimage <cmd>: error:`` line holding every
    needle, and no traceback. Returns that line."""
    from internimage.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("internimage ")]
    assert code == 1, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"internimage {argv[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
