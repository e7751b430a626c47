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
    # each block its own FSDP unit; TOY_UNITS=0 shards the root only
    fsdp_unit_types = () if os.environ.get("TOY_UNITS") == "0" else (internimage.models.internimage.InternImageBlock,)
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
    cfg = apply_overrides(TrainConfig(), sys.argv[1:])
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


def _run(script: Path, args: list[str], env: dict[str, str] | None = None, timeout: int = 180) -> dict:
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env or _env(), timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


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
    env = _env(TOY_NOISE="0", TOY_DPR="0")
    a = _run(toy_script, [*exact, f"output={tmp_path / 'a'}", "batch_size=16", "accum_steps=1"], env)
    b = _run(toy_script, [*exact, f"output={tmp_path / 'b'}", "batch_size=8", "accum_steps=2"], env)
    _run(toy_script, [*exact, f"output={tmp_path / 'init'}", "batch_size=16", "lr=0", "min_lr=0"], env)
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
    extras = ["batch_size=8", "amp=bf16", "grad_checkpointing=true"]
    c = _run(toy_script, [*BASE, "epochs=1", f"output={tmp_path / 'c'}", *extras])
    rows = [r for r in read_metrics(tmp_path / "c") if r["split"] == "train"]
    assert c["step"] == 8 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 120) -> None:
    directory, pattern = path_glob
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list(directory.glob(pattern)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {pattern} appeared: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear in {timeout}s")


def test_sigkill_and_sigterm_resume_reach_identical_weights(toy_script: Path, tmp_path: Path) -> None:
    args = [*BASE, "epochs=2", "batch_size=8", "ckpt_every=5", "keep_last=2", "ema=true", "ema_decay=0.9"]
    ref = _run(toy_script, [*args, f"output={tmp_path / 'ref'}"])
    assert ref["step"] == 16 and not ref["preempted"]

    env = _env(TOY_STEP_DELAY="0.1")
    for sig, run in ((signal.SIGKILL, "killed"), (signal.SIGTERM, "termed")):
        out = tmp_path / run
        proc = subprocess.Popen(
            [sys.executable, str(toy_script), *args, f"output={out}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for((out / "checkpoints", "step_00000010.pth"), proc)  # mid-epoch 1, after three checkpoints
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=120)
        if sig == signal.SIGTERM:
            assert proc.returncode == 0  # saved and exited cleanly
            assert '"preempted": true' in stdout
        else:
            assert proc.returncode == -signal.SIGKILL
        assert not (out / "model.safetensors").exists()
        resumed = _run(toy_script, [*args, f"output={out}", "resume=auto"])
        assert resumed["step"] == 16
        for name in ("model.safetensors", "model_ema.safetensors"):
            a, b = load_file(tmp_path / "ref" / name), load_file(out / name)
            assert a.keys() == b.keys()
            diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
            assert diff == 0.0, f"{run}: {name} differs by {diff}"
        assert resumed["acc"] == ref["acc"]


# ------------------------------------------------------------------------------------------ torchrun
def _torchrun(script: Path, args: list[str], env: dict[str, str], nproc: int = 2) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


TORCHRUN_ARGS = [*BASE, "epochs=1", "seed=3", "max_steps=3", "ema=true", "ema_decay=0.5"]
# No per-sample randomness (input noise and drop path would draw from each rank's own RNG): exact math only.
EXACT = {"TOY_NOISE": "0", "TOY_DPR": "0"}


@pytest.fixture(scope="module")
def single_run(toy_script: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single")
    return out, _run(toy_script, [*TORCHRUN_ARGS, f"output={out}", "batch_size=16"], env=_env(**EXACT))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp-root-only"])
def test_torchrun_two_processes_match_one_process(
    toy_script: Path, tmp_path: Path, single_run: tuple[Path, dict], strategy: str
) -> None:
    single_dir, single = single_run
    # fsdp-root-only: a task with no fsdp_unit_types (the whole model one unit) once failed to save its weights.
    env = _env(**EXACT, TOY_UNITS="0" if strategy == "fsdp-root-only" else "1")
    args = [*TORCHRUN_ARGS, f"output={tmp_path}", "batch_size=8", f"strategy={strategy.split('-')[0]}"]
    multi = _torchrun(toy_script, args, env)
    assert single["step"] == multi["step"] == 3
    loss1 = [r["loss"] for r in read_metrics(single_dir) if r["split"] == "train"]
    loss2 = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert loss1 == pytest.approx(loss2, rel=1e-5, abs=1e-6)
    assert loss1[0] != pytest.approx(loss1[2], rel=1e-3)  # training moved: the comparison covers updates
    assert multi["n"] == 11  # evaluation counted each of the 11 samples once over 2 ranks
    assert multi["acc"] == pytest.approx(single["acc"]) and multi["ema_acc"] == pytest.approx(single["ema_acc"])
    for name in ("model.safetensors", "model_ema.safetensors"):
        w_single, w_multi = load_file(single_dir / name), load_file(tmp_path / name)
        assert max((w_single[k] - w_multi[k]).abs().max().item() for k in w_single) < 1e-5, name
    if strategy == "ddp":
        w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
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
