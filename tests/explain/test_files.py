"""`explain_csv`: the files it writes for a CSV of real chest X-rays."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from keras_cxr.explain import ExplainError, explain_csv


@pytest.fixture
def model_file(untrained_model_file):
    return untrained_model_file


def test_writes_a_map_png_and_array_per_image_and_a_contact_sheet(model_file, cxr4_dir, tmp_path):
    out = tmp_path / "explain"
    frame = explain_csv(model_file, cxr4_dir / "val.csv", out, limit=5, sheet=4, batch_size=2)
    assert len(frame) == 5 and list(frame["filename"]) == list(pd.read_csv(cxr4_dir / "val.csv")["new_filename"][:5])
    assert set(frame["true"]) <= {"normal", "bacteria", "virus", "COVID-19"} and (frame["true"] != "").all()
    assert (frame["explained"] == frame["predicted"]).all()
    for row in frame.itertuples():
        heatmap = np.load(out / row.map)
        assert heatmap.shape == (64, 64) and heatmap.dtype == np.float32 and heatmap.max() <= 1
        assert np.unravel_index(heatmap.argmax(), heatmap.shape) == (row.peak_row, row.peak_col)
        assert Image.open(out / row.map.replace(".npy", ".png")).size[0] > 300
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] > sheet.size[1] > 200  # 4 images in one row
    info = json.loads((out / "explain.json").read_text())
    assert info["rows"] == 5 and info["mapped"] == "the backbone's feature map" and info["grid"] == [4, 4]


def test_explaining_one_class_for_every_image(model_file, cxr4_dir, tmp_path):
    frame = explain_csv(model_file, cxr4_dir / "val.csv", tmp_path, target_class="virus", limit=3, sheet=0)
    assert (frame["explained"] == "virus").all()
    assert not (tmp_path / "contact_sheet.png").exists()
    with pytest.raises(ExplainError, match="'pneumonia' is not a class of model .*normal, bacteria, virus, COVID-19"):
        explain_csv(model_file, cxr4_dir / "val.csv", tmp_path, target_class="pneumonia")
