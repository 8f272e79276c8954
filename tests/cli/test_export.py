"""`keras-cxr export`, and `keras-cxr predict` on the `.onnx` it writes in a process where torch and Keras cannot load."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from keras_cxr.calibration import Calibration
from keras_cxr.constants import CLASS_NAMES
from keras_cxr.data.augment import Augmentation
from keras_cxr.probabilities import read_probabilities
from tests.cli.support import invoke, one_line_error
from tests.conftest import REPO

ROWS = 12

# Runs `keras-cxr ARGS...` with torch, Keras, TensorFlow, keras-hub and OpenCV unimportable, then prints the
# third-party packages the command loaded (a JSON list) as its last line.
TORCH_FREE = """
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "keras", "tensorflow", "keras_hub", "cv2"):
            raise ImportError(f"{name} is not installed on this machine")

sys.meta_path.insert(0, Refuse())
from keras_cxr.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
loaded = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
print(json.dumps(sorted(m for m in loaded if not m.startswith("_"))))
sys.exit(code)
"""


@pytest.fixture
def run_dir(untrained_model_file, tmp_path):
    """A run directory: the session's untrained cxr_resnet (64 px) and a temperature calibration."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(untrained_model_file.read_bytes())
    Calibration("temperature", {"temperature": 0.5}, CLASS_NAMES, ("fitted.jpeg",)).save(run / "calibration.json")
    return run


@pytest.fixture
def rows(cxr4_dir, tmp_path):
    csv = tmp_path / "rows.csv"
    pd.read_csv(cxr4_dir / "test.csv").head(ROWS).to_csv(csv, index=False)
    return csv


@pytest.mark.slow
def test_exported_onnx_predicts_without_torch_or_keras(run_dir, rows, cxr4_dir, tmp_path):
    out = tmp_path / "deploy" / "model.onnx"
    result = invoke("export", run_dir, "--format", "onnx", "--out", out, "--calibration", run_dir)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{run_dir / 'best.keras'} -> {out} (onnx, input uint8 (N, 64, 64, 3), output 4 probabilities: "
        f"normal, bacteria, virus, COVID-19); calibrated: {run_dir}")
    images = ("--images", cxr4_dir / "images")
    keras_result = invoke("predict", run_dir, "--csv", rows, *images, "--calibration", run_dir,
                          "--out", tmp_path / "keras.csv", "--quiet")
    assert keras_result.exit_code == 0, keras_result.output
    command = [sys.executable, "-c", TORCH_FREE, "predict", out, "--csv", rows, *images, "--batch-size", "5",
               "--out", tmp_path / "onnx.csv", "--quiet"]
    done = subprocess.run([str(a) for a in command], capture_output=True, text=True, cwd=REPO, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    *said, loaded = done.stdout.strip().splitlines()
    assert said == [f"{ROWS} rows -> {tmp_path / 'onnx.csv'}; predicted: " + keras_result.output.split("predicted: ")[1]
                    .split("; calibrated")[0].strip()]
    assert {"onnxruntime", "numpy", "pandas", "PIL"} <= set(json.loads(loaded))
    assert not {"torch", "keras", "tensorflow", "cv2"} & set(json.loads(loaded))
    by_keras, by_onnx = read_probabilities(tmp_path / "keras.csv"), read_probabilities(tmp_path / "onnx.csv")
    assert by_onnx.filenames == by_keras.filenames and len(by_onnx) == ROWS
    np.testing.assert_allclose(by_onnx.values, by_keras.values, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_export_keras_then_predict_reads_its_metadata(run_dir, rows, cxr4_dir, tmp_path):
    result = invoke("export", run_dir / "best.keras", "--format", "keras", "--out", tmp_path / "m.keras")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{run_dir / 'best.keras'} -> {tmp_path / 'm.keras'} (keras, input uint8")
    predicted = invoke("predict", tmp_path / "m.keras", run_dir, "--csv", rows, "--images", cxr4_dir / "images",
                       "--out", tmp_path / "p.csv", "--quiet")
    assert predicted.exit_code == 0, predicted.output
    calibrated = tmp_path / "c.keras"
    assert invoke("export", run_dir, "--format", "keras", "--out", calibrated, "--calibration", run_dir).exit_code == 0
    one_line_error(invoke("export", calibrated, "--format", "onnx", "--out", tmp_path / "again.onnx",
                          "--calibration", run_dir / "calibration.json"),
                   f"--calibration: {calibrated} has a calibration folded in already (temperature T = 0.5)")
    one_line_error(invoke("predict", calibrated, "--csv", rows, "--images", cxr4_dir / "images", "--calibration",
                          run_dir, "--out", tmp_path / "twice.csv"),
                   f"{calibrated} has a calibration folded in already (temperature T = 0.5)")


@pytest.mark.parametrize("args, message", [
    (("--format", "onnx", "--out", "{tmp}/m.pt"), "--out {tmp}/m.pt: onnx exports are .onnx files"),
    (("--format", "keras", "--out", "{tmp}/m.keras", "--calibration", "{tmp}"),
     "--calibration {tmp}: the run directory has no calibration.json"),
    (("--format", "onnx", "--out", "{tmp}/m.onnx", "--calibration", "{tmp}/none.json"),
     "--calibration {tmp}/none.json: calibration file not found"),
])
def test_bad_input_is_one_line(run_dir, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    one_line_error(invoke("export", run_dir, *args), message.format(tmp=tmp_path))


def test_missing_model_and_preprocessing_recipe_are_one_line(run_dir, tmp_path):
    one_line_error(invoke("export", tmp_path / "none.keras", "--format", "onnx", "--out", tmp_path / "m.onnx"),
                   f"{tmp_path / 'none.keras'}: model file not found")
    (run_dir / "recipe.json").write_text(json.dumps({"augmentation": Augmentation(unsharp=True).to_dict()}))
    one_line_error(invoke("export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx"),
                   f"MODEL {run_dir / 'best.keras'}: its recipe.json preprocesses images (CLAHE / unsharp)")
    assert not (tmp_path / "m.onnx").exists()


def test_predict_refuses_an_onnx_file_that_is_not_an_export(rows, tmp_path):
    (tmp_path / "other.onnx").write_bytes(b"\x08\x07")
    one_line_error(invoke("predict", tmp_path / "other.onnx", "--csv", rows, "--out", tmp_path / "p.csv"),
                   f"{tmp_path / 'other.onnx'}: ")
