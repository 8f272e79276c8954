"""`keras_cxr.calibration`: temperature / vector scaling, scores, overlap refusal, files; Brier and NLL."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from keras_cxr.calibration import (
    Calibration,
    CalibrationError,
    calibrate_probabilities,
    check_disjoint,
    fit_calibration,
    load_calibration,
)
from keras_cxr.evaluation import (
    brier_score,
    classification_summary,
    expected_calibration_error,
    format_summary,
    negative_log_likelihood,
    reliability_bins,
)
from keras_cxr.probabilities import Probabilities, ProbabilityError

CLASSES = ("normal", "bacteria", "virus", "COVID-19")


def over_confident(rows, temperature, seed=0):
    """Rows whose labels are drawn from softmax(z), reported as softmax(z * temperature)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (rows, 4))
    y = (softmax(logits, axis=1).cumsum(axis=1) < rng.random((rows, 1))).sum(axis=1)
    names = tuple(f"r{i}.png" for i in range(rows))
    return Probabilities("synthetic.csv", names, softmax(logits * temperature, axis=1), CLASSES), y


def write_labels(path, names, y):
    frame = pd.DataFrame(np.eye(4, dtype=int)[y], columns=list(CLASSES))
    frame.insert(0, "new_filename", list(names))
    frame.to_csv(path, index=False)


# --- scores by hand ----------------------------------------------------------------------------------------------


def test_brier_and_nll_of_a_hand_example():
    y = [0, 1]
    p = [[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]
    # row 0: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; row 1: 0.4^2 + 0.6^2 + 0.2^2 = 0.56
    assert brier_score(y, p) == pytest.approx(0.35)
    assert negative_log_likelihood(y, p) == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2)  # 0.63648
    assert negative_log_likelihood([1], [[1.0, 0.0]]) == pytest.approx(-np.log(1e-12))  # clipped, finite
    assert brier_score([1], [[1.0, 0.0]]) == 2.0
    summary = classification_summary(np.array(y), np.array(p), ("a", "b", "c"))
    assert summary["brier"] == pytest.approx(0.35) and summary["nll"] == pytest.approx(0.636482, abs=1e-6)
    assert "ECE 0.3500   Brier 0.3500   NLL 0.6365" in format_summary(summary).splitlines()[0]


def test_reliability_bins_add_up_to_the_ece():
    probs, y = over_confident(2000, 3.0)
    bins = reliability_bins(y, probs.values)
    filled = bins["count"] > 0
    ece = (bins["count"][filled] / len(y) * np.abs(bins["accuracy"] - bins["confidence"])[filled]).sum()
    assert bins["count"].sum() == 2000 and np.isnan(bins["accuracy"][~filled]).all()
    assert ece == pytest.approx(expected_calibration_error(y, probs.values))


# --- fitting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_temperature", [2.0, 0.5])
def test_temperature_recovers_a_known_temperature(true_temperature):
    probs, y = over_confident(20000, true_temperature)
    calibration, report = fit_calibration(probs, y)
    assert calibration.method == "temperature"
    assert calibration.parameters["temperature"] == pytest.approx(true_temperature, rel=0.05)
    assert report["rows"] == 20000 and report["cv_folds"] == 5 and report["argmax_changed"] == 0
    before, after, cv = report["before"], report["in_sample"], report["cross_validated"]
    assert before["ece"] > 0.05 and after["ece"] < 0.015 and cv["ece"] < 0.015
    assert after["nll"] < before["nll"] - 0.05 and after["brier"] < before["brier"]
    assert cv["nll"] == pytest.approx(after["nll"], abs=0.005)  # one parameter barely overfits


def test_apply_by_hand_and_temperature_one_is_the_identity():
    half = Calibration("temperature", {"temperature": 2.0}, ("a", "b"), ())
    np.testing.assert_allclose(half.apply([[0.8, 0.2]]), [[2 / 3, 1 / 3]])  # sqrt(.8):sqrt(.2) = 2:1
    vector = Calibration("vector", {"weights": [1.0, 1.0], "biases": [np.log(2.0), 0.0]}, ("a", "b"), ())
    np.testing.assert_allclose(vector.apply([[0.5, 0.5]]), [[2 / 3, 1 / 3]])
    probs, _ = over_confident(500, 1.0)
    identity = Calibration("temperature", {"temperature": 1.0}, CLASSES, ())
    np.testing.assert_allclose(identity.apply(probs.values), probs.values, atol=1e-12)
    with pytest.raises(CalibrationError, match="has 2 classes; got probabilities of shape \\(1, 3\\)"):
        half.apply([[0.2, 0.3, 0.5]])


def test_temperature_never_changes_the_argmax_on_any_row():
    rng = np.random.default_rng(1)
    values = rng.dirichlet(np.full(4, 0.3), size=5000)
    values[:10, 3] = 0.0  # zeros (clipped logits) too
    values /= values.sum(axis=1, keepdims=True)
    for t in (0.02, 0.3, 1.0, 3.0, 50.0):
        scaled = Calibration("temperature", {"temperature": t}, CLASSES, ()).apply(values)
        np.testing.assert_array_equal(scaled.argmax(axis=1), values.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)


def test_vector_scaling_can_change_the_argmax():
    # The model under-calls COVID-19 (its column is halved); vector scaling's bias moves rows back.
    probs, y = over_confident(4000, 1.0, seed=2)
    skewed = probs.values * [1.0, 1.0, 1.0, 0.4]
    skewed = Probabilities(probs.path, probs.filenames, skewed / skewed.sum(axis=1, keepdims=True), CLASSES)
    calibration, report = fit_calibration(skewed, y, method="vector")
    assert not calibration.keeps_argmax and report["argmax_changed"] > 50
    assert calibration.parameters["biases"][3] - np.mean(calibration.parameters["biases"][:3]) > 0.5
    assert report["cross_validated"]["nll"] < report["before"]["nll"]
    _, temperature = fit_calibration(skewed, y)
    assert temperature["argmax_changed"] == 0


def test_cross_validation_is_skipped_with_a_reason_or_on_request():
    probs, y = over_confident(60, 2.0)
    y = y.copy()
    y[y == 3] = 0
    y[0] = 3  # COVID-19 has a single row: no stratified split is possible
    _, report = fit_calibration(probs, y)
    assert report["cross_validated"] is None and "single labeled row" in report["cv_note"]
    _, report = fit_calibration(probs, y, cv_folds=0)
    assert report["cross_validated"] is None and report["cv_folds"] == 0 and "cv_note" not in report
    with pytest.raises(CalibrationError, match="cv_folds 1: give 2 or more parts"):
        fit_calibration(probs, y, cv_folds=1)
    with pytest.raises(CalibrationError, match="method 'platt': unknown calibration method"):
        fit_calibration(probs, y, method="platt")
    with pytest.raises(CalibrationError, match="expected 60 class ids in \\[0, 4\\)"):
        fit_calibration(probs, y[:-1])


def test_fit_with_a_labels_csv_matches_rows_by_filename(tmp_path):
    probs, y = over_confident(400, 2.0)
    order = np.random.default_rng(0).permutation(400)
    write_labels(tmp_path / "labels.csv", np.array(probs.filenames)[order], y[order])
    from_csv, _ = fit_calibration(probs, tmp_path / "labels.csv")
    from_ids, _ = fit_calibration(probs, y)
    assert from_csv.parameters["temperature"] == pytest.approx(from_ids.parameters["temperature"], rel=1e-6)
    assert set(from_csv.fitted_on) == set(probs.filenames) and "labels.csv" in from_csv.source
    write_labels(tmp_path / "short.csv", probs.filenames[:-3], y[:-3])
    with pytest.raises(ProbabilityError, match="filenames differ: 3 row\\(s\\) of synthetic.csv are not in"):
        fit_calibration(probs, tmp_path / "short.csv")
    other = Probabilities("p.csv", probs.filenames, probs.values, ("normal", "bacteria", "virus", "fungus"))
    from keras_cxr.data import TableError

    with pytest.raises(TableError, match="missing column\\(s\\) 'fungus'"):
        fit_calibration(other, tmp_path / "labels.csv")


# --- overlap, files ----------------------------------------------------------------------------------------------


def test_rows_it_was_fitted_on_are_refused():
    probs, y = over_confident(300, 2.0)
    calibration, _ = fit_calibration(probs, y)
    rows = ("new.png", *probs.filenames[:7])
    with pytest.raises(CalibrationError) as caught:
        check_disjoint(calibration, rows)
    message = str(caught.value)
    assert "was fitted on 7 of the rows to predict ('r0.png'" not in message  # names are listed bare
    assert "was fitted on 7 of the rows to predict (r0.png, r1.png, r2.png, r3.png, r4.png and 2 more)" in message
    assert caught.value.render({"calibration": "--calibration"}).startswith("--calibration (fitted on synthetic.csv")
    check_disjoint(calibration, ("new.png", "other.png"))  # disjoint rows pass
    with pytest.raises(CalibrationError, match="fitted on 300 of the rows of synthetic.csv"):
        calibrate_probabilities(probs, calibration)
    fresh = Probabilities("test.csv", tuple(f"t{i}.png" for i in range(300)), probs.values, CLASSES)
    np.testing.assert_allclose(calibrate_probabilities(fresh, calibration).values, calibration.apply(probs.values))


def test_save_and_load_round_trip(tmp_path):
    probs, y = over_confident(300, 2.0)
    for method in ("temperature", "vector"):
        calibration, report = fit_calibration(probs, y, method=method)
        path = calibration.save(tmp_path / f"{method}.json", report)
        loaded = load_calibration(path, class_names=CLASSES)
        assert (loaded.method, loaded.class_names, loaded.fitted_on) == (method, CLASSES, probs.filenames)
        assert loaded.parameters == calibration.parameters and loaded.path == str(path)
        np.testing.assert_array_equal(loaded.apply(probs.values), calibration.apply(probs.values))
        assert json.loads((tmp_path / f"{method}.json").read_text())["report"]["before"] == report["before"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "calibration.json").write_text((tmp_path / "temperature.json").read_text())
    assert load_calibration(tmp_path / "run").path == str(tmp_path / "run" / "calibration.json")


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_unusable_calibration_files_are_named(tmp_path):
    good = Calibration("temperature", {"temperature": 1.5}, CLASSES, ("a.png",)).to_dict()
    cases = [
        (tmp_path / "nope.json", "nope.json: calibration file not found"),
        (_write(tmp_path / "bad.json", "{not json"), "bad.json: not a calibration file (bad JSON: "),
        (_write(tmp_path / "other.json", {"temperature": 2}), "other.json: not a calibration file (no \"format\""),
        (_write(tmp_path / "method.json", {**good, "method": "platt"}), "method.json: unknown method 'platt'"),
        (_write(tmp_path / "t.json", {**good, "parameters": {"temperature": -1}}),
         "t.json: parameter temperature=-1 is not a finite number > 0"),
        (_write(tmp_path / "v.json", {**good, "method": "vector", "parameters": {"weights": [1], "biases": [0]}}),
         "v.json: parameter weights=[1] is not 4 finite numbers"),
        (tmp_path, f"{tmp_path}: the run directory has no calibration.json"),
    ]
    for path, message in cases:
        with pytest.raises(CalibrationError) as caught:
            load_calibration(path)
        assert message in str(caught.value) and str(caught.value).startswith("calibration ")
    _write(tmp_path / "good.json", good)
    with pytest.raises(CalibrationError, match="was fitted for classes .*'COVID-19'.* but the probabilities have "
                                               "\\['normal', 'sick'\\]"):
        load_calibration(tmp_path / "good.json", class_names=("normal", "sick"))


def test_reliability_diagram_is_written(tmp_path):
    from keras_cxr.plots import plot_reliability

    probs, y = over_confident(500, 2.0)
    calibration, _ = fit_calibration(probs, y)
    plot_reliability(y, probs.values, tmp_path / "r.png", calibrated=calibration.apply(probs.values))
    plot_reliability(y, probs.values, tmp_path / "one.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "r.png").stat().st_size > 20000
    assert (tmp_path / "one.png").stat().st_size > 10000
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_blend_files_applies_the_calibration_to_the_rows_to_predict(tmp_path):
    from keras_cxr.blend.files import blend_files
    from keras_cxr.probabilities import read_probabilities, write_probabilities

    val, y = over_confident(200, 2.0, seed=3)
    write_labels(tmp_path / "val.csv", val.filenames, y)
    write_probabilities(tmp_path / "a_val.csv", val.filenames, val.values, CLASSES)
    test_names = tuple(f"t{i}.png" for i in range(50))
    test_values = over_confident(50, 2.0, seed=4)[0].values
    write_probabilities(tmp_path / "a_test.csv", test_names, test_values, CLASSES)
    calibration, _ = fit_calibration(val, y)
    calibration.save(tmp_path / "T.json")
    args = ([tmp_path / "a_val.csv"], tmp_path / "val.csv", [tmp_path / "a_test.csv"])
    plain = blend_files(*args, tmp_path / "plain", method="mean")
    report = blend_files(*args, tmp_path / "cal", method="mean", calibration=tmp_path / "T.json")
    assert "calibration" not in plain and report["calibration"]["method"] == "temperature"
    before = read_probabilities(tmp_path / "plain" / "probs.csv").values
    after = read_probabilities(tmp_path / "cal" / "probs.csv").values
    np.testing.assert_allclose(after, calibration.apply(before), atol=1e-9)
    assert (pd.read_csv(tmp_path / "cal" / "submission.csv").equals(pd.read_csv(tmp_path / "plain" / "submission.csv")))
    # A calibration fitted on rows to predict is refused, before anything is written.
    overlapping, _ = fit_calibration(Probabilities("x.csv", test_names, test_values, CLASSES), np.arange(50) % 4)
    with pytest.raises(CalibrationError, match="fitted on 50 of the rows of .*a_test.csv"):
        blend_files(*args, tmp_path / "refused", method="mean", calibration=overlapping)
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_fit_writes_reliability_and_calibration_and_leaves_val_probs_alone(tmp_path, monkeypatch):
    from keras_cxr import training
    from keras_cxr.data import read_table
    from keras_cxr.recipe import Data, Model, Recipe

    recipe = Recipe(data=Data(data_dir=None, workers=1), model=Model(name="cxr_resnet", image_size=32),
                    precision="float32", epochs=1, batch_size=32, seed=3)
    metrics = training.fit_recipe(recipe, tmp_path / "run", verbose=0)
    run = tmp_path / "run"
    assert (run / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    calibration = load_calibration(run, class_names=CLASSES)
    val = read_table(training.resolve_data_dir(recipe.data) / "val.csv")
    assert calibration.method == "temperature" and calibration.fitted_on == val.filenames
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["calibration"]["parameters"] == calibration.parameters == metrics["calibration"]["parameters"]
    assert saved["calibration"]["before"]["ece"] == pytest.approx(saved["validation"]["ece"])
    assert saved["validation"]["brier"] == pytest.approx(saved["calibration"]["before"]["brier"])
    from keras_cxr.probabilities import read_probabilities

    val_probs = read_probabilities(run / "val_probs.csv")  # uncalibrated: calibrating it gives the in-sample scores
    after = calibration.apply(val_probs.values)
    assert expected_calibration_error(val.class_ids, after) == pytest.approx(saved["calibration"]["in_sample"]["ece"],
                                                                             abs=1e-6)
    # The same run without the calibration step writes a byte-identical val_probs.csv.
    monkeypatch.setattr(training, "_calibrate_on_validation", lambda *args: None)
    training.fit_recipe(recipe, tmp_path / "plain", verbose=0)
    assert (tmp_path / "plain" / "val_probs.csv").read_bytes() == (run / "val_probs.csv").read_bytes()
    assert not (tmp_path / "plain" / "calibration.json").exists()


def test_the_cxr4_benchmark_script_runs_on_synthetic_files(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "calibration_cxr4.py"
    spec = importlib.util.spec_from_file_location("calibration_cxr4", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(["--synthetic"])
    assert report["test_rows"] == report["val_rows"] == 300 and report["test_argmax_changed"] == 0
    assert report["test_after"]["ece"] < report["test_before"]["ece"] - 0.03
    assert report["test_after"]["nll"] < report["test_before"]["nll"]
    assert "test rows whose argmax changed: 0" in capsys.readouterr().out
