"""`keras-cxr calibrate`, and `--calibration` in `predict` and `blend`: numbers, overlap refusal, one-line errors."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.special import softmax

from keras_cxr.cli import main
from keras_cxr.probabilities import read_probabilities

CLASSES = ["normal", "bacteria", "virus", "COVID-19"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.fixture
def files(tmp_path):
    """val/test labels and probability files, over-confident by T=2.5 (labels drawn from softmax(z))."""
    rng = np.random.default_rng(5)
    for split in ("val", "test"):
        logits = rng.normal(0.0, 1.5, (300, 4))
        y = (softmax(logits, axis=1).cumsum(axis=1) < rng.random((300, 1))).sum(axis=1)
        names = [f"{split}{i}.png" for i in range(300)]
        labels = pd.DataFrame(np.eye(4, dtype=int)[y], columns=CLASSES)
        labels.insert(0, "new_filename", names)
        labels.to_csv(tmp_path / f"{split}.csv", index=False)
        probs = pd.DataFrame(softmax(logits * 2.5, axis=1), columns=CLASSES)
        probs.insert(0, "new_filename", names)
        probs.to_csv(tmp_path / f"{split}_probs.csv", index=False)
    return tmp_path


def test_calibrate_prints_before_and_after_and_writes_json_and_plot(files):
    result = invoke("calibrate", files / "val_probs.csv", "--labels", files / "val.csv", "--out", files / "T.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((files / "T.json").read_text())
    report, t = saved["report"], saved["parameters"]["temperature"]
    assert saved["method"] == "temperature" and 2.0 < t < 3.2 and len(saved["fitted_on"]) == 300
    lines = result.output.splitlines()
    assert lines[0].startswith(f"temperature scaling on 300 rows of {files / 'val_probs.csv'}: temperature T = {t:.4g}")
    assert lines[0].endswith("(argmax unchanged)")
    for line, key in zip(lines[2:5], ("before", "in_sample", "cross_validated")):
        scores = report[key]
        assert line.split()[-3:] == [f"{scores['ece']:.4f}", f"{scores['brier']:.4f}", f"{scores['nll']:.4f}"]
    assert lines[4].startswith("after, 5-fold CV")
    assert report["cross_validated"]["ece"] < report["before"]["ece"] / 2
    assert (files / "T.reliability.png").read_bytes()[:4] == b"\x89PNG"

    result = invoke("calibrate", files / "val_probs.csv", "--labels", files / "val.csv", "--method", "vector",
                    "--cv-folds", 0, "--out", files / "V.json", "--plot", files / "plots" / "v.png")
    assert result.exit_code == 0, result.output
    assert "vector scaling, weights [" in result.output and "argmax changed on" in result.output
    assert "after, cross-validated" in result.output and (files / "plots" / "v.png").exists()


def test_evaluate_prints_brier_and_nll(files):
    result = invoke("evaluate", files / "test_probs.csv", "--labels", files / "test.csv")
    assert result.exit_code == 0, result.output
    from keras_cxr.evaluation import brier_score, negative_log_likelihood

    probs, y = pd.read_csv(files / "test_probs.csv"), pd.read_csv(files / "test.csv")[CLASSES].to_numpy().argmax(1)
    values = probs[CLASSES].to_numpy()
    assert f"Brier {brier_score(y, values):.4f}   NLL {negative_log_likelihood(y, values):.4f}" in result.output


def test_calibrate_bad_input_is_one_clear_line(files):
    out = ["--out", files / "T.json"]
    labels = ["--labels", files / "val.csv"]
    one_line_error(invoke("calibrate", files / "nope.csv", *labels, *out), "nope.csv: probability file not found")
    one_line_error(invoke("calibrate", files / "val_probs.csv", "--labels", files / "nope.csv", *out),
                   f"--labels {files / 'nope.csv'}: file not found")
    frame = pd.read_csv(files / "val_probs.csv")
    frame.rename(columns={"new_filename": "file"}).to_csv(files / "cols.csv", index=False)
    one_line_error(invoke("calibrate", files / "cols.csv", *labels, *out), "cols.csv line 1: no 'new_filename' column")
    frame.iloc[:-2].to_csv(files / "short.csv", index=False)
    one_line_error(invoke("calibrate", files / "short.csv", *labels, *out),
                   "filenames differ: 2 row(s) of", "val298.png")
    frame.rename(columns={"COVID-19": "fungus"}).to_csv(files / "fungus.csv", index=False)
    one_line_error(invoke("calibrate", files / "fungus.csv", *labels, *out),  # a class the labels do not have
                   "--labels val.csv line 1: missing column(s) 'fungus'")
    pd.read_csv(files / "val.csv").assign(**{"COVID-19": 0}).to_csv(files / "unlabeled.csv", index=False)
    one_line_error(invoke("calibrate", files / "val_probs.csv", "--labels", files / "unlabeled.csv", *out),
                   "--labels unlabeled.csv line 2: label cells are not one-hot (all zeros) (and ", "more problems)")
    one_line_error(invoke("calibrate", files / "val_probs.csv", *labels, "--cv-folds", 1, *out),
                   "--cv-folds 1: give 2 or more parts")
    assert not (files / "T.json").exists()


def test_blend_applies_a_calibration_and_refuses_overlap(files):
    assert invoke("calibrate", files / "val_probs.csv", "--labels", files / "val.csv", "--out",
                  files / "T.json").exit_code == 0
    base = ["blend", "--method", "mean", "--val", files / "val_probs.csv", "--labels", files / "val.csv",
            "--test", files / "test_probs.csv"]
    result = invoke(*base, "--calibration", files / "T.json", "--out", files / "blend")
    assert result.exit_code == 0, result.output
    assert f"calibrated with {files / 'T.json'} (temperature scaling)" in result.output
    from keras_cxr.calibration import load_calibration

    calibrated = read_probabilities(files / "blend" / "probs.csv").values
    expected = load_calibration(files / "T.json").apply(read_probabilities(files / "test_probs.csv").values)
    np.testing.assert_allclose(calibrated, expected, atol=1e-9)
    # Fitted on the test rows: blend refuses to apply it to them.
    assert invoke("calibrate", files / "test_probs.csv", "--labels", files / "test.csv", "--out",
                  files / "leak.json").exit_code == 0
    one_line_error(invoke(*base, "--calibration", files / "leak.json", "--out", files / "refused"),
                   f"--calibration {files / 'leak.json'} was fitted on 300 of the rows of", "test0.png")
    one_line_error(invoke(*base, "--calibration", files / "missing.json", "--out", files / "refused"),
                   "--calibration", "missing.json: calibration file not found")
    (files / "bad.json").write_text("{")
    one_line_error(invoke(*base, "--calibration", files / "bad.json", "--out", files / "refused"),
                   "bad.json: not a calibration file (bad JSON")
    assert not (files / "refused").exists()


@pytest.mark.slow
def test_predict_with_a_calibration_end_to_end(tmp_path):
    from keras_cxr import models
    from keras_cxr.data.synthetic import ensure_default_dataset
    from keras_cxr.seeding import set_seed

    data = ensure_default_dataset()
    run = tmp_path / "run"
    run.mkdir()
    set_seed(0)
    models.build("cxr_resnet", num_classes=4, image_size=32).save(run / "best.keras")
    predict = ["predict", run, "--images", data / "images", "--quiet"]
    assert invoke(*predict, "--csv", data / "val.csv", "--out", tmp_path / "val_probs.csv").exit_code == 0
    result = invoke("calibrate", tmp_path / "val_probs.csv", "--labels", data / "val.csv", "--out", run / "calibration.json")
    assert result.exit_code == 0, result.output

    result = invoke(*predict, "--csv", data / "test.csv", "--out", tmp_path / "plain.csv")
    assert result.exit_code == 0, result.output
    result = invoke(*predict, "--csv", data / "test.csv", "--calibration", run, "--out", tmp_path / "cal.csv",
                    "--submission", tmp_path / "sub.csv")
    assert result.exit_code == 0, result.output
    assert "; calibrated: temperature T = " in result.output
    from keras_cxr.calibration import load_calibration

    plain, calibrated = read_probabilities(tmp_path / "plain.csv"), read_probabilities(tmp_path / "cal.csv")
    np.testing.assert_allclose(calibrated.values, load_calibration(run).apply(plain.values), atol=1e-6)
    np.testing.assert_array_equal(calibrated.values.argmax(1), plain.values.argmax(1))  # every row
    sub = pd.read_csv(tmp_path / "sub.csv")[CLASSES].to_numpy()
    np.testing.assert_array_equal(sub.argmax(1), plain.values.argmax(1))

    # The val rows it was fitted on are refused, with one line and before any model runs.
    result = invoke(*predict, "--csv", data / "val.csv", "--calibration", run / "calibration.json",
                    "--out", tmp_path / "refused.csv")
    one_line_error(result, f"--calibration {run / 'calibration.json'} was fitted on", "of the rows of")
    assert not (tmp_path / "refused.csv").exists()
