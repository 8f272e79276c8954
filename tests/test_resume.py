"""Crash-safe runs: a training process killed with SIGKILL continues with `fit --resume` to the same result."""

import json
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_cxr.callbacks.training_state import read_epochs_done
from keras_cxr.recipe import SWA
from keras_cxr.training import STATE_FILE, RunDirectoryError, fit_recipe
from tests.test_training import tiny_recipe

RECIPE = '''
from keras_cxr.data import Augmentation, Mixing
from keras_cxr.recipe import SWA, Data, EarlyStopping, Loss, Model, Optimizer, Recipe, Schedule

recipe = Recipe(
    data=Data(data_dir=None, workers=2),
    model=Model(name="cxr_resnet", image_size=32, dropout=0.3),
    augmentation=Augmentation(erasing_p=0.3),
    mixing=Mixing(mixup_p=0.3, cutmix_p=0.3),
    loss=Loss(gamma=1.0, label_smoothing=0.05),
    optimizer=Optimizer(learning_rate=2e-3, weight_decay=1e-2, ema=True, ema_momentum=0.9),
    schedule=Schedule(warmup_epochs=1, min_lr=1e-5),
    swa=SWA(start_epoch=2, learning_rate=5e-4),
    early_stopping=EarlyStopping(patience=10),
    epochs=4,
    batch_size=16,
    seed=11,
)
'''
CLI = [sys.executable, "-c", "from keras_cxr.cli import main; main()", "fit"]


def fit_command(recipe_file, out, *flags):
    return [*CLI, str(recipe_file), "--out", str(out), "--quiet", *flags]


def run_to_end(args):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_after_epoch(args, state_file, epoch):
    """Start `args`, SIGKILL it as soon as `state_file` records `epoch` completed epochs."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if state_file.exists() and read_epochs_done(state_file) >= epoch:
                process.send_signal(signal.SIGKILL)
                break
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before it could be killed: "
                            f"{process.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def model_weights(path):
    return keras.saving.load_model(path).get_weights()


@pytest.fixture(scope="module")
def interrupted_and_straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    recipe_file = root / "recipe.py"
    recipe_file.write_text(RECIPE)
    straight, resumed = root / "straight", root / "resumed"
    run_to_end(fit_command(recipe_file, straight))

    kill_after_epoch(fit_command(recipe_file, resumed), resumed / STATE_FILE, epoch=2)
    killed_state = (read_epochs_done(resumed / STATE_FILE), (resumed / "metrics.json").exists())
    result = run_to_end(fit_command(recipe_file, resumed, "--resume"))
    return straight, resumed, killed_state, result, recipe_file


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights_and_probabilities(interrupted_and_straight):
    straight, resumed, killed_state, _, _ = interrupted_and_straight
    assert killed_state == (2, False)  # killed after epoch 2 of 4, before the end
    assert (resumed / "val_probs.csv").read_bytes() == (straight / "val_probs.csv").read_bytes()
    for name in ("best.keras", "swa.keras"):
        for a, b in zip(model_weights(resumed / name), model_weights(straight / name)):
            np.testing.assert_array_equal(a, b)
    # history.csv covers all four epochs, the two before the kill included
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()
    metrics = json.loads((resumed / "metrics.json").read_text())
    reference = json.loads((straight / "metrics.json").read_text())
    assert metrics["resumed_after_epoch"] == 2 and reference["resumed_after_epoch"] is None
    assert metrics["swa"] == reference["swa"] and metrics["swa"]["models_averaged"] == 3
    assert metrics["val_macro_f1"] == reference["val_macro_f1"]
    assert not (resumed / STATE_FILE).exists()  # a finished run keeps no snapshot


@pytest.mark.slow
def test_resume_refuses_a_changed_recipe_a_finished_run_and_a_run_without_an_epoch(interrupted_and_straight,
                                                                                    tmp_path):
    _, resumed, _, _, recipe_file = interrupted_and_straight
    finished = subprocess.run(fit_command(recipe_file, resumed, "--resume"), capture_output=True, text=True)
    assert finished.returncode == 2 and "finished run" in finished.stderr

    recipe = tiny_recipe(epochs=2, swa=SWA())
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(RunDirectoryError, match="no training_state.npz"):
        fit_recipe(recipe, out, verbose=0, resume=True)
    fit_recipe(recipe.replace(epochs=1), out, verbose=0)
    (out / "metrics.json").unlink()
    (out / STATE_FILE).write_bytes(b"")  # pretend the run stopped early
    with pytest.raises(RunDirectoryError, match=r"epochs \(1 -> 2\)"):
        fit_recipe(recipe, out, verbose=0, resume=True)
    damaged = "resume=True: .*training_state.npz cannot be used .*start the run again with overwrite=True"
    with pytest.raises(RunDirectoryError, match=damaged):
        fit_recipe(recipe.replace(epochs=1), out, verbose=0, resume=True)  # same recipe, damaged snapshot
    with pytest.raises(RunDirectoryError, match="unfinished run"):
        fit_recipe(recipe, out, verbose=0)


def test_snapshot_restores_model_optimizer_and_random_state(tmp_path):
    """The snapshot written after an epoch loads back bit for bit into a fresh model."""
    import torch

    from keras_cxr.callbacks import TrainingState
    from keras_cxr.models import build

    def compiled():
        model = build("cxr_resnet", image_size=32, dropout=0.2)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
        return model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    model = compiled()
    state = TrainingState(tmp_path / "state.npz")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False, callbacks=[state])
    expected_next = torch.rand(3)  # what the generator gives after the snapshot

    fresh = compiled()
    fresh_state = TrainingState(tmp_path / "state.npz")
    fresh_state.set_model(fresh)
    assert fresh_state.restore() == 2
    for a, b in zip(fresh.variables + fresh.optimizer.variables, model.variables + model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert int(fresh.optimizer.iterations.numpy()) == 4
    assert torch.equal(torch.rand(3), expected_next)
    assert [sorted(row) for row in fresh_state.history] == [["loss"], ["loss"]]

    other = build("tiny_effv2", image_size=32)
    other.compile(optimizer="adam", loss="categorical_crossentropy")
    wrong = TrainingState(tmp_path / "state.npz")
    wrong.set_model(other)
    with pytest.raises(ValueError, match="another model"):
        wrong.restore()
