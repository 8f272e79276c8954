"""recipes/cpu_best.sh end to end on the embedded synthetic data, with two-epoch members of 32-64 px."""

import json
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
        "FIT_OPTIONS": "--set epochs=2 --set swa.start_epoch=none --quiet",
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
    root, result = workflow(out, MEMBERS="32:1 48:2", BUDGET_MINUTES="0")
    assert result.returncode == 0, result.stdout + result.stderr
    members = (out / "members.txt").read_text().split()
    assert members == [str(out / "runs" / "size32_seed1"), str(out / "runs" / "size48_seed2")]
    # Each member trains at its own size with its own seed (FIT_OPTIONS has no --image-size here).
    for member, (size, seed) in zip(members, [(32, 1), (48, 2)]):
        recipe = json.loads((pathlib.Path(member) / "recipe.json").read_text())
        assert (recipe["model"]["image_size"], recipe["seed"]) == (size, seed)

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

    again = workflow(out, MEMBERS="32:1 48:2", BUDGET_MINUTES="0")[1]
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("is finished, reused") == 2
    np.testing.assert_array_equal(pd.read_csv(out / "test_probs.csv")[CLASSES].to_numpy(), first)


def test_budget_stops_adding_members(tmp_path):
    # Every `date +%s` moves the clock 400 s: the first member "takes" 400 s, and when the second is
    # considered 1600 s are spent; 1600 + 400 + 60 s (predictions) fit in 35 minutes but not in 34.
    out = tmp_path / "tight"
    _, result = workflow(out, MEMBERS="32:1 32:2 32:3", BUDGET_MINUTES="34", PATH=fake_clock(tmp_path, 400))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("a 32 px member takes about 400 s") == 2
    assert "member 32 px, seed 2 skipped" in result.stdout and "member 32 px, seed 3 skipped" in result.stdout
    assert (out / "members.txt").read_text().split() == [str(out / "runs" / "size32_seed1")]
    assert not (out / "runs" / "size32_seed2").exists()


def test_budget_admits_a_member_that_fits(tmp_path):
    out = tmp_path / "roomy"
    _, result = workflow(out, MEMBERS="32:1 32:2", BUDGET_MINUTES="35", PATH=fake_clock(tmp_path, 400))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" not in result.stdout
    assert len((out / "members.txt").read_text().split()) == 2


def test_a_smaller_member_is_estimated_by_its_pixels(tmp_path):
    # The first member (64 px) "takes" 400 s; at the second, 1600 s are spent. A 32 px member is estimated
    # at 400 * 32^2 / 64^2 = 100 s: 1600 + 100 + 60 fits in 30 minutes; another 64 px one (400 s) does not.
    clock = fake_clock(tmp_path, 400)
    _, result = workflow(tmp_path / "smaller", MEMBERS="64:1 32:2", BUDGET_MINUTES="30", PATH=clock)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len((tmp_path / "smaller" / "members.txt").read_text().split()) == 2
    _, result = workflow(tmp_path / "same", MEMBERS="64:1 64:2", BUDGET_MINUTES="30", PATH=clock)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a 64 px member takes about 400 s" in result.stdout
    assert len((tmp_path / "same" / "members.txt").read_text().split()) == 1


def test_a_member_that_does_not_fit_is_skipped_and_a_smaller_one_still_trains(tmp_path):
    # The 32 px member "takes" 400 s. At the 64 px one 1600 s are spent and it is estimated at 1600 s:
    # 3260 s pass 42 minutes, skipped. At the next 32 px one 2000 s are spent: 2000 + 400 + 60 fit.
    out = tmp_path / "skip"
    _, result = workflow(out, MEMBERS="32:1 64:2 32:3", BUDGET_MINUTES="42", PATH=fake_clock(tmp_path, 400))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a 64 px member takes about 1600 s" in result.stdout and "member 64 px, seed 2 skipped" in result.stdout
    assert (out / "members.txt").read_text().split() == [str(out / "runs" / "size32_seed1"),
                                                         str(out / "runs" / "size32_seed3")]


def test_prediction_reserve_counts_against_the_budget(tmp_path):
    # The same 35 minutes with 120 s kept for the predictions: 1600 + 400 + 120 > 2100, one member.
    out = tmp_path / "reserved"
    _, result = workflow(out, MEMBERS="32:1 32:2", BUDGET_MINUTES="35", PREDICT_RESERVE_S="120",
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
    for members in ["192", "192:42 128", "0:1", " "]:
        _, result = workflow(out, MEMBERS=members)
        assert result.returncode == 2, members
        assert ("MEMBERS takes SIZE:SEED items like 192:42" in result.stderr
                or "MEMBERS is empty" in result.stderr), result.stderr
        assert not (out / "runs").exists()
