"""recipes/cpu_best.sh end to end on the embedded synthetic data, with two-epoch 32 px members."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from keras_cxr.calibration import load_calibration
from keras_cxr.data.synthetic import ensure_default_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "cpu_best.sh"
CLASSES = ["normal", "bacteria", "virus", "COVID-19"]
pytestmark = pytest.mark.slow


def workflow(out, **env):
    root = ensure_default_dataset()
    settings = {
        "KERAS_CXR": f"{sys.executable} -m keras_cxr",
        "FIT_OPTIONS": "--image-size 32 --set epochs=2 --set swa.start_epoch=none --quiet",
        "TTA": "zoom",
        **env,
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), str(root), str(root / "test.csv"), str(root / "images"), str(out)],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "torch", **settings}, cwd=REPO,
    )
    return root, result


def fake_clock(tmp_path, step_s):
    """A `date` on PATH whose `date +%s` moves `step_s` seconds ahead at every call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counter = tmp_path / "clock"
    counter.write_text("0")
    fake = bin_dir / "date"
    fake.write_text(f'#!/bin/bash\nt=$(cat {counter}); echo $((t + {step_s})) > {counter}; echo $t\n')
    fake.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_two_members_are_averaged_calibrated_and_reused(tmp_path):
    out = tmp_path / "best"
    root, result = workflow(out, SEEDS="1 2", BUDGET_MINUTES="0")
    assert result.returncode == 0, result.stdout + result.stderr
    members = (out / "members.txt").read_text().split()
    assert members == [str(out / "runs" / "seed1"), str(out / "runs" / "seed2")]

    test = pd.read_csv(root / "test.csv")
    probs = pd.read_csv(out / "test_probs.csv")
    assert list(probs.columns) == ["new_filename", *CLASSES]
    assert probs.new_filename.tolist() == test.new_filename.tolist()
    np.testing.assert_allclose(probs[CLASSES].to_numpy().sum(axis=1), 1.0, atol=1e-5)

    # The temperature was fitted on the members' mean over the validation rows, and only on them.
    calibration = load_calibration(out / "calibration.json")
    val = pd.read_csv(root / "val.csv")
    assert sorted(calibration.fitted_on) == sorted(val.new_filename)
    first = probs[CLASSES].to_numpy()

    again = workflow(out, SEEDS="1 2", BUDGET_MINUTES="0")[1]
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("is finished, reused") == 2
    np.testing.assert_array_equal(pd.read_csv(out / "test_probs.csv")[CLASSES].to_numpy(), first)


def test_budget_stops_adding_members(tmp_path):
    # Every `date +%s` moves the clock 400 s: the first member "takes" 400 s, and when the second is
    # considered 1600 s are spent; 1600 + 400 + 60 s (predictions) fit in 35 minutes but not in 34.
    out = tmp_path / "tight"
    _, result = workflow(out, SEEDS="1 2 3", BUDGET_MINUTES="34", PATH=fake_clock(tmp_path, 400))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no more members" in result.stdout
    assert (out / "members.txt").read_text().split() == [str(out / "runs" / "seed1")]
    assert not (out / "runs" / "seed2").exists()


def test_budget_admits_a_member_that_fits(tmp_path):
    out = tmp_path / "roomy"
    _, result = workflow(out, SEEDS="1 2", BUDGET_MINUTES="35", PATH=fake_clock(tmp_path, 400))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no more members" not in result.stdout
    assert len((out / "members.txt").read_text().split()) == 2


def test_prediction_reserve_counts_against_the_budget(tmp_path):
    # The same 35 minutes with 120 s kept for the predictions: 1600 + 400 + 120 > 2100, one member.
    out = tmp_path / "reserved"
    _, result = workflow(out, SEEDS="1 2", BUDGET_MINUTES="35", PREDICT_RESERVE_S="120",
                         PATH=fake_clock(tmp_path, 400))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "predicting 120 s" in result.stdout
    assert len((out / "members.txt").read_text().split()) == 1


def test_bad_budget_is_refused_before_any_training(tmp_path):
    out = tmp_path / "bad"
    _, result = workflow(out, BUDGET_MINUTES="half an hour")
    assert result.returncode == 2
    assert "BUDGET_MINUTES must be a whole number" in result.stderr
    assert not (out / "runs").exists()
    _, result = workflow(out, PREDICT_RESERVE_S="1m")
    assert result.returncode == 2
    assert "PREDICT_RESERVE_S must be a whole number of seconds, got '1m'" in result.stderr
    assert not (out / "runs").exists()
