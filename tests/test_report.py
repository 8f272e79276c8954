"""`write_report` / `keras-cxr report`: one self-contained HTML page whose every image decodes."""

import base64
import html.parser
import io

import pytest
from click.testing import CliRunner
from PIL import Image

from keras_cxr.cli import main
from keras_cxr.recipe import apply_overrides, load_recipe
from keras_cxr.report import ReportError, write_report
from keras_cxr.training import fit_recipe


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    recipe = apply_overrides(load_recipe("recipes/smoke.py"), ["epochs=2", "model.image_size=32", "swa.start_epoch=None"])
    out = tmp_path_factory.mktemp("run")
    fit_recipe(recipe, out, verbose=0, overwrite=True)
    return out


def _parsed(path):
    parser = _Images()
    parser.feed(path.read_text())
    return parser


@pytest.mark.slow
def test_report_embeds_every_image_and_each_decodes(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "report.html", cams_per_class=1)
    parser = _parsed(out)
    assert parser.headings[:3] == ["Training", "Scores", "Where the model looked"]
    assert "Recipe" in parser.headings and "Environment" in parser.headings
    assert len(parser.sources) == 4  # curves, confusion, reliability, maps
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        image.load()
        assert image.size[0] > 100
    text = out.read_text()
    assert "Macro-F1" in text and '"torch":' not in text and "torch_threads" in text


@pytest.mark.slow
def test_report_of_other_rows_and_an_audit(run_dir, tmp_path):
    import json

    import pandas as pd

    recipe = json.loads((run_dir / "recipe.json").read_text())
    from keras_cxr.recipe import Recipe
    from keras_cxr.training import resolve_data_dir

    val_csv = resolve_data_dir(Recipe.from_dict(recipe).data) / "val.csv"
    audit = tmp_path / "audit"
    audit.mkdir()
    pd.DataFrame({"rank": [1], "filename": ["x.png"], "given": ["virus"], "suggested": ["bacteria"],
                  "label_quality": [0.01]}).to_csv(audit / "suspects.csv", index=False)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--probs", str(run_dir / "val_probs.csv"),
                                       "--labels", str(val_csv), "--audit", str(audit), "--cams", "0",
                                       "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    parser = _parsed(tmp_path / "r.html")
    assert "Label audit" in parser.headings and "Where the model looked" not in parser.headings
    assert "x.png" in (tmp_path / "r.html").read_text()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ReportError, match="no recipe.json"):
        write_report(tmp_path, tmp_path / "r.html")
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and result.output.startswith(f"Error: RUN {tmp_path}: no recipe.json")
    assert not (tmp_path / "r.html").exists()
