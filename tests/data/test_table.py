import os

import numpy as np
import pytest

from keras_cxr.data.table import Table, TableError, read_table

HEADER = "new_filename,normal,bacteria,virus,COVID-19,patient_id"


def write_csv(folder, lines, name="train.csv", images=None, images_dir="images"):
    """Write a CSV and touch image files (default: every filename in column 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    if images is None:
        images = [line.split(",")[0] for line in lines[1:] if line.split(",")[0]]
    (folder / images_dir).mkdir(exist_ok=True)
    for filename in images:
        (folder / images_dir / filename).write_bytes(b"x")
    return path


def problems_of(excinfo):
    return excinfo.value.problems


# --- real data ---------------------------------------------------------------


def test_real_splits(cxr4_dir):
    train = read_table(cxr4_dir / "train.csv", labels="required")
    val = read_table(cxr4_dir / "val.csv", labels="required")
    test = read_table(cxr4_dir / "test.csv", labels="ignore")
    assert (len(train), len(val), len(test)) == (1439, 311, 310)
    assert train.class_counts.tolist() == [370, 640, 348, 81]
    assert val.class_counts.tolist() == [80, 139, 74, 18]
    assert train.class_names == ("normal", "bacteria", "virus", "COVID-19")
    assert train.labels.dtype == np.float32 and train.labels.shape == (1439, 4)
    assert np.all(train.labels.sum(axis=1) == 1)
    assert train.filenames[:2] == ("2.jpeg", "3.jpeg")
    assert train.paths[0] == str(cxr4_dir / "images" / "2.jpeg")
    assert train.labels[1].tolist() == [0, 0, 1, 0]  # 3.jpeg is virus
    assert not test.is_labeled and test.labels is None and test.sample_weight is None
    # The sample's test CSV happens to carry labels: "auto" reads them.
    assert read_table(cxr4_dir / "test.csv").is_labeled


# --- valid tables ------------------------------------------------------------


def test_labeled_table_with_weights_extra_columns_and_blank_line(tmp_path):
    path = write_csv(
        tmp_path,
        [
            "new_filename,normal,bacteria,virus,COVID-19,sample_weight,notes",
            "a.png,1,0,0,0,0.5,x",
            "",
            "b.png, 0 ,0,0,1.0,2,y",
        ],
    )
    table = read_table(path)
    assert table.filenames == ("a.png", "b.png")
    assert table.labels.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    assert table.sample_weight.tolist() == [0.5, 2.0]
    assert table.class_ids.tolist() == [0, 3]
    assert table.class_counts.tolist() == [1, 0, 0, 1]
    assert table.paths == (str(tmp_path / "images" / "a.png"), str(tmp_path / "images" / "b.png"))


def test_unlabeled_auto_and_filename_only_csv(tmp_path):
    path = write_csv(tmp_path, [HEADER, "a.png,,,,,7", "b.png,,,,,8"])
    table = read_table(path)
    assert not table.is_labeled and len(table) == 2
    with pytest.raises(ValueError, match="unlabeled"):
        table.class_ids
    only_names = write_csv(tmp_path, ["new_filename", "a.png"], name="test.csv")
    assert read_table(only_names).labels is None


def test_ignore_mode_skips_bad_labels(tmp_path):
    path = write_csv(tmp_path, [HEADER, "a.png,1,1,0,0,1", "b.png,x,,,,2"])
    table = read_table(path, labels="ignore")
    assert table.labels is None and table.filenames == ("a.png", "b.png")


def test_images_dir_relative_to_cwd_and_source_dir_relative_to_csv(tmp_path, monkeypatch):
    write_csv(tmp_path / "pics", ["new_filename", "a.png"], name="unused.csv", images_dir=".")
    path = write_csv(tmp_path / "csvs", [HEADER, "a.png,0,1,0,0,1"], images=[])
    monkeypatch.chdir(tmp_path)
    table = read_table(path, images_dir="pics")
    assert table.paths == (str(tmp_path / "pics" / "a.png"),)

    (tmp_path / "csvs" / "fold_train").mkdir()
    (tmp_path / "csvs" / "fold_train" / "b.png").write_bytes(b"x")
    mixed = write_csv(
        tmp_path / "csvs",
        ["new_filename,normal,bacteria,virus,COVID-19,source_dir", "b.png,1,0,0,0,fold_train", f"a.png,1,0,0,0,{tmp_path / 'pics'}"],
        name="fold.csv",
        images=[],
    )
    table = read_table(mixed)
    assert table.paths == (str(tmp_path / "csvs" / "fold_train" / "b.png"), str(tmp_path / "pics" / "a.png"))


def test_check_files_false_allows_missing_images(tmp_path):
    path = write_csv(tmp_path, [HEADER, "gone.png,1,0,0,0,1"], images=[])
    assert len(read_table(path, check_files=False)) == 1
    with pytest.raises(TableError, match="line 2: image not found"):
        read_table(path)


# --- errors ------------------------------------------------------------------


def test_every_row_problem_is_listed_with_its_line(tmp_path):
    path = write_csv(
        tmp_path,
        [
            "new_filename,normal,bacteria,virus,COVID-19,sample_weight",
            "ok.png,1,0,0,0,1",  # line 2
            "nan.png,abc,0,0,0,1",  # 3
            "soft.png,0.5,0.5,0,0,1",  # 4
            "two.png,1,0,1,0,1",  # 5
            "zero.png,0,0,0,0,1",  # 6
            "part.png,1,,0,,1",  # 7
            "ok.png,0,1,0,0,1",  # 8: duplicate of line 2
            "w.png,0,1,0,0,-1",  # 9
            "w2.png,0,1,0,0,inf",  # 10
            ",0,1,0,0,1",  # 11
        ],
        images=["ok.png", "nan.png", "soft.png", "two.png", "zero.png", "part.png", "w.png"],
    )
    with pytest.raises(TableError) as e:
        read_table(path)
    assert problems_of(e) == [
        "train.csv line 3: label cell normal='abc' is not a number",
        "train.csv line 4: label cell normal=0.5 is not 0 or 1 (CSV labels must be one-hot)",
        "train.csv line 4: label cell bacteria=0.5 is not 0 or 1 (CSV labels must be one-hot)",
        "train.csv line 5: label cells are not one-hot (normal=1, virus=1)",
        "train.csv line 6: label cells are not one-hot (all zeros)",
        "train.csv line 7: label cells partly empty (bacteria, COVID-19 empty)",
        "train.csv line 8: duplicate image 'ok.png' (also on line 2)",
        "train.csv line 9: sample_weight '-1' is not a finite number >= 0",
        "train.csv line 10: sample_weight 'inf' is not a finite number >= 0",
        "train.csv line 11: empty filename",
        f"train.csv line 10: image not found: {tmp_path / 'images' / 'w2.png'}",
    ]
    assert str(e.value).startswith("11 problems in the table:\n")
    assert str(e.value).count("\n  train.csv line ") == 11


def test_missing_columns_are_named_with_the_columns_found(tmp_path):
    path = write_csv(tmp_path, ["file,normal,virus", "a.png,1,0"], images=[])
    with pytest.raises(TableError) as e:
        read_table(path, labels="required")
    assert problems_of(e) == [
        "train.csv line 1: missing column(s) 'new_filename', 'bacteria', 'COVID-19' "
        "(columns found: 'file', 'normal', 'virus')"
    ]
    # "auto" with some class columns present still wants all of them.
    with pytest.raises(TableError, match="'bacteria', 'COVID-19'"):
        read_table(path, filename_column="file")


def test_mixed_labeled_and_unlabeled_rows(tmp_path):
    path = write_csv(tmp_path, [HEADER, "a.png,1,0,0,0,1", "b.png,,,,,2", "c.png,,,,,3"])
    with pytest.raises(TableError) as e:
        read_table(path)
    assert problems_of(e) == [
        "train.csv line 3: label cells are empty, but other rows are labeled",
        "train.csv line 4: label cells are empty, but other rows are labeled",
    ]


def test_required_labels_on_an_unlabeled_table(tmp_path):
    path = write_csv(tmp_path, [HEADER, "a.png,,,,,1"])
    with pytest.raises(TableError, match="every label cell is empty, but this table must be labeled"):
        read_table(path, labels="required")


def test_missing_images_are_capped(tmp_path):
    lines = [HEADER] + [f"{i}.png,1,0,0,0,{i}" for i in range(25)]
    path = write_csv(tmp_path, lines, images=[])
    with pytest.raises(TableError) as e:
        read_table(path)
    problems = problems_of(e)
    assert len(problems) == 21
    assert problems[0] == f"train.csv line 2: image not found: {tmp_path / 'images' / '0.png'}"
    assert problems[-1].startswith("train.csv: ... and 5 more missing images")


@pytest.mark.parametrize(
    "content, message",
    [(None, "file not found"), ("", "file is empty"), (HEADER + "\n", "has a header but no data rows")],
)
def test_unusable_files(tmp_path, content, message):
    path = tmp_path / "train.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TableError, match=message):
        read_table(path)


def test_bad_labels_argument(tmp_path):
    with pytest.raises(ValueError, match="labels must be one of"):
        read_table(tmp_path / "x.csv", labels="yes")


# --- Table -------------------------------------------------------------------


def make_table(name, labels, weights=None, classes=("a", "b")):
    n = len(labels)
    return Table(
        csv_path=name,
        filenames=[f"{name}{i}.png" for i in range(n)],
        paths=[f"/{name}/{i}.png" for i in range(n)],
        labels=None if labels is None else np.eye(len(classes))[labels],
        sample_weight=weights,
        class_names=classes,
    )


def test_concat():
    a = make_table("a", [0, 1, 1])
    b = make_table("b", [0], weights=[0.5])
    joined = Table.concat([a, b])
    assert len(joined) == 4 and joined.csv_path == "a + b"
    assert joined.class_counts.tolist() == [2, 2]
    assert joined.sample_weight.tolist() == [1.0, 1.0, 1.0, 0.5]
    assert joined.filenames == ("a0.png", "a1.png", "a2.png", "b0.png")
    assert Table.concat([a, a]).sample_weight is None
    with pytest.raises(ValueError, match="classes"):
        Table.concat([a, make_table("c", [0], classes=("x", "y"))])
    with pytest.raises(ValueError, match="labeled and unlabeled"):
        Table.concat([Table(csv_path="u", filenames=["u.png"], paths=["/u.png"], labels=None,
                            sample_weight=None, class_names=("a", "b")), a])


def test_subset_and_immutability():
    table = make_table("t", [0, 1, 1, 0], weights=[1, 2, 3, 4])
    part = table.subset([2, 0])
    assert part.filenames == ("t2.png", "t0.png")
    assert part.sample_weight.tolist() == [3.0, 1.0]
    assert part.class_ids.tolist() == [1, 0]
    assert table.subset(np.array([False, True, False, True])).sample_weight.tolist() == [2.0, 4.0]
    with pytest.raises(ValueError):
        table.labels[0, 0] = 5
    with pytest.raises(AttributeError):
        table.csv_path = "other"


def test_table_checks_shapes():
    with pytest.raises(ValueError, match="labels have shape"):
        Table(csv_path="t", filenames=["a"], paths=["/a"], labels=np.zeros((1, 3)),
              sample_weight=None, class_names=("a", "b"))
    with pytest.raises(ValueError, match="sample weights"):
        make_table("t", [0], weights=[-1.0])
    assert os.path.isabs(make_table("t", [0]).paths[0])
