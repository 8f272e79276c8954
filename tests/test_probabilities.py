"""Probability files: reading with clear errors, aligning rows, submissions."""

import numpy as np
import pandas as pd
import pytest

from keras_cxr.probabilities import ProbabilityError, read_probabilities, write_probabilities, write_submission

HEADER = "new_filename,normal,bacteria,virus,COVID-19\n"


def write(tmp_path, body, header=HEADER, name="p.csv"):
    path = tmp_path / name
    path.write_text(header + body)
    return path


def test_round_trip_keeps_order_and_values(tmp_path):
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=5)
    names = [f"{i}.jpeg" for i in (5, 3, 9, 1, 2)]
    write_probabilities(tmp_path / "p.csv", names, probs)
    read = read_probabilities(tmp_path / "p.csv")
    assert read.filenames == tuple(names) and read.class_names == ("normal", "bacteria", "virus", "COVID-19")
    np.testing.assert_allclose(read.values, probs, atol=1e-12)
    aligned = read.aligned_to(sorted(names), "other.csv")
    np.testing.assert_allclose(aligned.values, probs[np.argsort(names)], atol=1e-12)


@pytest.mark.parametrize(
    "body, header, message",
    [
        ("a.jpeg,0.2,0.3,0.4,0.1\na.jpeg,0.2,0.3,0.4,0.1\n", HEADER, "p.csv line 3: duplicate filename 'a.jpeg'"),
        ("a.jpeg,0.2,0.3,nan,0.1\n", HEADER, "p.csv line 2: virus='nan' is not a finite number"),
        ("a.jpeg,0.2,0.3,,0.5\n", HEADER, "p.csv line 2: virus='' is not a finite number"),
        ("a.jpeg,0.2,0.3,high,0.1\n", HEADER, "virus='high' is not a finite number"),
        ("a.jpeg,0.5,0.3,0.4,0.1\nb.jpeg,0.5,0.3,0.4,0.1\n", HEADER,
         "p.csv line 2: probabilities sum to 1.3, not 1 (2 row(s) like this"),
        ("a.jpeg,2.0,-1.0,0.0,0.0\n", HEADER, "p.csv line 2: normal=2 is outside [0, 1]"),
        ("a.jpeg,0.5,0.5\n", "new_filename,normal,bacteria\n", "missing class column(s) 'virus', 'COVID-19'"),
        ("a.jpeg,0.5,0.5,0,0\n", "file,normal,bacteria,virus,COVID-19\n", "p.csv line 1: no 'new_filename' column"),
        ("", HEADER, "p.csv: has a header but no rows"),
        (",0.2,0.3,0.4,0.1\n", HEADER, "p.csv line 2: empty filename"),
    ],
)
def test_bad_files_name_the_line(tmp_path, body, header, message):
    path = write(tmp_path, body, header)
    with pytest.raises(ProbabilityError) as error:
        read_probabilities(path, class_names=("normal", "bacteria", "virus", "COVID-19"))
    assert message in str(error.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(ProbabilityError, match="probability file not found"):
        read_probabilities(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ProbabilityError, match="empty.csv: file is empty"):
        read_probabilities(tmp_path / "empty.csv")


def test_rows_are_renormalised_within_tolerance(tmp_path):
    path = write(tmp_path, "a.jpeg,0.2,0.3,0.4,0.1004\n")
    np.testing.assert_allclose(read_probabilities(path).values.sum(axis=1), 1.0)


def test_alignment_names_missing_and_extra_rows(tmp_path):
    path = write(tmp_path, "a.jpeg,0.25,0.25,0.25,0.25\nb.jpeg,0.25,0.25,0.25,0.25\n")
    probs = read_probabilities(path)
    with pytest.raises(ProbabilityError, match=r"1 row\(s\) of labels.csv are not in .*p.csv \('c.jpeg'\); "
                                               r"1 row\(s\) of .*p.csv are not in labels.csv \('b.jpeg'\)"):
        probs.aligned_to(["a.jpeg", "c.jpeg"], "labels.csv")


def test_submission_is_one_hot_in_the_given_order(tmp_path):
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.05, 0.03, 0.02], [0.2, 0.5, 0.2, 0.1]])
    write_submission(tmp_path / "s.csv", ["z.jpeg", "a.jpeg", "m.jpeg"], probs)
    frame = pd.read_csv(tmp_path / "s.csv")
    assert list(frame.new_filename) == ["z.jpeg", "a.jpeg", "m.jpeg"]
    assert frame.iloc[:, 1:].to_numpy().tolist() == [[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]]
    assert (tmp_path / "s.csv").read_text().splitlines()[1] == "z.jpeg,0,0,0,1"
