"""Normalising a Kaggle competition's files into a keras-cxr data folder, and the download's errors."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.data.table import read_table
from keras_cxr.kaggle import KaggleError, download_competition, normalize_competition

LABELS = list(CLASS_NAMES)


def make_competition(root, cxr4_dir, with_val=True, with_test_csv=True):
    """A folder shaped like the competition's download, made of cxr4 images.

    Train images are named ``p<patient>_<k>.jpeg``; val and test are both
    numbered from 1 (as competitions number their splits), so each of their
    names also exists in the other folder. Archives nest every image folder
    once more (``train_images/train_images``). Returns ``{split: source
    frame}`` with each row's cxr4 file in ``cxr4``.
    """
    train = pd.read_csv(cxr4_dir / "train.csv")
    picked = pd.concat([train[train[c] == 1].sample(10 if c != "COVID-19" else 8, random_state=1) for c in LABELS])
    picked = picked.sample(frac=1, random_state=2).reset_index(drop=True)
    parts = {"train": picked}
    val = pd.read_csv(cxr4_dir / "val.csv")
    parts["val"] = pd.concat([val[val[c] == 1].head(3) for c in LABELS]).reset_index(drop=True)
    parts["test"] = pd.read_csv(cxr4_dir / "test.csv").head(7)
    made = {}
    for split, frame in parts.items():
        frame = frame.copy()
        frame["cxr4"] = frame["new_filename"]
        if split == "train":
            frame["new_filename"] = [f"p{pid}_{k}.jpeg" for k, pid in enumerate(frame["patient_id"])]
        else:
            frame["new_filename"] = [f"{k + 1}.jpeg" for k in range(len(frame))]
        folder = root / f"{split}_images" / f"{split}_images"
        folder.mkdir(parents=True)
        for name, source in zip(frame["new_filename"], frame["cxr4"]):
            shutil.copyfile(cxr4_dir / "images" / source, folder / name)
        made[split] = frame
    (root / "data").mkdir()
    train_csv = made["train"][["new_filename", *LABELS]]
    train_csv.to_csv(root / "data" / "train_data.csv", index=False)
    if with_val:
        made["val"][["new_filename", *LABELS]].to_csv(root / "data" / "val_data.csv", index=False)
    else:
        shutil.rmtree(root / "val_images")
        del made["val"]
    if with_test_csv:
        test = made["test"][["new_filename"]].assign(**{c: "" for c in LABELS})
        test.to_csv(root / "data" / "test_data.csv", index=False)
    pd.DataFrame({"new_filename": ["1.jpeg"], **{c: [0] for c in LABELS}}).to_csv(
        root / "sample_submission.csv", index=False)
    return made


@pytest.fixture
def competition(tmp_path, cxr4_dir):
    raw = tmp_path / "raw"
    return raw, make_competition(raw, cxr4_dir)


def same_bytes(table, frame, cxr4_dir):
    source = dict(zip(frame["new_filename"], frame["cxr4"]))
    return all(open(p, "rb").read() == (cxr4_dir / "images" / source[f]).read_bytes()
               for f, p in zip(table.filenames, table.paths))


def test_given_split_is_kept_and_every_row_finds_its_own_image(competition, tmp_path, cxr4_dir):
    raw, made = competition
    data = normalize_competition(raw, tmp_path / "data", competition="cxr-multi-label-classification")
    assert data.split == "given"
    train = read_table(tmp_path / "data" / "train.csv", labels="required")
    val = read_table(tmp_path / "data" / "val.csv", labels="required")
    test = read_table(tmp_path / "data" / "test.csv")
    assert list(train.filenames) == list(made["train"]["new_filename"])
    np.testing.assert_array_equal(train.labels, made["train"][LABELS].to_numpy())
    np.testing.assert_array_equal(val.labels, made["val"][LABELS].to_numpy())
    assert test.labels is None and list(test.filenames) == [f"{k}.jpeg" for k in range(1, 8)]
    # val and test are both numbered 1..: each must read its own folder's image.
    assert same_bytes(val, made["val"], cxr4_dir) and same_bytes(test, made["test"], cxr4_dir)
    assert same_bytes(train, made["train"], cxr4_dir)
    assert all(os.sep + os.path.join("test_images", "test_images") in p for p in test.paths)
    assert data.counts == {"train": {"rows": 38, "normal": 10, "bacteria": 10, "virus": 10, "COVID-19": 8},
                           "val": {"rows": 12, "normal": 3, "bacteria": 3, "virus": 3, "COVID-19": 3},
                           "test": {"rows": 7}}
    record = json.loads((tmp_path / "data" / "download.json").read_text())
    assert record["competition"] == "cxr-multi-label-classification"
    assert record["sources"]["train"] == os.path.join("..", "raw", "data", "train_data.csv")
    assert "sample_submission" not in json.dumps(record)


def test_split_again_by_patient_keeps_patients_apart(competition, tmp_path):
    raw, made = competition
    data = normalize_competition(raw, tmp_path / "data", val_fraction=0.25, group_regex=r"^(p\d+|\d+)[_.]", seed=3)
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    val = pd.read_csv(tmp_path / "data" / "val.csv")
    assert len(train) + len(val) == 38 + 12
    patients = lambda frame: {g for g in frame["group"] if g.startswith("p")}  # noqa: E731
    assert not patients(train) & patients(val)
    # Stratified: every class in val, about a quarter of each.
    for name in LABELS:
        total = train[name].sum() + val[name].sum()
        assert 1 <= val[name].sum() <= total // 2
    assert "by filename pattern" in data.split and "seed 3" in data.split
    again = normalize_competition(raw, tmp_path / "again", val_fraction=0.25, group_regex=r"^(p\d+|\d+)[_.]", seed=3)
    assert again.counts == data.counts
    assert list(pd.read_csv(tmp_path / "again" / "val.csv")["new_filename"]) == list(val["new_filename"])


def test_group_column_split_and_missing_val_csv(tmp_path, cxr4_dir):
    raw = tmp_path / "raw"
    made = make_competition(raw, cxr4_dir, with_val=False)
    frame = pd.read_csv(raw / "data" / "train_data.csv")
    frame["patient_id"] = made["train"]["patient_id"].to_numpy()
    frame.to_csv(raw / "data" / "train_data.csv", index=False)
    with pytest.raises(KaggleError, match=r"cannot split off 0.1 for val \(1 of 10 folds\): cannot make 10 folds: "
                                          r"class 'COVID-19' is in only 8 group\(s\).*a larger val_fraction"):
        normalize_competition(raw, tmp_path / "data", group_by="patient_id")
    data = normalize_competition(raw, tmp_path / "data", group_by="patient_id", val_fraction=0.25)
    val = pd.read_csv(tmp_path / "data" / "val.csv")
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    assert not set(train["patient_id"]) & set(val["patient_id"])
    assert "1/4 of train split off, by 'patient_id'" in data.split
    assert len(train) + len(val) == 38


def test_a_test_folder_without_csv_is_listed(tmp_path, cxr4_dir):
    raw = tmp_path / "raw"
    make_competition(raw, cxr4_dir, with_test_csv=False)
    normalize_competition(raw, tmp_path / "data")
    test = read_table(tmp_path / "data" / "test.csv")
    assert test.labels is None and sorted(test.filenames) == sorted(f"{k}.jpeg" for k in range(1, 8))


@pytest.mark.parametrize("case, message", [
    ("no_train", "no training CSV (a file named *train*.csv); CSVs found: 'sample_submission.csv', 'data/val_data.csv', 'data/test_data.csv'"),
    ("missing_image", "train_data.csv: 1 of its 38 images are in no folder of the download ('p"),
    ("two_train", "2 train CSVs, cannot tell which to use"),
    ("group_column_missing", "train_data.csv line 1: no group column 'patient_id' (columns: 'new_filename', "),
    ("bad_fraction", "val_fraction must be a fraction in (0, 0.5], got 0.8"),
    ("missing_column", "val_data.csv line 1: missing column(s) 'COVID-19'"),
])
def test_bad_downloads_are_named(competition, tmp_path, case, message):
    raw, made = competition
    options = {}
    if case == "no_train":
        os.remove(raw / "data" / "train_data.csv")
    elif case == "missing_image":
        os.remove(raw / "train_images" / "train_images" / made["train"]["new_filename"][5])
    elif case == "two_train":
        shutil.copyfile(raw / "data" / "train_data.csv", raw / "train_extra.csv")
    elif case == "group_column_missing":
        options["group_by"] = "patient_id"
    elif case == "bad_fraction":
        options["val_fraction"] = 0.8
    elif case == "missing_column":
        pd.read_csv(raw / "data" / "val_data.csv").drop(columns="COVID-19").to_csv(raw / "data" / "val_data.csv")
    with pytest.raises(KaggleError) as error:
        normalize_competition(raw, tmp_path / "data", **options)
    assert message in str(error.value)
    assert not (tmp_path / "data" / "train.csv").exists()


def test_earlier_output_is_kept_unless_overwrite(competition, tmp_path):
    raw, _ = competition
    normalize_competition(raw, tmp_path / "data")
    before = (tmp_path / "data" / "val.csv").read_bytes()
    with pytest.raises(KaggleError, match=r"already holds train.csv, val.csv, test.csv, download.json; "
                                          r"pass overwrite=True"):
        normalize_competition(raw, tmp_path / "data", val_fraction=0.5)
    assert (tmp_path / "data" / "val.csv").read_bytes() == before
    normalize_competition(raw, tmp_path / "data", val_fraction=0.5, overwrite=True)
    assert (tmp_path / "data" / "val.csv").read_bytes() != before


def test_the_competitions_own_csv_is_never_replaced(tmp_path, cxr4_dir):
    raw = tmp_path / "raw"
    make_competition(raw, cxr4_dir)
    os.replace(raw / "data" / "train_data.csv", raw / "train.csv")
    with pytest.raises(KaggleError, match="would replace the competition's own"):
        normalize_competition(raw, raw, overwrite=True)


def test_download_without_credentials_says_how_to_set_them(tmp_path, monkeypatch):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    with pytest.raises(KaggleError, match=r"^Kaggle credentials not found: set KAGGLE_API_TOKEN"):
        download_competition("cxr-multi-label-classification", tmp_path / "data")


def test_download_without_network_points_to_the_offline_route(tmp_path, monkeypatch):
    import kagglehub
    import requests

    def offline(handle, output_dir=None):
        raise requests.ConnectionError("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded "
                                       "(Caused by NameResolutionError(\"Failed to resolve 'api.kaggle.com'\"))")

    monkeypatch.setattr(kagglehub, "competition_download", offline)
    with pytest.raises(KaggleError) as error:
        download_competition("cxr-multi-label-classification", tmp_path / "data")
    assert str(error.value) == ("cannot reach Kaggle (cannot resolve api.kaggle.com); download the "
                                "competition's files by hand and normalise them with raw_dir DIR")
    assert error.value.render({"raw_dir": "--from"}).endswith("normalise them with --from DIR")


def test_download_normalises_what_kagglehub_fetched(tmp_path, monkeypatch, cxr4_dir):
    import kagglehub

    calls = []

    def fetched(handle, output_dir=None):
        calls.append((handle, output_dir))
        make_competition(tmp_path / "kaggle-files", cxr4_dir)
        shutil.copytree(tmp_path / "kaggle-files", output_dir)
        return output_dir

    monkeypatch.setattr(kagglehub, "competition_download", fetched)
    data = download_competition("cxr-multi-label-classification", tmp_path / "data")
    assert calls == [("cxr-multi-label-classification", str(tmp_path / "data" / "raw"))]
    assert data.counts["test"] == {"rows": 7} and data.split == "given"
    assert read_table(tmp_path / "data" / "train.csv", labels="required").paths[0].startswith(
        str(tmp_path / "data" / "raw" / "train_images"))
