"""`keras_cxr.audit`: cleanlab finds flipped labels in out-of-fold probabilities; bad inputs are refused."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from keras_cxr import CLASS_NAMES
from keras_cxr.audit import AuditError, audit_labels, class_pairs, write_audit
from keras_cxr.probabilities import (
    ProbabilityError,
    read_probabilities,
    write_probabilities,
)

FLIP_RATE = 0.08


def blobs(per_class=(90, 150, 90, 30), dims=6, spread=1.2, seed=0):
    """4-class Gaussian blobs (imbalanced like cxr4) a linear model tells apart 93% of the time."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(per_class), dims))
    centres *= 3.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(len(per_class)), per_class)
    x = centres[y] + rng.normal(0, spread, (len(y), dims))
    order = rng.permutation(len(y))
    return x[order], y[order]


def flip(y, rate=FLIP_RATE, seed=1, classes=4):
    """`y` with `round(rate * N)` rows moved to another class, and those rows' indices."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(y), size=round(rate * len(y)), replace=False))
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    return noisy, flipped


def oof_probs(x, y, folds=5, seed=0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=cv, method="predict_proba")


def write_labels(folder, filenames, y, name="labels.csv", images=True, folds=None, extra=None):
    """A labeled table CSV (one-hot, optional fold column) with a tiny PNG per row in images/."""
    frame = pd.DataFrame({"new_filename": filenames})
    for c, class_name in enumerate(CLASS_NAMES):
        frame[class_name] = (np.asarray(y) == c).astype(int)
    if folds is not None:
        frame["fold"] = folds
    for column, values in (extra or {}).items():
        frame[column] = values
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)
    if images:
        (folder / "images").mkdir(exist_ok=True)
        for i, filename in enumerate(filenames):
            pixels = np.full((16, 16), (i * 37) % 256, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / filename)
    return folder / name


@pytest.fixture
def noisy_case(tmp_path):
    """Blobs with 8% flipped labels: labels CSV (with images), OOF probability file, flipped filenames."""
    x, y = blobs()
    noisy, flipped = flip(y)
    probs = oof_probs(x, noisy)
    names = [f"img{i:04d}.png" for i in range(len(y))]
    labels = write_labels(tmp_path / "data", names, noisy, folds=np.arange(len(y)) % 5)
    probs_path = tmp_path / "oof.csv"
    write_probabilities(probs_path, names, probs)
    return labels, probs_path, {names[i] for i in flipped}, y, noisy


def test_flipped_labels_are_found_among_the_top_k(noisy_case):
    labels, probs_path, flipped, y, noisy = noisy_case
    audit = audit_labels(probs_path, labels)
    k = len(flipped)
    assert k == 29
    found = len(flipped & set(audit.suspects["filename"].head(k)))
    print(f"\nrecall@{k} of flipped labels: {found / k:.3f} ({found}/{k}); {len(audit.suspects)} suspects "
          f"of {audit.rows} rows; {audit.settings['cleanlab_version']}")
    assert found / k >= 0.5
    # Ranked by self-confidence: the given class's probability, lowest first.
    suspects = audit.suspects
    assert suspects["rank"].tolist() == list(range(1, len(suspects) + 1))
    assert np.all(np.diff(suspects["label_quality"]) >= 0)
    np.testing.assert_allclose(suspects["label_quality"], suspects["p_given"], atol=1e-9)
    assert (suspects["given"] != suspects["suggested"]).all()
    assert (suspects["p_suggested"] > suspects["p_given"]).all()
    # A flipped row's suggestion is its true class most of the time.
    true = {f"img{i:04d}.png": CLASS_NAMES[c] for i, c in enumerate(y)}
    hits = suspects[suspects["filename"].isin(flipped)]
    assert (hits["suggested"] == hits["filename"].map(true)).mean() >= 0.8
    assert set(suspects["fold"].astype(int)) <= set(range(5))
    assert audit.class_counts == {n: int((noisy == c).sum()) for c, n in enumerate(CLASS_NAMES)}


def test_pairs_count_the_suspects_by_given_and_suggested_class(noisy_case):
    labels, probs_path, *_ = noisy_case
    audit = audit_labels(probs_path, labels)
    pairs = audit.pairs
    assert pairs["count"].sum() == len(audit.suspects)
    assert list(pairs["count"]) == sorted(pairs["count"], reverse=True)
    cross = pd.crosstab(audit.suspects["given"], audit.suspects["suggested"])
    for row in pairs.itertuples():
        assert row.count == cross.loc[row.given, row.suggested]
        assert row.rate == pytest.approx(row.count / audit.class_counts[row.given])


def test_class_pairs_of_a_small_table():
    suspects = pd.DataFrame({"given": ["normal", "virus", "normal", "normal"],
                             "suggested": ["bacteria", "bacteria", "bacteria", "virus"]})
    pairs = class_pairs(suspects, {"normal": 10, "virus": 4})
    assert pairs.to_dict("records") == [
        {"given": "normal", "suggested": "bacteria", "count": 2, "rate": 0.2},
        {"given": "normal", "suggested": "virus", "count": 1, "rate": 0.1},
        {"given": "virus", "suggested": "bacteria", "count": 1, "rate": 0.25},
    ]
    assert len(class_pairs(suspects.iloc[:0], {})) == 0


def test_write_audit_writes_parseable_files_and_a_contact_sheet(noisy_case, tmp_path):
    labels, probs_path, *_ = noisy_case
    audit = audit_labels(read_probabilities(probs_path), labels)
    out = tmp_path / "audit"
    written = write_audit(audit, out, top=8, columns=4)
    assert sorted(os.listdir(out)) == ["audit.json", "pairs.csv", "suspects.csv", "suspects.png"]
    assert set(written) == set(os.listdir(out))
    suspects = pd.read_csv(out / "suspects.csv")
    assert list(suspects.columns) == ["rank", "filename", "given", "suggested", "label_quality", "p_given",
                                      "p_suggested", "fold", "image"]
    assert suspects["filename"].tolist() == audit.suspects["filename"].tolist()
    assert os.path.isfile(suspects["image"].iloc[0])
    assert pd.read_csv(out / "pairs.csv")["count"].sum() == len(suspects)
    report = json.loads((out / "audit.json").read_text())
    assert report["rows"] == 360 and report["suspects"] == len(suspects) and report["contact_sheet_rows"] == 8
    assert sum(report["suspects_per_class"].values()) == len(suspects)
    assert report["settings"]["cleanlab_version"].count(".") >= 1
    assert "no keras-cxr run directory" in report["settings"]["in_sample_check"]
    with Image.open(out / "suspects.png") as sheet:
        sheet.load()
        assert sheet.width > 400 and sheet.height > 300  # 4 columns x 2 rows of cells
    # Without a sheet, an old one is removed (it would not match the new CSV).
    write_audit(audit, out, top=0)
    assert not (out / "suspects.png").exists()


def test_a_missing_image_of_a_top_suspect_is_named_and_nothing_is_written(noisy_case, tmp_path):
    labels, probs_path, *_ = noisy_case
    audit = audit_labels(probs_path, labels)
    first = audit.suspects["filename"].iloc[0]
    os.remove(labels.parent / "images" / first)
    with pytest.raises(AuditError, match=rf"suspect #1 '{first}': image not found: .*{first}"):
        write_audit(audit, tmp_path / "audit", top=5)
    assert not (tmp_path / "audit").exists()
    # The images can live elsewhere: images_dir says where.
    other = tmp_path / "elsewhere"
    os.rename(labels.parent / "images", other)
    (other / first).write_bytes((other / audit.suspects["filename"].iloc[1]).read_bytes())
    moved = audit_labels(probs_path, labels, images_dir=other)
    assert "suspects.png" in write_audit(moved, tmp_path / "audit", top=5)


# --- refusals ------------------------------------------------------------------------------------


def _fit_run(run_dir, data_dir, train_csv="train.csv"):
    """A keras-cxr run directory as far as the audit reads it: its recipe.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"data_dir": str(data_dir), "train_csv": train_csv, "val_csv": "val.csv", "images_dir": "images",
            "extra_train": [], "filename_column": "new_filename", "class_names": list(CLASS_NAMES)}
    (run_dir / "recipe.json").write_text(json.dumps({"data": data, "epochs": 1}))
    return run_dir


def test_in_sample_probabilities_of_a_run_are_refused(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    names = [f"r{i}.png" for i in range(40)]
    y = np.arange(40) % 4
    data = tmp_path / "data"
    write_labels(data, names[:30], y[:30], name="train.csv")
    write_labels(data, names[30:], y[30:], name="val.csv", images=False)
    all_labels = write_labels(tmp_path / "data", names, y, name="all.csv", images=False)
    probs = rng.dirichlet(np.ones(4), size=40)
    monkeypatch.chdir(tmp_path)
    run = _fit_run(tmp_path / "runs" / "a", "data")  # relative, as `fit --data-dir data` records it
    write_probabilities(run / "all_probs.csv", names, probs)
    with pytest.raises(AuditError) as raised:
        audit_labels(run / "all_probs.csv", all_labels)
    message = str(raised.value)
    assert f"{run / 'all_probs.csv'}: 30 of its 40 rows are training rows of the run in {run}" in message
    assert "'r0.png', 'r1.png'" in message and "and 25 more" in message and "--" not in message

    # The run's validation rows are out-of-sample: audited, and the check is recorded.
    write_probabilities(run / "val_probs.csv", names[30:], probs[30:])
    audit = audit_labels(run / "val_probs.csv", all_labels)
    assert audit.rows == 10 and audit.settings["label_rows"] == 40
    assert audit.settings["in_sample_check"].startswith("checked against the training rows of ")
    assert str(data / "train.csv") in audit.settings["in_sample_check"]

    # A run whose data folder is gone cannot be checked: audited, and said so.
    _fit_run(run, tmp_path / "gone")
    audit = audit_labels(run / "all_probs.csv", all_labels)
    assert "not checked" in audit.settings["in_sample_check"]

    # A run trained from a TFDS build of the folder: its records name the same training rows.
    from keras_cxr.data.tfds import build_tfds

    source = tmp_path / "source"  # the training split only (val's images were never written)
    source.mkdir()
    (source / "train.csv").write_bytes((data / "train.csv").read_bytes())
    (source / "images").symlink_to(data / "images")
    build_tfds(source, tmp_path / "tfds", verbose=0)
    recipe = json.loads((run / "recipe.json").read_text())
    recipe["data"].update(data_dir=None, tfds_dir=str(tmp_path / "tfds"))
    (run / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(AuditError, match="30 of its 40 rows are training rows of the run"):
        audit_labels(run / "all_probs.csv", all_labels)
    audit = audit_labels(run / "val_probs.csv", all_labels)
    assert audit.settings["in_sample_check"] == f"checked against the training rows of the TFDS build {tmp_path / 'tfds'}"


@pytest.fixture
def small_case(tmp_path):
    names = [f"s{i}.png" for i in range(12)]
    y = np.arange(12) % 4
    labels = write_labels(tmp_path / "data", names, y, images=False)
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=12)
    return tmp_path, names, labels, probs


def test_probability_rows_without_a_label_are_named(small_case):
    tmp_path, names, labels, probs = small_case
    path = tmp_path / "p.csv"
    write_probabilities(path, names[:10] + ["x1.png", "x2.png"], probs)
    with pytest.raises(AuditError, match=r"2 of 12 rows of .*p\.csv have no label in .*labels\.csv \('x1.png', 'x2.png'\)"):
        audit_labels(path, labels)


def test_labels_without_a_class_of_the_probabilities_are_refused(small_case):
    tmp_path, names, labels, probs = small_case
    path = tmp_path / "p.csv"
    write_probabilities(path, names, probs, class_names=("normal", "bacteria", "virus", "pneumonia"))
    with pytest.raises(AuditError, match=r"has no column for class\(es\) 'pneumonia' of the probabilities"):
        audit_labels(path, labels)
    write_probabilities(path, names, probs[:, :3] / probs[:, :3].sum(1, keepdims=True),
                        class_names=("normal", "bacteria", "virus"))
    with pytest.raises(AuditError, match=r"has class column\(s\) 'COVID-19' that the probabilities lack"):
        audit_labels(path, labels)


def test_bad_label_tables_are_one_line(small_case):
    tmp_path, names, labels, probs = small_case
    path = tmp_path / "p.csv"
    write_probabilities(path, names, probs)
    frame = pd.read_csv(labels)
    frame.rename(columns={"new_filename": "file"}).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(AuditError, match=r"renamed\.csv line 1: missing column\(s\) 'new_filename'") as raised:
        audit_labels(path, tmp_path / "renamed.csv")
    assert "\n" not in str(raised.value)
    frame.loc[[3, 5], "virus"] = 1
    frame.to_csv(tmp_path / "two_hot.csv", index=False)
    with pytest.raises(AuditError, match=r"two_hot\.csv line 5: label cells are not one-hot .* \(and 1 more problems\)"):
        audit_labels(path, tmp_path / "two_hot.csv")
    with pytest.raises(AuditError, match=r"nope\.csv: file not found"):
        audit_labels(path, tmp_path / "nope.csv")
    with pytest.raises(ProbabilityError, match="probability file not found"):
        audit_labels(tmp_path / "nope_probs.csv", labels)
