"""The after-training workflow through the CLI: kfold -> fit per fold -> oof -> predict -> blend."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from keras_cxr.cli import main
from keras_cxr.data import read_table
from keras_cxr.data.synthetic import ensure_default_dataset

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
CLASSES = ["normal", "bacteria", "virus", "COVID-19"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = ensure_default_dataset()
    work = tmp_path_factory.mktemp("workflow")
    folds = work / "folds"
    # Synthetic names carry no patient; group by the first digit to exercise grouping.
    ok("kfold", root / "train.csv", root / "val.csv", "--folds", 2, "--group-regex", r"syn_0*(\d)",
       "--out", folds)
    oof, test = {}, {}
    for seed in (1, 2):
        runs = []
        for k in (0, 1):
            run = work / f"s{seed}_f{k}"
            ok("fit", REPO / "recipes" / "smoke.py", "--folds-dir", folds, "--fold", k, "--out", run,
               "--epochs", 2, "--image-size", 32, "--set", f"seed={seed}", "--set", "swa.start_epoch=None",
               "--quiet")
            runs.append(run)
        oof[seed] = work / f"oof_s{seed}.csv"
        ok("oof", *runs, "--out", oof[seed])
        test[seed] = work / f"test_s{seed}.csv"
        ok("predict", *runs, "--csv", root / "test.csv", "--tta", "rotate", "--out", test[seed], "--quiet")
    return root, work, folds, oof, test


@pytest.mark.slow
def test_folds_keep_groups_apart_and_oof_covers_every_row_once(workflow):
    root, work, folds, oof, _ = workflow
    merged = pd.read_csv(folds / "folds.csv")
    assert len(merged) == len(pd.read_csv(root / "train.csv")) + len(pd.read_csv(root / "val.csv"))
    assert merged.groupby("group")["fold"].nunique().max() == 1
    labels = read_table(folds / "folds.csv", labels="required")  # source_dir finds every image
    for seed in (1, 2):
        frame = pd.read_csv(oof[seed])
        assert list(frame.new_filename) == list(labels.filenames)
        np.testing.assert_allclose(frame[CLASSES].sum(axis=1), 1.0, atol=1e-6)
    # Each fold's rows come from the run that did not train on them.
    run_val = pd.read_csv(work / "s1_f0" / "val_probs.csv")
    assert set(run_val.new_filename) == set(merged.new_filename[merged.fold == 0])


def test_blend_all_writes_probs_submission_and_an_honest_report(workflow):
    root, work, folds, oof, test = workflow
    out = work / "blend"
    output = ok("blend", "--method", "all", "--val", oof[1], oof[2], "--labels", folds / "folds.csv",
                "--test", test[1], test[2], "--group-by", "group", "--out", out)
    assert "<- chosen" in output
    report = json.loads((out / "blend.json").read_text())
    assert len(report["candidates"]) == 8 and report["chosen"] in report["candidates"]
    best_cv = max(c["cv_macro_f1"] for c in report["candidates"].values())
    assert report["candidates"][report["chosen"]]["cv_macro_f1"] == best_cv
    assert report["cv"]["grouped"] is True and report["labeled_rows"] == len(pd.read_csv(folds / "folds.csv"))
    probs, sub = pd.read_csv(out / "probs.csv"), pd.read_csv(out / "submission.csv")
    order = list(pd.read_csv(root / "test.csv").new_filename)
    assert list(probs.new_filename) == order == list(sub.new_filename)
    np.testing.assert_allclose(probs[CLASSES].sum(axis=1), 1.0, atol=1e-9)
    assert (sub[CLASSES].sum(axis=1) == 1).all()
    np.testing.assert_array_equal(sub[CLASSES].to_numpy().argmax(1), probs[CLASSES].to_numpy().argmax(1))


def test_blend_refuses_rows_to_predict_that_have_labels(workflow):
    _, work, folds, oof, test = workflow
    result = invoke("blend", "--val", oof[1], "--labels", folds / "folds.csv", "--test", oof[2],
                    "--out", work / "leak")
    assert result.exit_code == 2
    assert "row(s) to predict" in result.output and "also have labels" in result.output
    assert not (work / "leak" / "probs.csv").exists()
    result = invoke("blend", "--val", oof[1], oof[2], "--labels", folds / "folds.csv", "--test", test[1],
                    "--out", work / "leak")
    assert result.exit_code == 2 and "2 --val file(s) but 1 --test file(s)" in result.output


def test_fit_fold_errors(workflow, tmp_path):
    _, _, folds, _, _ = workflow
    result = invoke("fit", REPO / "recipes" / "smoke.py", "--folds-dir", folds, "--fold", 5, "--out", tmp_path)
    assert result.exit_code == 2 and "--fold 5:" in result.output and "has folds 0, 1" in result.output
    result = invoke("fit", REPO / "recipes" / "smoke.py", "--fold", 1, "--out", tmp_path)
    assert result.exit_code == 2 and "--folds-dir and --fold go together" in result.output
