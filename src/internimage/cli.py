"""``internimage <command>``: a thin dispatcher.

Each command lives in a module of :mod:`internimage.commands` exposing ``COMMANDS = {name: (add_arguments, run)}``;
only the module of the command being run is imported, so ``internimage --help`` stays fast. ``train``, ``eval``
and ``predict`` take ``--task classification|detection|segmentation|occupancy`` and are served by the module of that
task.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence

# command -> (module, one-line help). Task-specific commands resolve their module from --task.
_COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("internimage.commands.info", "table of every registered model: parameters and GFLOPs (MACs)"),
    "convert": ("internimage.commands.info", "convert any supported checkpoint to safetensors"),
    "demo": ("internimage.commands.demo", "train, evaluate and predict on Fashion-MNIST end to end"),
    "train": ("{task}", "train a model (--task classification|detection|segmentation|occupancy)"),
    "eval": ("{task}", "evaluate a model on a dataset"),
    "predict": ("{task}", "predict on images or folders"),
    "extract": ("internimage.commands.classification", "save intermediate features to .npy / safetensors"),
    "plot": ("internimage.commands.plot", "draw loss / accuracy / lr curves of a run to PNG"),
    "export": ("internimage.commands.export", "export to ONNX / ONNX-TensorRT / torch.export (.pt2)"),
    "benchmark": ("internimage.commands.benchmark", "latency / throughput / memory per backend"),
}
_TASKS = ("classification", "detection", "segmentation", "occupancy")


def _main_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="internimage",
        description="InternImage: train, evaluate, predict and export, on CPU or GPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {text}" for name, (_, text) in _COMMANDS.items()),
    )
    parser.add_argument("--version", action="version", version=f"internimage {__version__}")
    parser.add_argument("command", choices=list(_COMMANDS), metavar="command", help="see the list below")
    return parser


def _task_of(argv: Sequence[str]) -> str:
    """``--task``, else the task of ``--preset`` (any task's preset names its task), else classification."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default=None, choices=_TASKS)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.task is None and known.preset:
        return _preset_task(known.preset) or "classification"
    return known.task or "classification"


def _preset_task(name: str) -> str | None:
    """The task whose presets include ``name`` (``internimage train --preset NAME`` needs no ``--task``)."""
    from .classification import ClassificationConfig
    from .detection import DetectionConfig
    from .occupancy import OccupancyConfig
    from .segmentation import SegmentationConfig

    configs = {"classification": ClassificationConfig, "detection": DetectionConfig, "segmentation": SegmentationConfig}
    configs["occupancy"] = OccupancyConfig
    return next((task for task, cfg in configs.items() if name in cfg.list_presets()), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``internimage`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        _main_parser().parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        _main_parser().parse_args([command])  # argparse prints the choices and exits 2
    module_name, text = _COMMANDS[command]
    task = _task_of(rest)
    if module_name == "{task}":
        module_name = f"internimage.commands.{task}"
    try:
        module = importlib.import_module(module_name)
        add_arguments, run = module.COMMANDS[command]
    except (ModuleNotFoundError, KeyError, AttributeError) as err:
        print(f"internimage {command}: not available in this installation ({err})", file=sys.stderr)  # noqa: T201
        return 2
    parser = argparse.ArgumentParser(prog=f"internimage {command}", description=text)
    if module_name.startswith("internimage.commands.") and command in ("train", "eval", "predict"):
        parser.add_argument("--task", default=task, choices=_TASKS, help="default: the preset's, else classification")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    add_arguments(parser)
    args = parser.parse_args(rest)
    # Our progress at INFO; third-party libraries (exporters, optimisers) only from WARNING unless --verbose.
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("internimage").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        return int(run(args) or 0)
    except Exception as err:
        # User errors surface as one line, not a traceback; --verbose shows the traceback.
        if getattr(args, "verbose", False) or not _is_user_error(err):
            raise
        print(f"internimage {command}: error: {_first_line(err)}", file=sys.stderr)  # noqa: T201
        return 1


def _is_user_error(err: Exception) -> bool:
    """Errors that bad input or the environment cause (bad values, files, disks, configs), not bugs."""
    if isinstance(err, (ValueError, TypeError, OSError, RuntimeError)):
        return True
    # Checked through sys.modules: an error of a library can only come from it once it is imported.
    yaml, safetensors = sys.modules.get("yaml"), sys.modules.get("safetensors")
    return (yaml is not None and isinstance(err, yaml.YAMLError)) or (
        safetensors is not None and isinstance(err, getattr(safetensors, "SafetensorError", ()))
    )


def _first_line(err: Exception) -> str:
    """The message's first line; for an error re-raised from a DataLoader worker, the original error's message."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if lines[0].startswith("Caught ") and "Original Traceback" in text:
        # torch re-raises a worker's error as "Caught XError in DataLoader worker process N." + its traceback:
        # the original message is the first unindented line after the last (indented) stack frame.
        last_frame = max(i for i, line in enumerate(lines) if line.startswith("  "))
        if last_frame + 1 < len(lines):
            return re.sub(r"^[A-Za-z_][\w.]*: ", "", lines[last_frame + 1], count=1)
    return lines[0]


if __name__ == "__main__":
    sys.exit(main())
