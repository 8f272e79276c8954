"""One self-contained HTML page that shows a run: `write_report` (`keras-cxr report`).

The page holds, with every image embedded as a PNG data URI (one file to
mail or archive; nothing fetched when it opens):

- the recipe (``recipe.json``) and the run's environment and wall time;
- training curves with the learning rate (``curves.png``);
- per-class precision / recall / F1, the confusion matrix and the
  reliability diagram, of the run's validation probabilities or of a
  probability file and its labels (`probs` / `labels`);
- a grid of class-activation maps: per class, correctly and wrongly
  classified rows;
- the top suspects of a label audit (`keras-cxr audit`'s folder), when given.

Example:

```python
write_report("runs/cpu", "runs/cpu/report.html")
```
"""

import base64
import html
import json
import pathlib
import tempfile

import numpy as np

from keras_cxr.errors import FieldError
from keras_cxr.io import atomic_write

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
.row { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; } .muted { color: #777; }
"""


class ReportError(FieldError):
    """A run directory or input a report cannot be made from."""


def _img(path, alt):
    data = base64.b64encode(pathlib.Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header, rows, numeric_from=1):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{v:.4f}</td>' if isinstance(v, float) else
            f'<td{" class=n" if i >= numeric_from and isinstance(v, int) else ""}>{html.escape(str(v))}</td>'
            for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{{run_dir}}: cannot read {path} ({e})", run_dir="run_dir") from None


def _scored_rows(run, probs, labels):
    """(probability file, labels CSV, where in words) of the rows the page scores."""
    from keras_cxr.recipe import Recipe
    from keras_cxr.training import resolve_data_dir

    if probs is None:
        data = Recipe.from_dict(_read_json(run / "recipe.json")).data
        if data.tfds_dir is not None:
            raise ReportError(f"{{run_dir}} {run}: trained from the TFDS build {data.tfds_dir}, which has no "
                              "validation CSV to score against; give {probs} and {labels}",
                              run_dir="run_dir", probs="probs", labels="labels")
        labels = resolve_data_dir(data) / data.val_csv
        return run / "val_probs.csv", labels, f"validation rows ({labels})"
    return probs, pathlib.Path(labels), f"{probs} against {labels}"


def _cam_cases(values, truth, per_class):
    """Row indices: per class, up to `per_class` correct then wrong rows, most confident first."""
    predicted = values.argmax(axis=1)
    confidence = values.max(axis=1)
    picked = []
    for c in range(values.shape[1]):
        for correct in (True, False):
            rows = np.flatnonzero((truth == c) & ((predicted == c) == correct))
            picked += list(rows[np.argsort(-confidence[rows])][:per_class])
    return picked


def _cam_grid(run, table, rows, folder, method):
    from keras_cxr.explain import ClassActivationMapper
    from keras_cxr.plots import contact_sheet, heatmap_overlay
    from keras_cxr.predictor import Predictor

    predictor = Predictor.load(run)
    mapper = ClassActivationMapper(predictor.model, method)
    method = mapper.method
    subset = table.subset(np.asarray(rows))
    data = predictor.dataset(subset, batch_size=8)
    names = predictor.class_names
    images, captions, offset = [], [], 0
    for index in range(len(data)):
        batch = data[index][0]
        result = mapper(batch)
        for image, heatmap, probs in zip(batch, result.maps, result.probs):
            true = names[int(subset.class_ids[offset])]
            predicted = names[int(probs.argmax())]
            wrong = " (wrong)" if true != predicted else ""
            captions.append(f"{subset.filenames[offset]}\ntrue {true}\npredicted {predicted} {probs.max():.2f}{wrong}")
            images.append(heatmap_overlay(image, heatmap))
            offset += 1
    path = folder / "cams.png"
    contact_sheet(images, captions, path, columns=4, title=f"{method} of the predicted class")
    return _img(path, "class-activation maps"), mapper.source, method


def _audit_section(audit_dir):
    import pandas as pd

    audit_dir = pathlib.Path(audit_dir)
    suspects_csv = audit_dir / "suspects.csv"
    if not suspects_csv.is_file():
        raise ReportError(f"{{audit}} {audit_dir}: no suspects.csv (a folder written by the label audit)",
                          audit="audit")
    suspects = pd.read_csv(suspects_csv).head(15)
    columns = [c for c in ("rank", "filename", "given", "suggested", "label_quality") if c in suspects.columns]
    parts = [f"<p>{len(pd.read_csv(suspects_csv))} suspected label errors ({html.escape(str(suspects_csv))});"
             " the 15 most suspect:</p>",
             _table(columns, [[r[c] for c in columns] for _, r in suspects.iterrows()], numeric_from=99)]
    if (audit_dir / "suspects.png").is_file():
        parts.append(_img(audit_dir / "suspects.png", "label audit suspects"))
    return "".join(parts)


def _environment(metrics):
    recorded = metrics.get("environment")
    if recorded:
        return _table(["", ""], [[k, v] for k, v in recorded.items()], numeric_from=99)
    return '<p class="muted">This run did not record its environment (runs made before keras-cxr recorded it).</p>'


def write_report(run_dir, out_path, probs=None, labels=None, audit=None, cams_per_class=2, method="auto"):
    """Write one self-contained HTML page about the run in `run_dir`.

    Args:
        run_dir: a finished run directory (``recipe.json``, ``metrics.json``,
            ``best.keras``, ``val_probs.csv``, ``curves.png``).
        out_path: the HTML file to write (atomically).
        probs: a probability file to score instead of the run's validation
            probabilities (with `labels`), e.g. its test predictions.
        labels: the labeled table CSV of `probs` (its images are mapped).
        audit: a folder written by `keras_cxr.audit.write_audit`, shown when given.
        cams_per_class: correct and wrong rows mapped per class (0: no maps).
        method: the class-activation method of the maps (see
            `keras_cxr.explain.ClassActivationMapper`; ``"auto"`` by family).

    Returns:
        `out_path`.

    Raises:
        ReportError: a missing or unreadable run file or audit folder.
    """
    from keras_cxr.data import read_table
    from keras_cxr.evaluation import classification_summary
    from keras_cxr.probabilities import read_probabilities

    run = pathlib.Path(run_dir)
    for name in ("recipe.json", "metrics.json", "best.keras"):
        if not (run / name).is_file():
            raise ReportError(f"{{run_dir}} {run}: no {name} (not a finished keras-cxr run directory)",
                              run_dir="run_dir")
    if (probs is None) != (labels is None):
        raise ReportError("{probs} and {labels} go together", probs="probs", labels="labels")
    recipe = _read_json(run / "recipe.json")
    metrics = _read_json(run / "metrics.json")
    probs_path, labels_csv, where = _scored_rows(run, probs, labels)
    probabilities = read_probabilities(probs_path)
    table = read_table(labels_csv, class_names=probabilities.class_names, labels="required")
    aligned = probabilities.aligned_to(table.filenames, labels_csv)
    summary = {"rows": len(table), **classification_summary(table.class_ids, aligned.values, aligned.class_names)}
    names = summary["class_names"]
    sections = [f"<h1>keras-cxr run: {html.escape(str(run))}</h1>",
                f"<p>{html.escape(recipe['model']['name'])} at {metrics.get('image_size')} px, "
                f"{metrics.get('epochs_run')} epochs, {metrics.get('seconds', 0) / 60:.1f} min"
                + (f" (of the session that resumed after epoch {metrics['resumed_after_epoch']})"
                   if metrics.get("resumed_after_epoch") else "") + "; "
                f"scored on {html.escape(where)}: <b>Macro-F1 {summary['macro_f1']:.4f}</b>, "
                f"accuracy {summary['accuracy']:.4f}, ECE {summary['ece']:.4f}"
                + (f", Brier {summary['brier']:.4f}, NLL {summary['nll']:.4f}" if "brier" in summary else "")
                + "</p>"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        from keras_cxr.plots import plot_confusion_matrix, plot_reliability

        plot_confusion_matrix(summary["confusion_matrix"], names, folder / "confusion.png",
                              title=f"Macro-F1 {summary['macro_f1']:.3f}")
        plot_reliability(table.class_ids, aligned.values, folder / "reliability.png", labels=("reliability", ""))
        sections += ["<h2>Training</h2>",
                     _img(run / "curves.png", "training curves") if (run / "curves.png").is_file()
                     else '<p class="muted">no curves.png</p>',
                     "<h2>Scores</h2>", f"<p>{html.escape(where)}, {summary['rows']} rows.</p>",
                     _table(["class", "precision", "recall", "F1", "support"],
                            [[n, *(summary["per_class"][n][k] for k in ("precision", "recall", "f1", "support"))]
                             for n in names]),
                     '<div class="row">', _img(folder / "confusion.png", "confusion matrix"),
                     _img(folder / "reliability.png", "reliability diagram"), "</div>"]
        if cams_per_class:
            rows = _cam_cases(aligned.values, table.class_ids, cams_per_class)
            grid, source, used = _cam_grid(run, table, rows, folder, method)
            sections += ["<h2>Where the model looked</h2>",
                         f"<p>Per class, the {cams_per_class} most confident correct and wrong rows; {used} on "
                         f"{html.escape(source)}.</p>", grid]
        if audit is not None:
            sections += ["<h2>Label audit</h2>", _audit_section(audit)]
        sections += ["<h2>Recipe</h2>", f"<pre>{html.escape(json.dumps(recipe, indent=2))}</pre>",
                     "<h2>Environment</h2>", _environment(metrics)]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>keras-cxr report: "
            f"{html.escape(run.name)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    with atomic_write(out_path) as f:
        f.write(page)
    return out_path
