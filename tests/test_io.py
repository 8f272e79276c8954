"""keras_cxr.io: atomic writes keep the old file on error; JSON, CSV and model files."""


import keras
import numpy as np
import pandas as pd
import pytest

from keras_cxr.io import atomic_write, save_model_atomic, save_weights_atomic, write_csv_atomic, write_json_atomic
from tests.callbacks.support import make_data, tiny_model


def test_atomic_write_replaces_and_keeps_old_on_error(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    with atomic_write(p) as f:
        f.write("one")
    assert p.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("two")
            raise RuntimeError("boom")
    assert p.read_text() == "one"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]  # no temp left behind
    with atomic_write(p, "wb") as f:
        f.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError):
        with atomic_write(p, "a"):
            pass


def test_json_csv_and_model_atomic(tmp_path):
    write_json_atomic({"f1": np.float32(0.5), "ids": np.arange(3)}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text().startswith("{")
    import json

    assert json.loads((tmp_path / "m.json").read_text()) == {"f1": 0.5, "ids": [0, 1, 2]}
    df = pd.DataFrame({"new_filename": ["a.jpg", "b.jpg"], "normal": [1, 0]})
    write_csv_atomic(df, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text() == "new_filename,normal\na.jpg,1\nb.jpg,0\n"
    model = tiny_model()
    save_model_atomic(model, tmp_path / "m.keras")
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []
    x, _ = make_data(4, 0)
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0), model.predict(x, verbose=0))

    class Broken:
        def save(self, path):
            with open(path, "w") as f:
                f.write("partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_model_atomic(Broken(), tmp_path / "m.keras")
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []
    keras.saving.load_model(tmp_path / "m.keras")  # the old file is intact


def test_save_weights_atomic_replaces_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "out" / "m.weights.h5"
    assert save_weights_atomic(model, path) == str(path)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.load_weights(path)
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])
    before = path.read_bytes()

    def broken(self, filepath, **kwargs):
        open(filepath, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Sequential, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        save_weights_atomic(other, path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["m.weights.h5"]
    with pytest.raises(ValueError, match="'.weights.h5'"):
        save_weights_atomic(model, tmp_path / "m.h5")


_SAVE_IN_A_FRESH_PROCESS = r"""
import importlib.util, json, sys, zipfile
import numpy as np
import keras
from keras.src.utils import module_utils
from keras_cxr.io import save_model_atomic

assert "tensorflow" not in sys.modules
inputs = keras.Input((16, 16, 3))
features = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features)))
x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
save_model_atomic(model, sys.argv[1] + "/guarded.keras")
after_guarded = "tensorflow" in sys.modules
answer_after = module_utils.tensorflow._available
same = np.array_equal(keras.saving.load_model(sys.argv[1] + "/guarded.keras").predict(x, verbose=0),
                      model.predict(x, verbose=0))
model.save(sys.argv[1] + "/plain.keras")
configs = [json.loads(zipfile.ZipFile(sys.argv[1] + f"/{n}.keras").read("config.json")) for n in ("guarded", "plain")]
print(json.dumps({"tf_installed": importlib.util.find_spec("tensorflow") is not None,
                  "tf_after_guarded_save": after_guarded, "answer_after": answer_after,
                  "tf_after_plain_save": "tensorflow" in sys.modules,
                  "same_predictions": bool(same), "same_config": configs[0] == configs[1]}))
"""


@pytest.mark.slow
def test_save_model_atomic_leaves_tensorflow_unimported(tmp_path):
    import json
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-c", _SAVE_IN_A_FRESH_PROCESS, str(tmp_path)], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["tf_after_guarded_save"] is False
    assert facts["answer_after"] is None  # Keras's own question is left unanswered, as before
    assert facts["same_predictions"] and facts["same_config"]
    if facts["tf_installed"]:
        assert facts["tf_after_plain_save"] is True  # what the guard avoids
