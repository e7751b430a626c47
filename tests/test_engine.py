"""Engine: layer decay rules, schedules, config round trip, accumulation, exact kill/resume, SIGTERM, torchrun."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

import internimage
from internimage.engine import (
    CheckpointManager,
    Task,
    TrainConfig,
    Trainer,
    apply_overrides,
    build_optimizer,
    build_scheduler,
    load_config,
    param_groups,
    read_metrics,
    save_config,
)

# A toy task on synthetic data, run in-process and in subprocesses (python / torchrun).
# internimage_test_h_32 has no BatchNorm, so the loss of a global batch split over ranks equals the unsplit one.
TOY = r"""
import os, sys, time, torch, torch.nn.functional as F, internimage
from torch.utils.data import TensorDataset
from internimage.engine import Task, TrainConfig, Trainer, apply_overrides, all_reduce_sum, real_sample_count

class Toy(Task):
    primary_metric = "acc"
    @property
    def fsdp_unit_types(self):  # each block its own FSDP unit; TOY_UNITS=0 shards the root only
        return () if os.environ.get("TOY_UNITS") == "0" else (internimage.models.internimage.InternImageBlock,)
    def build_model(self):
        dpr = float(os.environ.get("TOY_DPR", "0.1"))
        return internimage.create_model("internimage_test_h_32", num_classes=4, in_chans=1, drop_path_rate=dpr)
    def build_datasets(self, info):
        g = torch.Generator().manual_seed(123)
        x = torch.randn(64, 1, 16, 16, generator=g)
        y = torch.randint(0, 4, (64,), generator=g)
        return TensorDataset(x, y), TensorDataset(x[:11], y[:11])
    def training_step(self, model, batch):
        delay = float(os.environ.get("TOY_STEP_DELAY", "0"))
        if delay:
            time.sleep(delay)
        x, y = batch
        x = x + float(os.environ.get("TOY_NOISE", "0.1")) * torch.randn_like(x)  # resume must restore the RNG
        return {"loss": F.cross_entropy(model(x), y)}
    def evaluate(self, model, loader, info):
        c = torch.zeros(2, dtype=torch.float64)
        left = real_sample_count(loader)
        for x, y in loader:
            if left is not None:
                x, y = x[:left], y[:left]; left -= len(y)
            out = model(x)
            c += torch.tensor([float((out.argmax(1) == y).sum()), float(len(y))], dtype=torch.float64)
        all_reduce_sum(c)
        return {"acc": float(c[0] / c[1]), "n": float(c[1])}

if __name__ == "__main__":
    torch.set_num_threads(1)
    # One or more runs, one after another in this process (one import of torch; under torchrun one process group):
    # their arguments are separated by "+"; TOY_*=value arguments set those variables for that run only.
    runs, toy_env = [[]], {k: v for k, v in os.environ.items() if k.startswith("TOY_")}
    for arg in sys.argv[1:]:
        runs.append([]) if arg == "+" else runs[-1].append(arg)
    for argv in runs:
        for k in [k for k in os.environ if k.startswith("TOY_")]:
            del os.environ[k]
        os.environ.update(toy_env, **dict(a.split("=", 1) for a in argv if a.startswith("TOY_")))
        cfg = apply_overrides(TrainConfig(), [a for a in argv if not a.startswith("TOY_")])
        trainer = Trainer(cfg, Toy(cfg))
        result = trainer.fit()
        if trainer.info.is_main:
            print("RESULT " + __import__("json").dumps(result), flush=True)
        if trainer.info.distributed:
            sd = {k: v for k, v in trainer.model.state_dict().items()} if cfg.strategy == "ddp" else None
            if sd is not None:
                torch.save(sd, os.path.join(cfg.output, f"rank{trainer.info.rank}.pt"))
"""

BASE = [
    "workers=0",
    "deterministic=true",
    "lr=1e-3",
    "lr_base_batch=0",
    "warmup_epochs=1",
    "min_lr=1e-5",
    "log_every=1",
    "clip_grad=1.0",
]


@pytest.fixture(scope="module")
def toy_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "toy.py"
    path.write_text(TOY)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOY_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env


def _joined(runs: list[list[str]]) -> list[str]:
    """The arguments of several runs of the toy script, in one process (each import of torch costs seconds)."""
    return [a for i, run in enumerate(runs) for a in (["+"] if i else []) + run]


def _results(proc: subprocess.Popen, runs: int, timeout: int) -> list[dict]:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == runs, stdout[-3000:]
    return [json.loads(line[len("RESULT ") :]) for line in lines]


def _start(script: Path, runs: list[list[str]], env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(script), *_joined(runs)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or _env())


def _run_all(script: Path, runs: list[list[str]], env: dict[str, str] | None = None, timeout: int = 180) -> list[dict]:
    """Results of ``runs`` of the toy script, one after another in one fresh process."""
    return _results(_start(script, runs, env), len(runs), timeout * len(runs))


def _run(script: Path, args: list[str], env: dict[str, str] | None = None, timeout: int = 180) -> dict:
    return _run_all(script, [args], env, timeout)[0]


# ------------------------------------------------------------------------------------------ layer decay
def test_classification_layer_decay_follows_the_official_rule() -> None:
    model = internimage.create_model("internimage_test_h_32")  # depths (1, 1, 3, 1): 6 blocks
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5, offset_lr_mul=0.1)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    last = 6
    assert scale["patch_embed.conv1.weight"] == 0.5 ** (last - 1)  # shares block 0's ratio
    assert scale["levels.0.blocks.0.mlp.fc1.weight"] == 0.5 ** (last - 1)
    assert scale["levels.0.downsample.conv.weight"] == 0.5 ** (last - 2)  # first block of level 1
    assert scale["levels.2.blocks.2.mlp.fc1.weight"] == 0.5 ** (last - 5)
    assert scale["levels.3.blocks.0.mlp.fc1.weight"] == 1.0
    assert scale["head.weight"] == 1.0
    assert scale["levels.2.post_norms.0.0.weight"] == 1.0
    assert scale["levels.1.blocks.0.dcn.offset.weight"] == pytest.approx(0.5 ** (last - 2) * 0.1)
    assert wd["head.weight"] == 0.05 and wd["head.bias"] == 0.0 and wd["levels.0.blocks.0.norm1.0.weight"] == 0.0
    # Without layer decay the offset multiplier does not apply (as in the original).
    flat = param_groups(model, weight_decay=0.05, layer_decay=1.0, offset_lr_mul=0.1)
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_model_rule_asks_the_model_for_its_layer_ids() -> None:
    # The detection / segmentation rule: the model answers (name -> id, number of ids) and names its offset keys.
    class Detector(torch.nn.Module):
        offset_lr_keys = ("sampling_offsets",)

        def __init__(self) -> None:
            super().__init__()
            self.backbone = internimage.create_model("internimage_test_32", num_classes=0)
            self.sampling_offsets = torch.nn.Linear(4, 4)
            self.neck = torch.nn.Linear(4, 4)

        def layer_id_fn(self):  # noqa: ANN202
            return (lambda name: 0 if name.startswith("backbone.patch_embed") else 2 if "neck" in name else 1), 3

    groups = param_groups(Detector(), weight_decay=0.05, layer_decay=0.9, rule="detection", offset_lr_mul=0.1)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["backbone.patch_embed.conv1.weight"] == pytest.approx(0.9**2)
    assert scale["backbone.levels.0.blocks.0.mlp.fc1.weight"] == pytest.approx(0.9)
    assert scale["sampling_offsets.weight"] == pytest.approx(0.9 * 0.1) and scale["neck.weight"] == 1.0
    assert wd["backbone.levels.0.blocks.0.norm1.0.weight"] == 0.0 and wd["neck.weight"] == 0.05
    assert wd["sampling_offsets.weight"] == 0.0  # the official constructors' no-decay names


# ------------------------------------------------------------------------------------------ schedules, config
def _lrs(cfg: TrainConfig, total: int, per_epoch: int) -> list[float]:
    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.5}], cfg)
    sched = build_scheduler(opt, cfg, total, per_epoch, cfg.lr, 1.0)
    out = []
    for step in range(total + 1):
        sched.step_update(step)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_schedules_warmup_cosine_poly_step() -> None:
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_lr=0.0, warmup_iters=10, sched="cosine")
    lrs = _lrs(cfg, 110, 10)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.25)  # linear warm-up to lr * lr_scale 0.5
    assert lrs[10] == pytest.approx(0.5) and lrs[60] == pytest.approx(0.25) and lrs[110] == pytest.approx(0.0)
    poly = _lrs(TrainConfig(lr=1.0, min_lr=0.0, warmup_epochs=0, sched="poly", iters=100), 100, 10)
    assert poly[50] == pytest.approx(0.25) and poly[100] == pytest.approx(0.0)
    # mmseg: 1500-step linear warm-up (ratio 1e-6) multiplying the poly lr
    seg = TrainConfig(lr=1.0, min_lr=0.0, warmup_iters=10, warmup_lr=None, warmup_ratio=1e-6, sched="poly", iters=100)
    lrs = _lrs(seg, 100, 10)
    assert lrs[0] == pytest.approx(0.5e-6) and lrs[5] == pytest.approx(0.5 * 0.95 * (1 - 0.5 * (1 - 1e-6)))
    step = TrainConfig(
        lr=1.0, warmup_iters=5, warmup_lr=None, warmup_ratio=0.001, sched="step", decay_milestones=[8, 11]
    )
    lrs = _lrs(step, 120, 10)  # milestones in epochs of 10 steps
    assert lrs[0] == pytest.approx(0.0005) and lrs[50] == 0.5 and lrs[80] == pytest.approx(0.05)
    assert lrs[110] == pytest.approx(0.005)


def test_config_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = apply_overrides(TrainConfig(), ["lr=0.01", "betas=[0.8, 0.9]", "ema=true", "decay_milestones=[3,4]"])
    assert cfg.lr == 0.01 and cfg.betas == (0.8, 0.9) and cfg.ema is True and cfg.decay_milestones == [3, 4]
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(TrainConfig, tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        apply_overrides(cfg, ["lrr=1"])
    with pytest.raises(TypeError, match="lr must be a number, got 'fast'"):
        apply_overrides(cfg, ["lr=fast"])
    with pytest.raises(ValueError, match="amp must be"):
        apply_overrides(cfg, ["amp=fp8"]).validate()


def test_checkpoint_manager_keeps_last_k(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        mgr.save({"step": step, "w": torch.full((2,), float(step))}, f"step_{step:08d}.pth")
    assert [p.name for p in mgr.list()] == ["step_00000002.pth", "step_00000003.pth"]
    assert CheckpointManager.load(mgr.latest())["step"] == 3
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------ loop semantics
def test_accumulation_matches_a_larger_batch(toy_script: Path, tmp_path: Path) -> None:
    # The configuration in which accumulation is exact: no input noise, no drop path, no BatchNorm
    # (internimage_test_h_32), deterministic kernels. SGD without effective clipping, so a wrongly scaled
    # accumulated gradient would change the step size (AdamW and clipping would hide the scale).
    exact = [*BASE, "epochs=1", "optimizer=sgd", "lr=0.05", "warmup_epochs=0", "clip_grad=100"]
    exact += ["TOY_NOISE=0", "TOY_DPR=0"]
    # All four runs in one process; the last one (input noise and drop path on) trains under bf16 autocast with
    # gradient checkpointing.
    extras = ["batch_size=8", "amp=bf16", "grad_checkpointing=true"]
    a, b, _, c = _run_all(
        toy_script,
        [
            [*exact, f"output={tmp_path / 'a'}", "batch_size=16", "accum_steps=1"],
            [*exact, f"output={tmp_path / 'b'}", "batch_size=8", "accum_steps=2"],
            [*exact, f"output={tmp_path / 'init'}", "batch_size=16", "lr=0", "min_lr=0"],
            [*BASE, "epochs=1", f"output={tmp_path / 'c'}", *extras],
        ],
    )
    assert a["step"] == b["step"] == 4
    wa, wb, w0 = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b", "init"))
    assert wa.keys() == wb.keys() == w0.keys()
    floats = [k for k in wa if wa[k].is_floating_point()]
    assert max((wa[k] - w0[k]).abs().max().item() for k in floats) > 1e-2  # four steps moved the weights
    for k in floats:  # the same four updates, up to float32 summation order
        delta_a, delta_b = wa[k] - w0[k], wb[k] - w0[k]
        torch.testing.assert_close(delta_b, delta_a, rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    ra, rb = ([r for r in read_metrics(tmp_path / d) if r["split"] == "train"] for d in ("a", "b"))
    assert len(ra) == len(rb) == 4
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], rel=1e-5)
    # The clipping norm is taken once the micro-batches are summed.
    assert [r["grad_norm"] for r in rb] == pytest.approx([r["grad_norm"] for r in ra], rel=1e-5)
    rows = [r for r in read_metrics(tmp_path / "c") if r["split"] == "train"]
    assert c["step"] == 8 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)


def _signal_when_saved(victims: list[tuple[subprocess.Popen, Path, signal.Signals]], timeout: float = 120) -> None:
    """Send each running process its signal as soon as its checkpoint file appears (all watched at once)."""
    waiting = list(victims)
    t0 = time.time()
    while waiting and time.time() - t0 < timeout:
        for victim in list(waiting):
            proc, path, sig = victim
            if path.exists():
                proc.send_signal(sig)
                waiting.remove(victim)
            elif proc.poll() is not None:
                raise AssertionError(f"run ended before {path.name} appeared: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    assert not waiting, f"{[str(path) for _, path, _ in waiting]} did not appear in {timeout}s"


def test_sigkill_and_sigterm_resume_reach_identical_weights(toy_script: Path, tmp_path: Path) -> None:
    args = [*BASE, "epochs=2", "batch_size=8", "ckpt_every=5", "keep_last=2", "ema=true", "ema_decay=0.9"]
    # The two interrupted runs side by side (slowed down so that the signal lands mid-run), each signalled once
    # it has written step 10's checkpoint: mid-epoch 1, after three checkpoints.
    runs = {signal.SIGKILL: "killed", signal.SIGTERM: "termed"}
    procs = {
        sig: _start(toy_script, [[*args, f"output={tmp_path / run}"]], _env(TOY_STEP_DELAY="0.1"))
        for sig, run in runs.items()
    }
    _signal_when_saved(
        [(procs[sig], tmp_path / run / "checkpoints" / "step_00000010.pth", sig) for sig, run in runs.items()]
    )
    for sig, run in runs.items():
        stdout, _ = procs[sig].communicate(timeout=120)
        if sig == signal.SIGTERM:
            assert procs[sig].returncode == 0  # saved and exited cleanly
            assert '"preempted": true' in stdout
        else:
            assert procs[sig].returncode == -signal.SIGKILL
        assert not (tmp_path / run / "model.safetensors").exists()
    # Both resumes and the uninterrupted reference run, one after another in one fresh process.
    resumed = [[*args, f"output={tmp_path / run}", "resume=auto"] for run in runs.values()]
    *results, ref = _run_all(toy_script, [*resumed, [*args, f"output={tmp_path / 'ref'}"]])
    assert ref["step"] == 16 and not ref["preempted"]
    for run, result in zip(runs.values(), results):
        assert result["step"] == 16
        for name in ("model.safetensors", "model_ema.safetensors"):
            a, b = load_file(tmp_path / "ref" / name), load_file(tmp_path / run / name)
            assert a.keys() == b.keys()
            diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
            assert diff == 0.0, f"{run}: {name} differs by {diff}"
        assert result["acc"] == ref["acc"]


# ------------------------------------------------------------------------------------------ torchrun
def _torchrun(script: Path, runs: list[list[str]], env: dict[str, str], nproc: int = 2) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    proc = subprocess.run(cmd + _joined(runs), capture_output=True, text=True, env=env, timeout=300 * len(runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == len(runs), proc.stdout[-3000:]
    return [json.loads(line[len("RESULT ") :]) for line in lines]


TORCHRUN_ARGS = [*BASE, "epochs=1", "seed=3", "max_steps=3", "ema=true", "ema_decay=0.5"]
# No per-sample randomness (input noise and drop path would draw from each rank's own RNG): exact math only.
EXACT = {"TOY_NOISE": "0", "TOY_DPR": "0"}
STRATEGIES = ["ddp", "fsdp", "fsdp-root-only"]


@pytest.fixture(scope="module")
def distributed_runs(toy_script: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """The one-process run and, in one torchrun launch (one process group), a two-process run per strategy.

    Each launch costs seconds of imports, so the strategies run one after another in the same two processes; the
    one-process run goes on beside them.
    """
    root = tmp_path_factory.mktemp("distributed")
    single = _start(toy_script, [[*TORCHRUN_ARGS, f"output={root / 'single'}", "batch_size=16"]], _env(**EXACT))
    runs = []
    for strategy in STRATEGIES:
        # fsdp-root-only: a task with no fsdp_unit_types (the whole model one unit) once failed to save its weights.
        units = "TOY_UNITS=0" if strategy == "fsdp-root-only" else "TOY_UNITS=1"
        runs.append([units, *TORCHRUN_ARGS, f"output={root / strategy}", "batch_size=8"])
        runs[-1].append(f"strategy={strategy.split('-')[0]}")
    try:
        multi = _torchrun(toy_script, runs, _env(**EXACT))
    finally:
        (single_result,) = _results(single, 1, 180)
    return {"single": (root / "single", single_result)} | {
        s: (root / s, result) for s, result in zip(STRATEGIES, multi)
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_torchrun_two_processes_match_one_process(
    distributed_runs: dict[str, tuple[Path, dict]], strategy: str
) -> None:
    single_dir, single = distributed_runs["single"]
    multi_dir, multi = distributed_runs[strategy]
    assert single["step"] == multi["step"] == 3
    loss1 = [r["loss"] for r in read_metrics(single_dir) if r["split"] == "train"]
    loss2 = [r["loss"] for r in read_metrics(multi_dir) if r["split"] == "train"]
    assert loss1 == pytest.approx(loss2, rel=1e-5, abs=1e-6)
    assert loss1[0] != pytest.approx(loss1[2], rel=1e-3)  # training moved: the comparison covers updates
    assert multi["n"] == 11  # evaluation counted each of the 11 samples once over 2 ranks
    assert multi["acc"] == pytest.approx(single["acc"]) and multi["ema_acc"] == pytest.approx(single["ema_acc"])
    for name in ("model.safetensors", "model_ema.safetensors"):
        w_single, w_multi = load_file(single_dir / name), load_file(multi_dir / name)
        assert max((w_single[k] - w_multi[k]).abs().max().item() for k in w_single) < 1e-5, name
    if strategy == "ddp":
        w0, w1 = torch.load(multi_dir / "rank0.pt"), torch.load(multi_dir / "rank1.pt")
        assert all(torch.equal(w0[k], w1[k]) for k in w0)


# ------------------------------------------------------------------------------------------ bad input and faults
def test_config_values_are_checked_when_the_config_is_built(tmp_path: Path) -> None:
    from internimage.classification import ClassificationConfig

    cases = [
        (TypeError, "epochs must be an integer, got 1.7", ["epochs=1.7"]),  # was silently 1
        (TypeError, "batch_size must be an integer, got True", ["batch_size=true"]),  # was a batch of 1
        (TypeError, "ema must be true or false, got 'maybe'", ["ema=maybe"]),
        (TypeError, "betas must have 2 values", ["betas=[0.9]"]),
        (ValueError, "img_size must be > 0, got 0", ["img_size=0"]),
        (ValueError, r"drop_path_rate must be in \[0, 1\), got 1.0", ["drop_path_rate=1.0"]),
        (ValueError, "weight_decay must be >= 0, got -0.1", ["weight_decay=-0.1"]),
        (ValueError, "workers must be >= 0, got -2", ["workers=-2"]),
        (ValueError, "mean has 2 values but std has 3", ["mean=[0.5, 0.5]"]),
        (ValueError, "mean and std have 3 values but the input has 1 channel", ["model_kwargs={in_chans: 1}"]),
        (ValueError, "amp must be one of", ["amp=fp8"]),
    ]
    for err, message, overrides in cases:
        with pytest.raises(err, match=message):
            apply_overrides(ClassificationConfig(), overrides)
    with pytest.raises(TypeError, match="epochs must be an integer"):
        TrainConfig(epochs=1.7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="img_size must be > 0"):
        ClassificationConfig(img_size=-3)
    ok = apply_overrides(ClassificationConfig(), ["epochs=2.0", "lr=1", "image_mode=L", "mean=[0.5]", "std=[0.5]"])
    assert ok.epochs == 2 and isinstance(ok.epochs, int) and ok.lr == 1.0 and isinstance(ok.lr, float)
    assert 1 <= TrainConfig().workers <= min(4, os.cpu_count() or 1)
    (tmp_path / "bad.yaml").write_text("epochs: 3\nlr: [0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not valid YAML \(line \d+\)"):
        load_config(TrainConfig, tmp_path / "bad.yaml")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_config(TrainConfig, tmp_path)


class _LinearTask(Task):
    """A linear classifier on 32 fixed random vectors: a whole training run takes a fraction of a second."""

    def __init__(self, cfg: TrainConfig, classes: int = 4) -> None:
        super().__init__(cfg)
        self.classes = classes

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(8, self.classes))

    def build_datasets(self, info):  # noqa: ANN001, ANN201
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
        return TensorDataset(x, y), TensorDataset(x[:8], y[:8])

    def training_step(self, model: nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": F.cross_entropy(model(x + 0.1 * torch.randn_like(x)), y)}

    def evaluate(self, model, loader, info) -> dict[str, float]:  # noqa: ANN001
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
        return {"acc": right / 8}


def _linear_cfg(out: Path, **kw: object) -> TrainConfig:
    base = dict(output=str(out), epochs=2, batch_size=8, ckpt_every=2, keep_last=3, log_every=1, workers=0)
    base.update(lr=0.1, lr_base_batch=0, warmup_epochs=0, clip_grad=None, device="cpu", **kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_resume_after_a_damaged_kill(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    old_umask = os.umask(0o027)
    try:
        first = Trainer(_linear_cfg(out), _LinearTask(_linear_cfg(out))).fit()
    finally:
        os.umask(old_umask)
    assert first["step"] == 8
    # Every file the run wrote honours the umask (mkstemp alone would have made the atomic writes 0600).
    written = [p for p in out.rglob("*") if p.is_file() and "tb" not in p.parts]
    assert {p.name for p in written} >= {"config.yaml", "metrics.csv", "metrics.jsonl", "latest", "result.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o640)}

    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pth")) == ["epoch_0002.pth", "step_00000006.pth", "step_00000008.pth"]
    original = {(r["split"], r["step"]): r for r in read_metrics(out)}
    # What a kill can leave behind: damaged newest checkpoints, temporaries of interrupted writes, a cut line.
    for name in ("epoch_0002.pth", "step_00000008.pth"):
        (ckpts / name).write_bytes((ckpts / name).read_bytes()[:100])
    stale = [ckpts / ".step_00000010.pth.x1y2.tmp", out / ".config.yaml.a1b2.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "st')

    cfg = _linear_cfg(out, resume="auto")
    with caplog.at_level(logging.INFO, logger="internimage.engine"):
        resumed = Trainer(cfg, _LinearTask(cfg)).fit()
    assert resumed["step"] == 8
    assert "cannot read training checkpoint" in caplog.text and "epoch_0002.pth" in caplog.text
    assert "resuming from step_00000006.pth, the newest checkpoint that could be read" in caplog.text
    assert not any(p.exists() for p in stale)
    rows = read_metrics(out)
    keys = [(r["split"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), "a step was logged twice after the resume"
    assert sorted(keys) == sorted(original)  # train 1..8 and val 4, 8: each once
    # The re-run steps 7 and 8 are the same computation as before the kill.
    for key in (("train", 7), ("train", 8)):
        assert {r["split"]: r for r in rows if r["step"] == key[1]}["train"]["loss"] == pytest.approx(
            original[key]["loss"], rel=1e-6
        )
    import csv

    with open(out / "metrics.csv", newline="") as f:
        csv_keys = [(r["split"], int(r["step"])) for r in csv.DictReader(f)]
    assert sorted(csv_keys) == sorted(keys)

    # Resuming into another architecture: one line that says so, not PyTorch's key-by-key report.
    cfg5 = _linear_cfg(out, resume="auto")
    with pytest.raises(ValueError) as info:
        Trainer(cfg5, _LinearTask(cfg5, classes=5)).setup()
    message = str(info.value)
    assert "\n" not in message and "was written for another architecture" in message
    assert "1.weight: checkpoint [4, 8] vs model [5, 8]" in message


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save({"step": 1, "w": torch.ones(3)}, "step_00000001.pth")

    def full_disk(obj: object, f: object) -> None:
        # What torch.save does on ENOSPC: a RuntimeError whose context is the file's OSError.
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left on device while writing .*step_00000002.pth"):
        mgr.save({"step": 2, "w": torch.ones(3)}, "step_00000002.pth")
    monkeypatch.undo()
    assert mgr.latest() == tmp_path / "step_00000001.pth"
    assert CheckpointManager.load(mgr.latest())["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001.pth"]  # no temporary left
    with pytest.raises(IsADirectoryError, match="is a directory"):
        CheckpointManager.load(tmp_path)
