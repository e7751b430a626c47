"""The format-independent core of the checkpoint readers: read safely, detect the layout, compare, write.

Formats recognised (the official release's files), all read with ``torch.load(weights_only=True)`` or safetensors:

* official classification ``.pth``: ``{'model': sd}``; training checkpoints add ``model_ema``, optimizer, ...
* HuggingFace remote code: every key prefixed ``model.``, ``gamma1/2`` renamed ``layer_scale1/2``;
* mmdet / mmseg: ``{'state_dict': sd}`` with the backbone under ``backbone.`` (neck and heads are set aside);
* DDP / ``torch.compile`` wrappers (``module.``, ``_orig_mod.``) and our own safetensors files.

Our own key layout *is* the official classification layout, so conversion is renaming only.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "LoadResult",
    "checkpoint_filter_fn",
    "convert_checkpoint",
    "detect_format",
    "refusal_message",
    "load_backbone_bodies",
    "load_checkpoint",
    "load_fitting",
    "normalize_state_dict",
    "read_checkpoint",
    "save_state_dict",
]

logger = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_HEAD_PREFIXES = ("head.",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did.

    Attributes:
        format: Detected source format (``official``, ``official-ema``, ``hf``, ``mmdet`` (mmdet / mmseg), ``ours``
            (our detector / segmentor weights or training checkpoint), ``plain``).
        missing: Model keys absent from the checkpoint.
        unexpected: Checkpoint keys the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for shape conflicts.
        set_aside: Non-backbone entries of a detection/segmentation checkpoint (neck, heads), untouched.
    """

    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    set_aside: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def skipped(self) -> list[str]:
        """File tensors that were not loaded: unknown names and shape conflicts."""
        return [*self.unexpected, *(k for k, _, _ in self.mismatched)]

    def summary(self) -> str:
        """One line naming every problem (at most five keys of each kind)."""
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label} ({_preview(items)})")
        if self.mismatched:
            shown = ", ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:5])
            more = f", +{len(self.mismatched) - 5} more" if len(self.mismatched) > 5 else ""
            parts.append(f"{len(self.mismatched)} shape conflicts ({shown}{more})")
        return "; ".join(parts) if parts else "all keys match"


def _preview(keys: list[str], n: int = 5) -> str:
    more = f", +{len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict, never executing pickled code.

    Raises:
        CheckpointError: missing file, unreadable/corrupt file, or content that is not a dict.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        with warnings.catch_warnings():
            # Raw pickles (protocol > 2) make torch warn before it refuses them; the refusal says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for corrupt files
        refused = refusal_message(path, err)
        if refused is not None:
            raise CheckpointError(refused) from err
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def _pickled_globals(path: Path, limit: int = 16 << 20) -> list[str]:
    """``module.name`` of the Python objects a pickled (or zipped ``torch.save``) file would import."""
    import io
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # a damaged archive: nothing more to say than the load error
            return []
    with open(path, "rb") as f:
        data = f.read(limit)
    names: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # the legacy torch format is several pickles in a row
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # tensor data after the pickles, or a cut file
            break
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # private helper of torch; without it every name is reported
        allowed = set()
    return list(dict.fromkeys(n for n in names if n not in allowed))


def refusal_message(path: str | os.PathLike, err: BaseException) -> str | None:
    """One line for a file ``torch.load(weights_only=True)`` refused; None for any other load error.

    PyTorch's own message starts by suggesting ``weights_only=False``, which would run the file's pickled code;
    this one names what the file holds instead.
    """
    import pickle

    if not (isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower()):
        return None
    path = Path(path)
    names = _pickled_globals(path)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if not names and match:
        names = [match.group(1)]
    if not names:  # not a refused object but a damaged or foreign file: the caller's "cannot read" fits
        return None
    return (
        f"refused {path}: it holds pickled Python objects ({_preview(names, 3)}), not only tensors, and is not loaded "
        "for safety (pickled objects can run code); save the weights as a state dict or .safetensors"
    )


def detect_format(ckpt: Mapping[str, Any], use_ema: bool = False) -> tuple[str, dict[str, torch.Tensor]]:
    """Find the state dict inside a checkpoint container and name its format.

    Args:
        ckpt: What :func:`read_checkpoint` returned.
        use_ema: Prefer ``model_ema`` where a training checkpoint has it.

    Returns:
        ``(format, state_dict)`` with the state dict still in its source key layout.
    """
    if use_ema and isinstance(ckpt.get("model_ema"), Mapping):
        return "official-ema", dict(ckpt["model_ema"])
    if use_ema and isinstance(ckpt.get("state_dict_ema"), Mapping):
        return "official-ema", dict(ckpt["state_dict_ema"])
    for key, fmt in (("model", "official"), ("state_dict", "mmdet"), ("module", "official")):
        if isinstance(ckpt.get(key), Mapping):
            sd = dict(ckpt[key])
            if fmt == "official" and _has_prefix(sd, "backbone."):
                fmt = "ours"  # our detection / segmentation training checkpoint (mmdet / mmseg use 'state_dict')
            return fmt, sd
    sd = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint has no tensors (expected a state dict or a 'model'/'state_dict' entry)")
    if _has_prefix(_strip_wrappers(sd), "backbone."):
        return "ours", sd  # a bare dense-model state dict: our model.safetensors (mmdet / mmseg nest theirs)
    if _has_prefix(_strip_wrappers(sd), "model."):
        return "hf", sd
    return "plain", sd


def _has_prefix(sd: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in _WRAPPER_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def normalize_state_dict(
    sd: Mapping[str, torch.Tensor], fmt: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rename any supported layout to ours (= the official classification layout).

    Args:
        sd: A state dict in any supported layout.
        fmt: Its format if known (from :func:`detect_format`); detected otherwise.

    Returns:
        ``(backbone_and_head, set_aside)``: ``set_aside`` holds the non-backbone entries (neck, RPN, RoI and
        decode heads) of detection/segmentation checkpoints, with their original names.
    """
    sd = _strip_wrappers(sd)
    if fmt is None:
        fmt, _ = detect_format(sd)
    set_aside: dict[str, torch.Tensor] = {}
    if fmt in ("mmdet", "ours") or _has_prefix(sd, "backbone."):
        set_aside = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    elif fmt == "hf" or (_has_prefix(sd, "model.") and not _has_prefix(sd, "patch_embed.")):
        sd = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        # HF renamed the layer-scale parameters; ours keep the official names.
        k = k.replace(".layer_scale1", ".gamma1").replace(".layer_scale2", ".gamma2")
        out[k] = v
    return out, set_aside


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: accept any supported container or layout, return our layout.

    A classifier whose shape differs from the model's is dropped (fine-tuning to a new number of classes).
    """
    fmt, sd = detect_format(state_dict)
    sd, _ = normalize_state_dict(sd, fmt)
    own = model.state_dict()
    for key in [k for k in sd if k.startswith(_HEAD_PREFIXES)]:
        if key in own and own[key].shape != sd[key].shape:
            logger.info("dropping %s %s: model head is %s", key, list(sd[key].shape), list(own[key].shape))
            del sd[key]
    return sd


def compare(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], fmt: str) -> LoadResult:
    """Missing, unexpected and shape-conflicting keys of ``sd`` against ``model_sd``."""
    result = LoadResult(fmt)
    result.missing = [k for k in model_sd if k not in sd]
    result.unexpected = [k for k in sd if k not in model_sd]
    result.mismatched = [
        (k, tuple(v.shape), tuple(model_sd[k].shape))
        for k, v in sd.items()
        if k in model_sd and v.shape != model_sd[k].shape
    ]
    return result


def load_fitting(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    fmt: str,
    path: str | os.PathLike,
    strict: bool,
    what: str,
    unmapped: list[str] | None = None,
    needed: Callable[[str], bool] | None = None,
) -> LoadResult:
    """Load the tensors of ``sd`` (already in the model's names) that fit ``model``: the one loading rule of every
    dense model (detectors, segmentors).

    Args:
        model: The model to fill.
        sd: State dict in the model's key names.
        fmt: Source format, for messages and the result.
        path: The file, for messages.
        strict: Refuse (one line naming what does not fit) unless every model tensor is found and every file
            tensor fits; otherwise load what fits and log the rest.
        what: Name of the model kind in messages (``detector``, ``segmentor``).
        unmapped: File tensors that a key map could not name (counted as unexpected).
        needed: Which model tensors the file must provide (default: all); the others keep their values.

    Raises:
        CheckpointError: ``strict`` and something does not fit.
    """
    own = model.state_dict()
    result = compare({k: v for k, v in own.items() if needed is None or needed(k) or k in sd}, sd, fmt)
    result.unexpected += list(unmapped or [])
    if strict and not result.ok:
        raise CheckpointError(f"checkpoint {Path(path).name} ({fmt}) does not fit the {what}: {result.summary()}")
    bad = set(result.skipped)
    model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in bad}, strict=False)
    if not result.ok:
        logger.warning("loaded %s (%s) partially: %s", Path(path).name, fmt, result.summary())
    return result


def load_backbone_bodies(bodies: dict[str, nn.Module], path: str | os.PathLike, use_ema: bool, what: str) -> LoadResult:
    """A classification or backbone-only checkpoint into the InternImage(s) of a detector, non-strictly.

    Args:
        bodies: Prefix of each InternImage in the detector's state dict -> the module.
        path: The checkpoint (any layout :func:`~.core.load_checkpoint` reads).
        use_ema: Take the EMA weights of a training checkpoint.
        what: The detector's name in messages.

    Raises:
        CheckpointError: a shape conflict, or a file that fills none of the backbone.
    """
    result = LoadResult("backbone")
    for prefix, body in bodies.items():
        res = load_checkpoint(body, path, strict=False, use_ema=use_ema, ignore_head=True)
        if res.mismatched or len(res.missing) == len(body.state_dict()):
            raise CheckpointError(f"{os.fspath(path)} does not fit the {what}'s backbone: {res.summary()}")
        result.missing += [prefix + k for k in res.missing]
        result.unexpected = list(res.unexpected)
    return result


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    use_ema: bool = False,
    ignore_head: bool = False,
) -> LoadResult:
    """Load any supported checkpoint file into an InternImage (backbone or classifier).

    Args:
        model: The model (its ``state_dict`` layout is the official one).
        path: ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file.
        strict: Raise on any missing, unexpected or mis-shaped key; otherwise load what fits and log the rest.
        use_ema: Load the EMA weights of a training checkpoint.
        ignore_head: Skip ``head.*`` (e.g. a 1k checkpoint into a 10-class model); the model keeps its head.

    Returns:
        The :class:`LoadResult`.

    Raises:
        CheckpointError: unreadable file, or (strict) keys that do not fit, in one line.
    """
    fmt, sd = detect_format(read_checkpoint(path), use_ema=use_ema)
    sd, set_aside = normalize_state_dict(sd, fmt)
    own = model.state_dict()
    if ignore_head:
        sd = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
        own = {k: v for k, v in own.items() if not k.startswith(_HEAD_PREFIXES)}
    result = compare(own, sd, fmt)
    result.set_aside = set_aside
    if strict and not result.ok:
        raise CheckpointError(f"checkpoint {Path(path).name} ({fmt}) does not fit the model: {result.summary()}")
    bad = {k for k, _, _ in result.mismatched} | set(result.unexpected)
    # A model built on the meta device (e.g. to verify a conversion) takes the tensors themselves.
    assign = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict({k: v for k, v in sd.items() if k not in bad}, strict=False, assign=assign)
    if not result.ok:
        logger.warning("loaded %s (%s) partially: %s", Path(path).name, fmt, result.summary())
    return result


def save_state_dict(
    sd: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a state dict as safetensors with :func:`internimage.io.atomic_write` (umask honoured, no partial file)."""
    from safetensors.torch import save_file

    from ...io import atomic_write

    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata or {})))


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    use_ema: bool = False,
    backbone_only: bool = False,
    verify_model: nn.Module | None = None,
) -> tuple[str, Path, int]:
    """Convert any supported checkpoint to a safetensors file in our (official) layout.

    Args:
        src: Source checkpoint.
        dst: Destination ``.safetensors`` path.
        use_ema: Take the EMA weights of a training checkpoint.
        backbone_only: Drop the classifier (``conv_head``, ``head``, H/G projector) keys.
        verify_model: Check, before anything is written, that the converted weights load into this model (it may
            live on the meta device): strictly, or without the head keys when ``backbone_only``.

    Returns:
        ``(source format, destination path, number of tensors written)``.

    Raises:
        CheckpointError: unreadable source, or weights that do not fit ``verify_model`` (``dst`` is not written).
    """
    fmt, sd = detect_format(read_checkpoint(src), use_ema=use_ema)
    sd, set_aside = normalize_state_dict(sd, fmt)
    if backbone_only:
        sd = {k: v for k, v in sd.items() if k.startswith(("patch_embed.", "levels."))}
    elif set_aside:
        # Keep detection/segmentation heads under their original names so nothing is lost.
        sd.update(set_aside)
    if verify_model is not None:
        # What load_checkpoint would see when reading the written file back, checked before writing it.
        fitted, _ = normalize_state_dict(sd)
        result = compare(verify_model.state_dict(), fitted, fmt)
        if backbone_only:
            result.missing = [k for k in result.missing if k.startswith(("patch_embed.", "levels."))]
        if not result.ok:
            name = type(verify_model).__name__
            raise CheckpointError(f"{Path(src).name} ({fmt}) does not fit the {name} model: {result.summary()}")
    out = save_state_dict(sd, dst, metadata={"format": "internimage", "source_format": fmt})
    return fmt, out, len(sd)
