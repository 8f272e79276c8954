"""`keras-cxr audit`: files and a summary line; every bad input is one clear line with exit status 2."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_cxr.cli import main
from keras_cxr.probabilities import write_probabilities
from tests.test_audit import blobs, flip, oof_probs, write_labels


def run(*args):
    return CliRunner().invoke(main, ["audit", *map(str, args)])


def one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line, line
    for part in parts:
        assert part in line, line
    return line


@pytest.fixture
def case(tmp_path):
    x, y = blobs()
    noisy, _ = flip(y)
    names = [f"img{i:04d}.png" for i in range(len(y))]
    labels = write_labels(tmp_path / "data", names, noisy, folds=np.arange(len(y)) % 5)
    probs = tmp_path / "oof.csv"
    write_probabilities(probs, names, oof_probs(x, noisy))
    return tmp_path, labels, probs


def test_audit_writes_its_files_and_prints_a_summary(case):
    tmp_path, labels, probs = case
    out = tmp_path / "audit"
    result = run(probs, "--labels", labels, "--top", 6, "--out", out)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    report = json.loads((out / "audit.json").read_text())
    assert lines[0].startswith(f"{report['suspects']} suspected label errors of 360 rows (")
    top = pd.read_csv(out / "pairs.csv").iloc[0]
    assert f"{top['given']}->{top['suggested']} {top['count']}" in lines[0]
    assert lines[1] == f"-> {out}: suspects.csv, pairs.csv, audit.json, suspects.png"
    assert len(pd.read_csv(out / "suspects.csv")) == report["suspects"] > 20
    with Image.open(out / "suspects.png") as sheet:
        sheet.load()


def test_wrong_columns_are_one_line(case):
    tmp_path, labels, probs = case
    pd.read_csv(probs).rename(columns={"new_filename": "path"}).to_csv(tmp_path / "p.csv", index=False)
    one_line_error(run(tmp_path / "p.csv", "--labels", labels, "--out", tmp_path / "o"),
                   "p.csv line 1: no 'new_filename' column")
    pd.read_csv(labels).drop(columns="new_filename").to_csv(tmp_path / "l.csv", index=False)
    one_line_error(run(probs, "--labels", tmp_path / "l.csv", "--out", tmp_path / "o"),
                   "l.csv line 1: missing column(s) 'new_filename'")


def test_an_unknown_class_is_one_line(case):
    tmp_path, labels, probs = case
    pd.read_csv(probs).rename(columns={"virus": "pneumonia"}).to_csv(tmp_path / "p.csv", index=False)
    one_line_error(run(tmp_path / "p.csv", "--labels", labels, "--out", tmp_path / "o"),
                   "has no column for class(es) 'pneumonia' of the probabilities")


def test_rows_without_labels_are_one_line(case):
    tmp_path, labels, probs = case
    frame = pd.read_csv(labels)
    frame.iloc[5:].to_csv(tmp_path / "l.csv", index=False)
    one_line_error(run(probs, "--labels", tmp_path / "l.csv", "--out", tmp_path / "o"),
                   "5 of 360 rows of", "have no label in", "'img0000.png'")


def test_a_missing_image_is_one_line_naming_it(case):
    tmp_path, labels, probs = case
    for name in os.listdir(labels.parent / "images"):
        os.remove(labels.parent / "images" / name)
    line = one_line_error(run(probs, "--labels", labels, "--out", tmp_path / "o"),
                          "suspect #1", "image not found", str(labels.parent / "images"), "--images")
    assert not (tmp_path / "o" / "suspects.csv").exists(), line
    # --top 0 needs no images.
    assert run(probs, "--labels", labels, "--top", 0, "--out", tmp_path / "o").exit_code == 0
    one_line_error(run(probs, "--labels", labels, "--images", tmp_path / "none", "--out", tmp_path / "o"),
                   "--images", "folder not found")


def test_in_sample_probabilities_are_one_line(case):
    tmp_path, labels, probs = case
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    data = {"data_dir": str(labels.parent), "train_csv": labels.name}
    (run_dir / "recipe.json").write_text(json.dumps({"data": data}))
    (run_dir / "train_probs.csv").write_bytes(probs.read_bytes())
    one_line_error(run(run_dir / "train_probs.csv", "--labels", labels, "--out", tmp_path / "o"),
                   "360 of its 360 rows are training rows of the run in", "in-sample")


def test_unusable_outs_are_refused_before_any_work(case):
    tmp_path, labels, probs = case
    (tmp_path / "f").write_text("x")
    result = run(probs, "--labels", labels, "--out", tmp_path / "f")  # click's own check of the option
    assert result.exit_code == 2 and "is a file" in result.output
    one_line_error(run(probs, "--labels", labels, "--out", tmp_path / "f" / "audit"), "--out", "cannot create")
