"""The bad-input matrix: each case gets one clear line naming the file, line or option.

Every case runs a real `keras-cxr` command and checks the exit status, the
message and that no traceback leaks out.
"""

import io
import json
import pathlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_cxr import models
from keras_cxr.cli import main
from keras_cxr.recipe import Recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
HEADER = "new_filename,normal,bacteria,virus,COVID-19"
GOOD_ROWS = ["a.png,1,0,0,0", "b.png,0,1,0,0", "c.png,0,0,1,0", "d.png,0,0,0,1"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in "abcd":
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(images / f"{name}.png")
    model_dir = root / "model"
    model_dir.mkdir()
    models.build("cxr_resnet", image_size=32).save(model_dir / "best.keras")
    (model_dir / "recipe.json").write_text(json.dumps(Recipe().to_dict()))
    return root


def data_dir(workspace, tmp_path, train_rows=None, header=HEADER, train_text=None):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "images").symlink_to(workspace / "images")
    text = train_text if train_text is not None else "\n".join([header, *(train_rows or GOOD_ROWS)]) + "\n"
    (folder / "train.csv").write_text(text)
    (folder / "val.csv").write_text("\n".join([HEADER, *GOOD_ROWS]) + "\n")
    return folder


def fit(folder, *extra):
    return run("fit", REPO / "recipes" / "smoke.py", "--data-dir", folder, "--out", folder / "run", *extra)


TABLE_CASES = {
    "missing class column": (dict(header="new_filename,normal,bacteria,virus",
                                  train_rows=["a.png,1,0,0", "b.png,0,1,0"]),
                             "train.csv line 1: missing column(s) 'COVID-19'"),
    "duplicate filenames": (dict(train_rows=[*GOOD_ROWS, "a.png,1,0,0,0"]),
                            "train.csv line 6: duplicate image 'a.png' (also on line 2)"),
    "two ones in a row": (dict(train_rows=["a.png,1,0,1,0", *GOOD_ROWS[1:]]),
                          "train.csv line 2: label cells are not one-hot (normal=1, virus=1)"),
    "all-zero row": (dict(train_rows=["a.png,0,0,0,0", *GOOD_ROWS[1:]]),
                     "train.csv line 2: label cells are not one-hot (all zeros)"),
    "non-numeric label": (dict(train_rows=["a.png,yes,0,0,0", *GOOD_ROWS[1:]]),
                          "train.csv line 2: label cell normal='yes' is not a number"),
    "fractional label": (dict(train_rows=["a.png,0.5,0.5,0,0", *GOOD_ROWS[1:]]),
                         "train.csv line 2: label cell normal=0.5 is not 0 or 1"),
    "partly empty labels": (dict(train_rows=["a.png,1,,0,0", *GOOD_ROWS[1:]]),
                            "train.csv line 2: label cells partly empty (bacteria empty)"),
    "empty CSV": (dict(train_text=""), "train.csv: file is empty"),
    "header only": (dict(train_text=HEADER + "\n"), "train.csv: has a header but no data rows"),
    "missing image": (dict(train_rows=[*GOOD_ROWS, "zz.png,1,0,0,0"]), "train.csv line 6: image not found"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_tables_fail_before_training(case, workspace, tmp_path):
    kwargs, message = TABLE_CASES[case]
    folder = data_dir(workspace, tmp_path, **kwargs)
    result = fit(folder)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (folder / "run" / "recipe.json").exists()  # nothing started


def test_unknown_extra_columns_are_allowed(workspace, tmp_path):
    from keras_cxr.data import read_table

    folder = data_dir(workspace, tmp_path, header=HEADER + ",patient_id,notes",
                      train_rows=[r + f",{i},x" for i, r in enumerate(GOOD_ROWS)])
    assert len(read_table(folder / "train.csv", labels="required")) == 4


def _png(mode, size=(24, 24)):
    rng = np.random.default_rng(1)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 4096, size, dtype=np.uint16))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (*size, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).convert("P")
    if mode == "CMYK":
        return Image.fromarray(rng.integers(0, 256, (*size, 4), dtype=np.uint8), "CMYK")
    return Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8))


def _jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _dicom(pixels=None, **kwargs):
    """Bytes of a DICOM file (see tests/data/test_dicom.py) of 24x24 noise or `pixels`."""
    from tests.data.test_dicom import dicom_bytes

    return dicom_bytes(np.asarray(_png("L")) if pixels is None else pixels, **kwargs)


def _dicom_without_pixel_data():
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _dicom_declaring(rows, columns):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    ds.Rows, ds.Columns = rows, columns
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _dicom_needing_a_handler(path):
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS pixel data handler is installed here")
    path.write_bytes(pathlib.Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes())


# case -> (file name, writer, message)
BAD_IMAGES = {
    "zero-byte file": ("x.jpeg", lambda path: path.write_bytes(b""), "cannot read image: empty file"),
    "truncated JPEG": ("x.jpeg", lambda path: path.write_bytes(_jpeg_bytes(_png("L", (64, 64)))[:300]),
                       "cannot read image"),
    "text named .jpeg": ("x.jpeg", lambda path: path.write_text("not an image"), "cannot read image"),
    "decompression bomb": ("x.jpeg", lambda path: Image.new("1", (20000, 20000)).save(path, format="PNG"),
                           "possible decompression bomb"),
    "zero-byte DICOM": ("x.dcm", lambda path: path.write_bytes(b""), "cannot read DICOM: empty file"),
    "text named .dcm": ("x.dcm", lambda path: path.write_text("not an image"),
                        "cannot read DICOM: not a DICOM file (no 'DICM' marker at byte 128)"),
    "DICOM without pixel data": ("x.dcm", lambda path: path.write_bytes(_dicom_without_pixel_data()),
                                 "cannot read DICOM: no pixel data"),
    "truncated DICOM": ("x.dcm", lambda path: path.write_bytes(_dicom()[:-100]),
                        "cannot read DICOM pixel data: truncated file (476 of 576 bytes)"),
    "DICOM bomb": ("x.dcm", lambda path: path.write_bytes(_dicom_declaring(20000, 20000)),
                   "20000x20000 pixels exceeds the decompression-bomb limit"),
    "JPEG-LS DICOM, no handler": ("x.dcm", _dicom_needing_a_handler,
                                  "cannot decode DICOM transfer syntax 'JPEG-LS Lossless Image Compression'"),
}
GOOD_IMAGES = {
    "16-bit PNG": lambda path: _png("I;16").save(path, format="PNG"),
    "RGBA PNG": lambda path: _png("RGBA").save(path, format="PNG"),
    "palette PNG": lambda path: _png("P").save(path, format="PNG"),
    "CMYK JPEG": lambda path: _png("CMYK").save(path, format="JPEG"),
    "1x1 image": lambda path: _png("L", (1, 1)).save(path, format="PNG"),
}
# file name -> DICOM bytes, all read by one `predict` (a `predict` per file costs ~5 s)
GOOD_DICOM = {
    "mono1.dcm": lambda: _dicom(photometric="MONOCHROME1"),
    "windowed.dcm": lambda: _dicom(np.asarray(_png("I;16")), bits_stored=12, WindowCenter=2048, WindowWidth=4096),
    "IM0001": lambda: _dicom(),  # no suffix: found by its 'DICM' marker
}


def predict_one_image(workspace, tmp_path, name, write):
    images = tmp_path / "imgs"
    images.mkdir()
    write(images / name)
    (tmp_path / "t.csv").write_text(f"new_filename\n{name}\n")
    return run("predict", workspace / "model", "--csv", tmp_path / "t.csv", "--images", images,
               "--out", tmp_path / "p.csv", "--quiet")


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_unreadable_images_are_named(case, workspace, tmp_path, monkeypatch):
    name, write, message = BAD_IMAGES[case]
    if "bomb" in case:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    result = predict_one_image(workspace, tmp_path, name, write)
    assert result.exit_code == 2, result.output
    assert name in result.output and message in result.output
    assert not (tmp_path / "p.csv").exists()


def data_dir_with_images(workspace, tmp_path, broken):
    """A data folder whose training table also lists the files `broken` writes (name -> writer)."""
    folder = tmp_path / "data"
    images = folder / "images"
    images.mkdir(parents=True)
    for name in "abcd":
        png = (workspace / "images" / f"{name}.png").read_bytes()
        (images / f"{name}.png").write_bytes(png)
        (images / f"val_{name}.png").write_bytes(png)
    for name, write in broken.items():
        write(images / name)
    rows = [*GOOD_ROWS, *(f"{name},0,1,0,0" for name in broken)]
    (folder / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (folder / "val.csv").write_text("\n".join([HEADER, *(f"val_{row}" for row in GOOD_ROWS)]) + "\n")
    return folder


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_fit_names_unreadable_training_images_before_training(case, workspace, tmp_path, monkeypatch):
    name, write, message = BAD_IMAGES[case]
    if "bomb" in case:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    folder = data_dir_with_images(workspace, tmp_path, {name: write})
    result = fit(folder)
    assert result.exit_code == 2, result.output
    assert f"train.csv, row '{name}'" in result.output and message in result.output
    assert 'data.on_bad_image="skip"' in result.output
    assert not any((folder / "run").iterdir())  # stopped before writing anything


def test_fit_can_skip_unreadable_images_and_lists_them(workspace, tmp_path):
    broken = {"x.jpeg": BAD_IMAGES["truncated JPEG"][1], "y.png": BAD_IMAGES["zero-byte file"][1]}
    folder = data_dir_with_images(workspace, tmp_path, broken)
    result = fit(folder, "--set", "data.on_bad_image=skip", "--epochs", "1", "--set", "swa.start_epoch=none",
                 "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert metrics["train_images"] == 4
    assert [s["filename"] for s in metrics["skipped_images"]] == ["x.jpeg", "y.png"]
    assert "empty file" in metrics["skipped_images"][1]["reason"]


@pytest.mark.parametrize("case", list(GOOD_IMAGES))
def test_unusual_but_valid_images_are_read(case, workspace, tmp_path):
    result = predict_one_image(workspace, tmp_path, "x.jpeg", GOOD_IMAGES[case])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.csv").read_text().count("\n") == 2


def test_dicom_variants_are_read(workspace, tmp_path):
    for name, data in GOOD_DICOM.items():
        (tmp_path / name).write_bytes(data())
    (tmp_path / "t.csv").write_text("\n".join(["new_filename", *GOOD_DICOM]) + "\n")
    result = run("predict", workspace / "model", "--csv", tmp_path / "t.csv", "--images", tmp_path,
                 "--out", tmp_path / "p.csv", "--quiet")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == list(GOOD_DICOM)


@pytest.mark.parametrize(
    "args, message",
    [
        (["recipes/nope.py"], "recipe file not found: recipes/nope.py"),
        (["RECIPE:Recipe(epochs=3, optimiser=None)"], "unknown field 'optimiser' in Recipe; did you mean 'optimizer'?"),
        (["RECIPE:Recipe(epochs='ten')"], "Recipe.epochs: expected an integer, got 'ten'"),
        (["RECIPE:Recipe(epochs=3"], "r.py line 2: '(' was never closed (the recipe is not valid Python)"),
        (["RECIPE:Recipe(epochs=3)\n1 / 0"], "r.py line 3: running the recipe raised ZeroDivisionError: division by zero"),
        (["recipes/smoke.py", "--set", "model.dropout=high"], "Model.dropout: expected"),
        (["recipes/smoke.py", "--set", "optimizer.lr=1"], "unknown field 'optimizer.lr' in Optimizer"),
        (["recipes/smoke.py", "--set", "epochs"], "--set expects dotted.key=value, got 'epochs'"),
    ],
)
def test_bad_recipes_and_options(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    if args[0].startswith("RECIPE:"):
        recipe = tmp_path / "r.py"
        recipe.write_text(f"from keras_cxr.recipe import Recipe\nrecipe = {args[0][7:]}\n")
        args = [str(recipe), *args[1:]]
    result = run("fit", *args, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("fit", REPO / "recipes" / "smoke.py", "--out", blocker / "run")
    assert result.exit_code == 2 and "is not writable" in result.output


def test_corrupt_model_and_class_count_mismatch(workspace, tmp_path):
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes((workspace / "model" / "best.keras").read_bytes()[:1000])
    (tmp_path / "t.csv").write_text("new_filename\na.png\n")
    result = run("predict", corrupt, "--csv", tmp_path / "t.csv", "--images", workspace / "images",
                 "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "corrupt.keras: not a Keras model archive" in result.output
    three = tmp_path / "three"
    three.mkdir()
    models.build("cxr_resnet", num_classes=3, image_size=32).save(three / "best.keras")
    (three / "recipe.json").write_text(json.dumps(Recipe().to_dict()))
    result = run("predict", three, "--csv", tmp_path / "t.csv", "--images", workspace / "images",
                 "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "the model has 3 outputs but" in result.output


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a.png,0.2,nan,0.4,0.4"], "line 2: bacteria='nan' is not a finite number"),
        (["a.png,0.5,0.5,0.5,0.5"], "line 2: probabilities sum to 2, not 1"),
        (["zz.png,0.25,0.25,0.25,0.25"], "filenames differ"),
    ],
)
def test_bad_probability_files(rows, message, workspace, tmp_path):
    (tmp_path / "p.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (tmp_path / "labels.csv").write_text(HEADER + "\na.png,1,0,0,0\n")
    result = run("evaluate", tmp_path / "p.csv", "--labels", tmp_path / "labels.csv")
    assert result.exit_code == 2, result.output
    assert message in result.output


NEW_INPUT_PATHS = {
    "broken .onnx to predict": (
        lambda ws, tmp: (tmp / "broken.onnx").write_bytes(b"\x08\x07garbage"),
        lambda ws, tmp: ["predict", tmp / "broken.onnx", "--csv", tmp / "t.csv", "--images", ws / "images",
                         "--out", tmp / "p.csv"],
        "broken.onnx: cannot load the ONNX model"),
    "export to a suffix of another format": (
        lambda ws, tmp: None,
        lambda ws, tmp: ["export", ws / "model", "--format", "onnx", "--out", tmp / "m.pt"],
        "--out {}: onnx exports are .onnx files"),
    "TFDS build of a folder without tables": (
        lambda ws, tmp: (tmp / "empty").mkdir(),
        lambda ws, tmp: ["tfds", "build", tmp / "empty", "--out", tmp / "tfds"],
        "empty: no split CSV found (looked for train.csv, val.csv, test.csv)"),
    "Kaggle files without a training CSV": (
        lambda ws, tmp: (tmp / "raw").mkdir() or (tmp / "raw" / "test_data.csv").write_text("new_filename\na.png\n"),
        lambda ws, tmp: ["download", "--from", tmp / "raw", "--out", tmp / "data"],
        "no training CSV (a file named *train*.csv); CSVs found: 'test_data.csv'"),
}


@pytest.mark.parametrize("case", list(NEW_INPUT_PATHS))
def test_new_input_paths_fail_in_one_line(case, workspace, tmp_path):
    prepare, arguments, message = NEW_INPUT_PATHS[case]
    (tmp_path / "t.csv").write_text("new_filename\na.png\n")
    prepare(workspace, tmp_path)
    result = run(*arguments(workspace, tmp_path))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp_path / "m.pt") in lines[0], result.output
