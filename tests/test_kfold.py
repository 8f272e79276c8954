import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from keras_cxr import CLASS_NAMES
from keras_cxr.data.table import TableError, read_table
from keras_cxr.kfold import NO_GROUPS_WARNING, FoldError, gather_oof, make_folds
from keras_cxr.probabilities import read_probabilities, write_probabilities

HEADER = "new_filename,normal,bacteria,virus,COVID-19,patient_id"
ONE_HOT = {name: ",".join("1" if n == name else "0" for n in CLASS_NAMES) for name in CLASS_NAMES}


def write_png(path, seed):
    """A tiny PNG whose pixels (and so bytes) differ for every seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.array([[seed % 256, seed // 256 % 256], [7, 9]], dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_table(folder, rows, name="train.csv", header=HEADER, first_seed=0):
    """Write `folder/name` with `rows` (filename, class, *extra cells) and their images."""
    lines = [header] + [",".join([f, ONE_HOT[c], *extra]) for f, c, *extra in rows]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")
    for i, (filename, *_) in enumerate(rows):
        write_png(folder / "images" / filename, first_seed + i)
    return folder / name


def patient_rows(patients=4, per_patient=2):
    """Rows named like person3_virus_7.jpeg: `patients` patients per class."""
    rows, n = [], 0
    for c, name in enumerate(CLASS_NAMES):
        for p in range(patients):
            person = c * 100 + p
            for _ in range(per_patient):
                n += 1
                rows.append((f"person{person}_{name}_{n}.png", name, str(person)))
    return rows


def read_bytes(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))}


# --- make_folds on the real data -------------------------------------------


def test_real_folds_group_patients_and_balance_classes(cxr4_dir, tmp_path):
    out = tmp_path / "folds"
    csvs = [cxr4_dir / "train.csv", cxr4_dir / "val.csv"]
    summary = make_folds(csvs, out, folds=5, seed=42, group_by="patient_id")
    assert summary.attrs["warning"] is None
    print("\n" + summary.to_string(index=False))

    folds = pd.read_csv(out / "folds.csv", dtype={"patient_id": str, "group": str})
    inputs = pd.concat([pd.read_csv(c, dtype={"patient_id": str}) for c in csvs], ignore_index=True)
    assert len(folds) == 1750
    assert folds["new_filename"].tolist() == inputs["new_filename"].tolist()  # input order
    assert folds[list(CLASS_NAMES)].equals(inputs[list(CLASS_NAMES)])
    assert (folds["group"] == folds["patient_id"]).all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds["source_csv"].iloc[0].endswith("train.csv") and folds["source_line"].iloc[0] == 2
    # No patient in two folds.
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1

    val_sets = []
    for k in range(5):
        train = read_table(out / f"fold{k}_train.csv", labels="required")  # check_files=True
        val = read_table(out / f"fold{k}_val.csv", labels="required")
        assert os.path.isfile(val.paths[0]) and val.paths[0].startswith(str(cxr4_dir / "images"))
        assert not set(train.filenames) & set(val.filenames)
        assert set(train.filenames) | set(val.filenames) == set(folds["new_filename"])
        assert val.filenames == tuple(folds.loc[folds["fold"] == k, "new_filename"])
        val_patients = set(pd.read_csv(out / f"fold{k}_val.csv", dtype={"patient_id": str})["patient_id"])
        train_patients = set(pd.read_csv(out / f"fold{k}_train.csv", dtype={"patient_id": str})["patient_id"])
        assert not val_patients & train_patients
        val_sets.append(set(val.filenames))
        counts = val.class_counts
        print(f"fold {k} val counts: {dict(zip(CLASS_NAMES, counts.tolist()))}")
        even = (inputs[list(CLASS_NAMES)].sum().to_numpy()) / 5
        assert np.all(np.abs(counts - even) <= 2), (k, counts, even)
        row = summary[(summary["fold"] == k) & (summary["split"] == "val")].iloc[0]
        assert row[list(CLASS_NAMES)].tolist() == counts.tolist() and row["total"] == len(val)
        assert row["groups"] == len(val_patients)
    # Every row in exactly one val fold.
    assert sum(len(s) for s in val_sets) == 1750 and len(set().union(*val_sets)) == 1750

    # folds.csv is a labeled table on its own, its source_dir relative to out.
    table = read_table(out / "folds.csv", labels="required")
    assert table.class_counts.tolist() == [450, 779, 422, 99]
    assert pd.read_csv(out / "summary.csv").equals(summary)
    settings = json.loads((out / "folds.json").read_text())
    assert settings["csv_paths"] == [str(c) for c in csvs]
    assert settings["folds"] == 5 and settings["seed"] == 42
    assert settings["group_by"] == "patient_id" and settings["warning"] is None


def test_real_folds_are_deterministic(cxr4_dir, tmp_path):
    csvs = [cxr4_dir / "train.csv", cxr4_dir / "val.csv"]
    make_folds(csvs, tmp_path / "a" / "folds", group_by="patient_id")
    make_folds(csvs, tmp_path / "b" / "folds", group_by="patient_id")
    first = read_bytes(tmp_path / "a" / "folds")
    assert len(first) == 13  # 10 fold CSVs, folds.csv, summary.csv, folds.json
    assert first == read_bytes(tmp_path / "b" / "folds")
    make_folds(csvs, tmp_path / "c" / "folds", group_by="patient_id", seed=7)
    assert read_bytes(tmp_path / "c" / "folds")["folds.csv"] != first["folds.csv"]


# --- groups ------------------------------------------------------------------


def test_group_regex_keeps_each_person_in_one_fold(tmp_path):
    rows = [(f, c) for f, c, _ in patient_rows(patients=3, per_patient=3)]
    csv = write_table(tmp_path / "data", rows, header="new_filename,normal,bacteria,virus,COVID-19")
    summary = make_folds(csv, tmp_path / "folds", folds=3, group_regex=r"(person\d+)_")
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv")
    assert folds["group"].tolist() == [f.split("_")[0] for f, _ in rows]
    assert folds.groupby("group")["fold"].nunique().max() == 1
    assert summary["groups"].tolist() == [8, 4] * 3  # 12 persons, 4 per val fold
    assert (summary.loc[summary["split"] == "val", list(CLASS_NAMES)] == 3).all().all()
    assert json.loads((tmp_path / "folds" / "folds.json").read_text())["group_regex"] == r"(person\d+)_"

    # Without a capture group, the whole match is the group.
    make_folds(csv, tmp_path / "whole", folds=3, group_regex=r"person\d+")
    assert pd.read_csv(tmp_path / "whole" / "folds.csv")["group"].tolist() == folds["group"].tolist()


def test_group_regex_errors_name_rows(tmp_path):
    rows = [(f, c) for f, c, _ in patient_rows(patients=3, per_patient=1)] + [("odd.png", "normal")]
    csv = write_table(tmp_path, rows, header="new_filename,normal,bacteria,virus,COVID-19")
    with pytest.raises(FoldError, match=r"train.csv line 14: group regex .* finds no group in 'odd.png'"):
        make_folds(csv, tmp_path / "folds", folds=3, group_regex=r"(person\d+)")
    with pytest.raises(FoldError, match=r"invalid group regex '\(person'"):
        make_folds(csv, tmp_path / "folds", folds=3, group_regex=r"(person")
    with pytest.raises(FoldError, match="not both"):
        make_folds(csv, tmp_path / "folds", group_by="patient_id", group_regex="x")
    assert not (tmp_path / "folds").exists()


def test_group_by_column_errors(tmp_path):
    rows = patient_rows(patients=3, per_patient=1)
    rows[4] = (rows[4][0], rows[4][1], "")
    csv = write_table(tmp_path, rows)
    with pytest.raises(FoldError, match=r"train.csv line 6: empty 'patient_id' cell"):
        make_folds(csv, tmp_path / "folds", folds=3, group_by="patient_id")
    with pytest.raises(FoldError) as excinfo:
        make_folds(csv, tmp_path / "folds", folds=3, group_by="patient")
    assert "train.csv line 1: no group column 'patient'" in str(excinfo.value)
    assert "'new_filename', 'normal', 'bacteria', 'virus', 'COVID-19', 'patient_id'" in str(excinfo.value)


def test_no_groups_warns_and_each_image_is_a_group(tmp_path):
    csv = write_table(tmp_path, patient_rows(patients=2, per_patient=2))
    summary = make_folds(csv, tmp_path / "folds", folds=2)
    warning = str(summary.attrs["warning"])
    assert warning.startswith(NO_GROUPS_WARNING) and "group_by 'patient_id'" in warning
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv")
    assert folds["group"].tolist() == folds["new_filename"].tolist()
    assert json.loads((tmp_path / "folds" / "folds.json").read_text())["warning"] == warning


# --- leakage guards and other errors -----------------------------------------


def test_same_filename_in_two_csvs_is_refused(tmp_path):
    rows = patient_rows(patients=3, per_patient=1)
    a = write_table(tmp_path / "a", rows)
    b = write_table(tmp_path / "b", [rows[5]], name="val.csv", first_seed=500)
    with pytest.raises(FoldError) as excinfo:
        make_folds([a, b], tmp_path / "folds", folds=3, group_by="patient_id")
    message = str(excinfo.value)
    assert "leak" in message
    assert f"filename {rows[5][0]!r} is on {a} line 7 and on {b} line 2" in message


def test_same_image_path_twice_is_refused(tmp_path):
    rows = patient_rows(patients=3, per_patient=1)
    a = write_table(tmp_path, rows)
    b = write_table(tmp_path, [("./" + rows[0][0], *rows[0][1:])], name="val.csv")
    write_png(tmp_path / "images" / rows[0][0], 0)  # write_table overwrote it
    with pytest.raises(FoldError) as excinfo:
        make_folds([a, b], tmp_path / "folds", folds=3, group_by="patient_id")
    image = tmp_path / "images" / rows[0][0]
    assert f"image {image} is on {a} line 2 and on {b} line 2" in str(excinfo.value)


def test_byte_identical_images_are_refused(tmp_path):
    rows = patient_rows(patients=3, per_patient=1)
    rows += [("copy1.png", "virus", "900"), ("copy2.png", "normal", "901")]
    csv = write_table(tmp_path, rows)
    for name in ("copy1.png", "copy2.png"):
        (tmp_path / "images" / name).write_bytes((tmp_path / "images" / rows[0][0]).read_bytes())
    with pytest.raises(FoldError) as excinfo:
        make_folds(csv, tmp_path / "folds", folds=3, group_by="patient_id")
    message = str(excinfo.value)
    assert f"{rows[0][0]!r} ({csv} line 2) and 'copy1.png' ({csv} line 14) are byte-identical" in message
    assert f"{rows[0][0]!r} ({csv} line 2) and 'copy2.png' ({csv} line 15) are byte-identical" in message


def test_more_than_five_pairs_are_counted(tmp_path):
    rows = patient_rows(patients=3, per_patient=1)
    rows += [(f"copy{i}.png", "virus", "900") for i in range(7)]
    csv = write_table(tmp_path, rows)
    for i in range(7):
        (tmp_path / "images" / f"copy{i}.png").write_bytes(b"same")
    with pytest.raises(FoldError, match=r"\.\.\. and 1 more byte-identical pairs"):
        make_folds(csv, tmp_path / "folds", folds=3, group_by="patient_id")


def test_too_many_folds_names_the_rarest_class(tmp_path):
    rows = patient_rows(patients=3, per_patient=2)
    rows = [r for r in rows if not (r[1] == "COVID-19" and r[2] == "302")]  # COVID-19: 2 patients
    csv = write_table(tmp_path, rows)
    with pytest.raises(FoldError, match=r"cannot make 3 folds: class 'COVID-19' is in only 2 group\(s\)"):
        make_folds(csv, tmp_path / "folds", folds=3, group_by="patient_id")
    with pytest.raises(FoldError, match="folds must be an integer >= 2, got 1"):
        make_folds(csv, tmp_path / "folds", folds=1, group_by="patient_id")
    make_folds(csv, tmp_path / "folds", folds=2, group_by="patient_id")


def test_invalid_input_table_raises_table_error(tmp_path):
    csv = write_table(tmp_path, patient_rows(patients=3, per_patient=1))
    (tmp_path / "images" / "person0_normal_1.png").unlink()
    with pytest.raises(TableError, match="train.csv line 2: image not found"):
        make_folds(csv, tmp_path / "folds", folds=3)


def test_source_dir_sample_weight_and_extra_columns_are_kept(tmp_path):
    rows = patient_rows(patients=3, per_patient=1)
    a = write_table(tmp_path / "a", [(*r, "0.5", "scan") for r in rows[:6]],
                    header=HEADER + ",sample_weight,notes")
    # b lists its images with source_dir (relative to b's folder), no sample_weight.
    b = write_table(tmp_path / "b", [(*r, "../pics") for r in rows[6:]], header=HEADER + ",source_dir",
                    first_seed=6)
    os.rename(tmp_path / "b" / "images", tmp_path / "pics")
    out = tmp_path / "deep" / "folds"
    make_folds([a, b], out, folds=3, group_by="patient_id")
    folds = pd.read_csv(out / "folds.csv", dtype=str, keep_default_na=False)
    assert list(folds.columns) == [
        "new_filename", *CLASS_NAMES, "source_dir", "group", "fold",
        "patient_id", "sample_weight", "notes", "source_csv", "source_line",
    ]
    assert folds["source_dir"].tolist() == ["../../a/images"] * 6 + ["../../pics"] * 6
    assert folds["sample_weight"].tolist() == ["0.5"] * 6 + ["1"] * 6
    assert folds["notes"].tolist() == ["scan"] * 6 + [""] * 6
    assert folds["source_csv"].tolist() == ["../../a/train.csv"] * 6 + ["../../b/train.csv"] * 6
    table = read_table(out / "folds.csv", labels="required")  # images found
    assert table.sample_weight.tolist() == [0.5] * 6 + [1.0] * 6
    val = pd.read_csv(out / "fold0_val.csv")
    assert list(val.columns) == [
        "new_filename", *CLASS_NAMES, "source_dir", "group", "patient_id", "sample_weight", "notes",
    ]
    # Fewer folds into the same folder removes the old extra fold files.
    make_folds([a, b], out, folds=2, group_by="patient_id")
    assert sorted(p for p in os.listdir(out) if p.startswith("fold2")) == []


# --- gather_oof --------------------------------------------------------------


@pytest.fixture
def folds_dir(tmp_path):
    csv = write_table(tmp_path / "data", patient_rows(patients=3, per_patient=2))
    make_folds(csv, tmp_path / "folds", folds=3, group_by="patient_id")
    return tmp_path / "folds"


def fake_run(run_dir, folds_dir, fold, filenames=None, seed=0):
    """A finished `fit` run directory of `fold`: recipe.json and val_probs.csv."""
    if filenames is None:
        filenames = pd.read_csv(folds_dir / f"fold{fold}_val.csv")["new_filename"].tolist()
    probs = np.random.default_rng(seed).dirichlet(np.ones(len(CLASS_NAMES)), size=len(filenames))
    write_probabilities(run_dir / "val_probs.csv", filenames, probs)
    data = {"data_dir": str(folds_dir), "train_csv": f"fold{fold}_train.csv", "val_csv": f"fold{fold}_val.csv"}
    (run_dir / "recipe.json").write_text(json.dumps({"data": data, "model": {"name": "x"}}))
    return run_dir


def test_gather_oof_rows_follow_folds_csv(folds_dir, tmp_path):
    runs = [fake_run(tmp_path / f"run{k}", folds_dir, k, seed=k) for k in (2, 0, 1)]
    oof = gather_oof(runs, tmp_path / "oof.csv")
    labels = read_table(folds_dir / "folds.csv", labels="required", check_files=False)
    assert oof.filenames == labels.filenames and len(oof) == 24
    assert oof.class_names == CLASS_NAMES
    for run in runs:
        probs = read_probabilities(run / "val_probs.csv")
        index = [oof.filenames.index(f) for f in probs.filenames]
        np.testing.assert_allclose(oof.values[index], probs.values, rtol=1e-6)
    written = read_probabilities(tmp_path / "oof.csv")
    assert written.filenames == oof.filenames
    np.testing.assert_allclose(written.values, oof.values, rtol=1e-6)
    # folds_dir given explicitly, no file written.
    assert gather_oof(runs, folds_dir=folds_dir).filenames == oof.filenames


def test_gather_oof_missing_and_duplicate_folds(folds_dir, tmp_path):
    run0 = fake_run(tmp_path / "run0", folds_dir, 0)
    with pytest.raises(FoldError, match="folds 1, 2 have no run: every labeled row must be covered once"):
        gather_oof([run0], tmp_path / "oof.csv")
    assert not (tmp_path / "oof.csv").exists()
    again = fake_run(tmp_path / "again", folds_dir, 0, seed=3)
    with pytest.raises(FoldError, match=f"{run0} and {again} are both runs of fold 0"):
        gather_oof([run0, again, fake_run(tmp_path / "run1", folds_dir, 1)])


def test_gather_oof_run_errors_name_the_run(folds_dir, tmp_path):
    run0, run1 = (fake_run(tmp_path / f"run{k}", folds_dir, k) for k in (0, 1))
    run2 = fake_run(tmp_path / "run2", folds_dir, 2)

    (run2 / "val_probs.csv").unlink()
    with pytest.raises(FoldError, match=f"{run2}: no val_probs.csv"):
        gather_oof([run0, run1, run2])

    # One of fold 1's rows is missing from the run and fold 0's first row is added.
    fold1 = pd.read_csv(folds_dir / "fold1_val.csv")["new_filename"].tolist()
    fold0 = pd.read_csv(folds_dir / "fold0_val.csv")["new_filename"].tolist()
    fake_run(run2, folds_dir, 2)
    fake_run(run1, folds_dir, 1, filenames=fold1[1:] + fold0[:1])
    with pytest.raises(FoldError, match=rf"{run1}: filenames in two runs: '{fold0[0]}' \(also in {run0}\)"):
        gather_oof([run0, run1, run2])
    fake_run(run1, folds_dir, 1, filenames=fold1[1:])
    with pytest.raises(FoldError, match=rf"{run1}: its val rows are not fold 1 of .*folds.csv.*{fold1[0]}"):
        gather_oof([run0, run1, run2])
    fake_run(run1, folds_dir, 1)

    recipe = json.loads((run2 / "recipe.json").read_text())
    recipe["data"].update(val_csv="val.csv", train_csv="train.csv")
    (run2 / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(FoldError, match=f"{run2}: was not trained on a fold CSV"):
        gather_oof([run0, run1, run2])
    recipe["data"].update(val_csv="fold2_val.csv", train_csv="train.csv")
    (run2 / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(FoldError, match=f"{run2}: validated on fold2_val.csv but trained on 'train.csv'"):
        gather_oof([run0, run1, run2])

    other = tmp_path / "other_folds"
    other.mkdir()
    fake_run(run2, other, 2, filenames=pd.read_csv(folds_dir / "fold2_val.csv")["new_filename"])
    with pytest.raises(FoldError, match="trained on different folds folders"):
        gather_oof([run0, run1, run2])
