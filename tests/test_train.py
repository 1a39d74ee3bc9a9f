import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from cxrlib import runtime
from cxrlib.artifacts import ArtifactError, tensor_digest
from cxrlib.checkpoints import last_checkpoint_path
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, fit, training_record
from cxrlib.runtime import make_accelerator, process_seed, seed_everything

CONFIG = {"model": "linear", "features": 4}


def _loaders(sign: float = 1.0, n: int = 64):
    """y = 2x; the validation targets are multiplied by ``sign`` (-1: validation loss rises)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True) * 2
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[:16], sign * y[:16]), batch_size=8)
    return train, val


def _mse(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _model(seed: int = 0):
    seed_everything(seed)
    return torch.nn.Linear(4, 1)


def _fit(model, path, *, loss_fn=_mse, sign=1.0, max_epochs=4, patience=2, config=CONFIG, seed=0,
         scheduler_steps=None, keep="best", ema_decay=None, min_improvement=0.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    scheduler = None
    if scheduler_steps:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=scheduler_steps)
    train, val = _loaders(sign)
    return fit(model, loss_fn, train, val, optimizer=optimizer,
               schedule=Schedule(max_epochs, patience, keep, min_improvement), checkpoint=Checkpoint(path, config, seed),
               scheduler=scheduler, ema_decay=ema_decay, runtime=Runtime(progress=False))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_trains_saves_best_and_finishes(tmp_path):
    model = _model()
    result = _fit(model, tmp_path / "net")
    assert isinstance(result, FitResult) and result.trained
    losses = [h["val_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert losses[-1] < losses[0]
    assert result.best_val_loss == min(losses)
    sidecar = json.loads((tmp_path / "net.json").read_text())
    assert sidecar["finished"] and sidecar["seed"] == 0 and sidecar["config"] == CONFIG
    assert sidecar["epoch"] == result.best_epoch and len(sidecar["history"]) == 4
    assert "torch" in sidecar["versions"]
    saved = load_file(str(tmp_path / "net.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert not last_checkpoint_path(tmp_path / "net").exists()
    assert not model.training


def test_early_stopping_keeps_first_epoch(tmp_path):
    # training toward y = 2x while validating on y = -2x: validation loss rises after epoch 1
    model = _model()
    result = _fit(model, tmp_path / "net", sign=-1.0, max_epochs=10, patience=2)
    assert len(result.history) == 3 and result.best_epoch == 1
    assert result.record() == {"best_epoch": 1, "epochs": 3, "max_epochs": 10, "patience": 2,
                               "ended_by": "early stopping"}
    saved = load_file(str(tmp_path / "net.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_keep_last_trains_every_epoch_and_keeps_the_final_weights(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    train, val = _loaders(sign=-1.0)  # validation loss rises: "best" would stop early at epoch 1
    result = fit(model, _mse, train, val, optimizer=optimizer, schedule=Schedule(4, patience=1, keep="last"),
                 checkpoint=Checkpoint(tmp_path / "net", CONFIG, 0), runtime=Runtime(progress=False))
    assert len(result.history) == 4 and result.best_epoch == 4
    assert result.record()["ended_by"] == "fixed budget"  # a schedule run to its end, not a cap
    assert result.best_val_loss == result.history[-1]["val_loss"]
    with pytest.raises(ValueError, match="keep must be"):
        Schedule(1, keep="first")


def test_finished_checkpoint_is_reused_without_training(tmp_path):
    trained = _model()
    first = _fit(trained, tmp_path / "net")

    def must_not_train(model, batch):
        raise AssertionError("fit trained again although a finished checkpoint exists")

    fresh = _model(seed=1)
    again = _fit(fresh, tmp_path / "net", loss_fn=must_not_train)
    assert not again.trained and again.best_epoch == first.best_epoch
    assert again.history == first.history and again.record() == first.record()
    assert all(torch.equal(a, b) for a, b in zip(_weights(fresh).values(), _weights(trained).values()))


@pytest.mark.parametrize("epochs_run, best_epoch, max_epochs, patience, stopped_early, ended_by", [
    (9, 6, 40, 3, True, "early stopping"),
    (40, 39, 40, 3, False, "epoch cap"),        # still improving when the cap came
    (40, 37, 40, 3, True, "early stopping"),    # patience ran out at the cap itself
    (12, 12, 12, 20, False, "fixed budget"),    # a patience above the cap can never stop it
    (5, 2, 5, None, False, "fixed budget"),
])
def test_training_record_says_what_ended_the_training(epochs_run, best_epoch, max_epochs, patience, stopped_early,
                                                      ended_by):
    record = training_record(epochs_run, best_epoch, max_epochs, patience, stopped_early)
    assert record["ended_by"] == ended_by and record["epochs"] == epochs_run and record["max_epochs"] == max_epochs


def test_min_improvement_stops_a_loss_that_still_creeps_down_and_keeps_its_last_gain(tmp_path):
    plain = _fit(_model(), tmp_path / "plain", max_epochs=10, patience=2)
    losses = [h["val_loss"] for h in plain.history]
    assert len(losses) == 10 and all(b < a for a, b in zip(losses, losses[1:]))  # falls every epoch
    model = _model()
    flattened = _fit(model, tmp_path / "flat", max_epochs=10, patience=2, min_improvement=0.7)
    assert len(flattened.history) < 10 and flattened.best_epoch == len(flattened.history)
    assert flattened.record()["ended_by"] == "early stopping"
    again = _fit(_model(seed=1), tmp_path / "flat", max_epochs=10, patience=2, min_improvement=0.7)
    assert not again.trained and again.record() == flattened.record()  # the finished checkpoint says so too


@pytest.mark.parametrize("change", [{"config": {"model": "linear", "features": 8}}, {"seed": 1}])
def test_checkpoint_of_another_config_or_seed_is_refused(tmp_path, change):
    _fit(_model(), tmp_path / "net")
    with pytest.raises(ArtifactError, match="another configuration|seed"):
        _fit(_model(), tmp_path / "net", **change)


def test_ema_keeps_the_moving_average_of_the_weights_after_every_step(tmp_path):
    seen = []

    def recording(model, batch):
        if model.training:
            seen.append(_weights(model))  # the weights before this step
        return _mse(model, batch)

    plain = _model()
    _fit(plain, tmp_path / "plain", loss_fn=recording, max_epochs=2, keep="last")
    after_steps = seen[1:] + [_weights(plain)]
    expected = after_steps[0]  # the average starts at the first step's weights
    for weights in after_steps[1:]:
        expected = {k: 0.9 * expected[k] + 0.1 * weights[k] for k in expected}

    averaged = _model()
    result = _fit(averaged, tmp_path / "ema", max_epochs=2, keep="last", ema_decay=0.9)
    for k, v in _weights(averaged).items():
        torch.testing.assert_close(v, expected[k])
    _, val = _loaders()
    with torch.no_grad():  # the validation loss is the average's
        val_loss = np.mean([_mse(averaged, batch).item() for batch in val])
    assert result.history[-1]["val_loss"] == pytest.approx(val_loss)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, ema_decay):
    steps = 4 * 8
    reference = _model()
    _fit(reference, tmp_path / "ref", scheduler_steps=steps, ema_decay=ema_decay)

    calls = {"n": 0}

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] > 2 * (8 + 2):  # two epochs of 8 training + 2 validation batches
            raise KeyboardInterrupt
        return _mse(model, batch)

    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), tmp_path / "net", loss_fn=interrupted, scheduler_steps=steps, ema_decay=ema_decay)
    last = last_checkpoint_path(tmp_path / "net")
    assert json.loads(last.with_suffix(".json").read_text())["state"]["epoch"] == 2

    resumed_model = _model(seed=5)  # resuming must not depend on the fresh initialization
    resumed = _fit(resumed_model, tmp_path / "net", scheduler_steps=steps, ema_decay=ema_decay)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(_weights(resumed_model).values(), _weights(reference).values()):
        torch.testing.assert_close(a, b)
    assert not last.exists()


def test_nan_loss_names_epoch_and_keeps_best_checkpoint(tmp_path):
    calls = {"n": 0}

    def nan_in_epoch_two(model, batch):
        calls["n"] += 1
        loss = _mse(model, batch)
        return loss * float("nan") if calls["n"] > 8 + 2 else loss

    with pytest.raises(FloatingPointError, match="epoch 2"):
        _fit(_model(), tmp_path / "net", loss_fn=nan_in_epoch_two)
    sidecar = json.loads((tmp_path / "net.json").read_text())
    assert sidecar["epoch"] == 1 and not sidecar["finished"]
    weights = load_file(str(tmp_path / "net.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_tensor_digest_changes_with_any_bit_dtype_shape_or_order():
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, 14)
    key = tensor_digest(images, labels)
    assert key == tensor_digest(images.clone(), labels.clone()) and len(key) == 10
    nudged = images.clone()
    nudged.view(-1).view(torch.int32)[5] += 1  # the last bit of one value
    assert tensor_digest(nudged, labels) != key
    assert tensor_digest(images.double(), labels) != key
    assert tensor_digest(images.reshape(4, 64), labels) != key
    assert tensor_digest(labels, images) != key
    assert tensor_digest(images.transpose(2, 3), labels) != key  # non-contiguous: its values, in order


def test_empty_loader_is_refused(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1)), batch_size=8)
    _, val = _loaders()
    model = _model()
    with pytest.raises(ValueError, match="train_loader.*empty"):
        fit(model, _mse, empty, val, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            schedule=Schedule(1), checkpoint=Checkpoint(tmp_path / "net", CONFIG, 0))
    assert not any(tmp_path.iterdir())


def test_make_accelerator_uses_fp32_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert make_accelerator().mixed_precision == "no"


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """A CPU that computes bf16 in hardware, as far as cxrlib can tell (bf16 runs emulated elsewhere)."""
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: True)
    monkeypatch.delenv(runtime.CPU_BF16_VARIABLE, raising=False)


def test_autocast_on_cpu_is_bf16_only_where_the_hardware_computes_it(cpu_with_bf16, monkeypatch):
    accelerator = make_accelerator()
    layer = torch.nn.Linear(4, 4)
    with runtime.autocast(accelerator):
        assert layer(torch.rand(2, 4)).dtype == torch.bfloat16
    with runtime.autocast(accelerator, cpu_bf16=False):  # the networks bf16 slows down
        assert layer(torch.rand(2, 4)).dtype == torch.float32
    monkeypatch.setenv(runtime.CPU_BF16_VARIABLE, "0")
    with runtime.autocast(accelerator):
        assert layer(torch.rand(2, 4)).dtype == torch.float32
    monkeypatch.delenv(runtime.CPU_BF16_VARIABLE)
    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: False)
    with runtime.autocast(accelerator):
        assert layer(torch.rand(2, 4)).dtype == torch.float32


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_fit_records_the_precision_of_every_epoch_and_learns_in_bf16(tmp_path, cpu_with_bf16, cpu_bf16):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    train_loader, val_loader = _loaders()
    result = fit(model, _mse, train_loader, val_loader, optimizer=optimizer, schedule=Schedule(4, 2),
                 checkpoint=Checkpoint(tmp_path / "net", CONFIG, 0), runtime=Runtime(progress=False, cpu_bf16=cpu_bf16))
    assert [h["bf16"] for h in result.history] == [cpu_bf16] * 4
    assert result.history[-1]["val_loss"] < 0.5 * result.history[0]["val_loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch.utils.data import DataLoader, TensorDataset
    from safetensors.torch import save_file
    from cxrlib.train import Checkpoint, Runtime, Schedule, fit
    from cxrlib.runtime import make_accelerator, seed_everything

    out = sys.argv[1]
    accelerator = make_accelerator()
    rank = accelerator.process_index
    seed_everything(100 + rank)  # different initial weights: DDP must broadcast rank 0's
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x.sum(1, keepdim=True)
    loaders = [DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
               DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)]
    seen = {"flips": [], "inputs": []}

    def loss(m, b):
        inputs, targets = b
        if m.training:  # an augmentation drawn from the global generator, as the classifier's flips are
            flip = torch.rand(len(inputs)) < 0.5
            seen["flips"].append(flip.float())
            seen["inputs"].append(inputs)
            inputs = torch.where(flip[:, None], -inputs, inputs)
            targets = torch.where(flip[:, None], -targets, targets)
        return torch.nn.functional.mse_loss(m(inputs), targets)

    result = fit(model, loss, *loaders, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                 schedule=Schedule(2, 2), checkpoint=Checkpoint(out + "/net", {"m": 1}, 0),
                 runtime=Runtime(accelerator, progress=False))
    assert accelerator.num_processes == 2, accelerator.num_processes
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    save_file({k: torch.cat(v) for k, v in seen.items()}, f"{out}/draws{rank}.safetensors")
    accelerator.end_training()
""")


def test_two_processes_draw_differently_and_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(script), str(tmp_path)]
    launcher = subprocess.Popen(torchrun, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the workers too, not only the launcher
        launcher.communicate()
        raise
    assert launcher.returncode == 0, stderr[-3000:]
    draws = [load_file(str(tmp_path / f"draws{rank}.safetensors")) for rank in (0, 1)]
    # each process trains on its own shard (per epoch: disjoint, all 64 rows covered) ...
    for epoch in range(2):
        rows = [{tuple(r.tolist()) for r in d["inputs"][32 * epoch:32 * (epoch + 1)]} for d in draws]
        assert not rows[0] & rows[1] and len(rows[0] | rows[1]) == 64
    # ... and draws its own augmentations: with one seed for all, both would flip the same positions
    assert draws[0]["flips"].shape == draws[1]["flips"].shape
    assert not torch.equal(draws[0]["flips"], draws[1]["flips"])
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_file(str(tmp_path / "net.safetensors"))
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)


def test_process_seeds_differ_between_processes_and_epochs():
    seeds = {process_seed(7, epoch, rank) for epoch in range(1, 200) for rank in range(8)}
    assert len(seeds) == 199 * 8
    assert process_seed(7, 3, 0) == 10  # one process draws what it always drew


def test_checkpoint_finished_reads_the_flag_of_whichever_run(tmp_path):
    from cxrlib.checkpoints import checkpoint_finished

    path = tmp_path / "model"
    assert not checkpoint_finished(path)
    path.with_suffix(".json").write_text(json.dumps({"finished": False}))
    assert not checkpoint_finished(path)
    path.with_suffix(".json").write_text(json.dumps({"finished": True, "config": {"other": 1}}))
    assert checkpoint_finished(path)
    path.with_suffix(".json").write_text("{")
    assert not checkpoint_finished(path)
