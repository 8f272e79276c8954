"""`keras-cxr download`: the competition layout normalised from the command line, and its error lines."""

import pathlib

import pytest
from click.testing import CliRunner

from keras_cxr.cli import main
from tests.test_kaggle import make_competition

REPO = pathlib.Path(__file__).resolve().parents[2]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.slow
def test_a_downloaded_competition_trains(tmp_path, cxr4_dir):
    make_competition(tmp_path / "raw", cxr4_dir)
    result = run("download", "--from", tmp_path / "raw", "--out", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "train 38 (normal 10, bacteria 10, virus 10, COVID-19 8); val 12" in result.output
    assert "test 7; val: given" in result.output
    result = run("fit", REPO / "recipes" / "smoke.py", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                 "--epochs", 1, "--image-size", 32, "--batch-size", 8, "--set", "swa.start_epoch=none", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.keras").is_file()
    result = run("predict", tmp_path / "run", "--csv", tmp_path / "data" / "test.csv", "--out", tmp_path / "p.csv",
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("7 rows ->")


def test_split_options_are_worded_as_flags(tmp_path, cxr4_dir):
    make_competition(tmp_path / "raw", cxr4_dir)
    result = run("download", "--from", tmp_path / "raw", "--out", tmp_path / "data", "--group-by", "patient_id")
    assert result.exit_code == 2 and "no group column 'patient_id'" in result.output
    # A grouping alone splits train + val again, a tenth to val.
    result = run("download", "--from", tmp_path / "raw", "--out", tmp_path / "data", "--group-regex",
                 r"^(p\d+|\d+)[_.]")
    assert result.exit_code == 0, result.output
    assert "val: 1/10 of train + val split off, by filename pattern" in result.output
    result = run("download", "--from", tmp_path / "raw", "--out", tmp_path / "data", "--val-fraction", 0.25,
                 "--group-regex", r"^(p\d+|\d+)[_.]", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "val: 1/4 of train + val split off, by filename pattern" in result.output
    result = run("download", "--from", tmp_path / "raw", "--out", tmp_path / "data")
    assert result.exit_code == 2 and "pass --overwrite to replace them" in result.output


@pytest.mark.parametrize("args, message", [
    ([], "give --competition NAME to download, or --from DIR for files already downloaded"),
    (["--competition", "x", "--from", "."], "give --competition NAME to download, or --from DIR"),
    (["--from", "nowhere"], "--from "),
    (["--competition", "cxr-multi-label-classification"], "Kaggle credentials not found: set KAGGLE_API_TOKEN"),
])
def test_bad_requests_get_one_line(tmp_path, monkeypatch, args, message):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    result = run("download", *args, "--out", tmp_path / "data")
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) <= 2
