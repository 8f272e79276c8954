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
