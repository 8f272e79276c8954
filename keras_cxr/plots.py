"""PNG figures for a run: training curves, a confusion matrix, a reliability diagram."""

import io

import numpy as np

from keras_cxr.io import atomic_write


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    with atomic_write(path, mode="wb") as f:
        f.write(buffer.getvalue())


def plot_confusion_matrix(matrix, class_names, path, title="Confusion matrix"):
    """Counts with row-normalised shading (rows: true class, columns: predicted)."""
    plt = _figure()
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def plot_history(history, path):
    """Loss, validation Macro-F1 and learning rate per epoch."""
    plt = _figure()
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    panels = [("loss", ["loss", "val_loss"]), ("Macro-F1", ["val_macro_f1"]), ("learning rate", ["lr"])]
    panels = [(t, [k for k in keys if k in history]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            ax.plot(epochs, history[key], marker=".", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    _save(fig, path)
    plt.close(fig)


def contact_sheet(images, captions, path, columns=4, title=None, cell_inches=2.4):
    """A grid of images with a caption under each, as one PNG.

    Args:
        images: a list of `(H, W)` or `(H, W, 3)` arrays (uint8 or floats in
            [0, 1]); sizes may differ.
        captions: one string per image (may hold newlines).
        path: the PNG to write (atomically).
        columns: images per row.
        title: a heading for the whole sheet.
        cell_inches: the size of one cell.
    """
    if len(images) != len(captions):
        raise ValueError(f"contact_sheet: {len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("contact_sheet: no images to draw")
    plt = _figure()
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(cell_inches * columns, (cell_inches + 0.5) * rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        image = np.asarray(image)
        scale = 255 if image.dtype == np.uint8 else 1
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=scale)
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def plot_reliability(y_true_ids, probs, path, calibrated=None, n_bins=15, title=None, labels=("before", "after")):
    """A reliability diagram: per confidence bin, accuracy against mean confidence, with a confidence histogram.

    One column per probability set (`probs`, and `calibrated` when given),
    each with the bins' accuracy as bars, the gap to the bin's mean
    confidence as red bars, the diagonal of perfect calibration, the ECE in
    the legend, and below it how many rows fall in each bin.

    Args:
        y_true_ids: `(N,)` integer class ids.
        probs: `(N, C)` probabilities (e.g. before calibration).
        path: the PNG to write (atomically).
        calibrated: optional `(N, C)` probabilities of the same rows after calibration.
        n_bins: confidence bins, as in `keras_cxr.evaluation.expected_calibration_error`.
        title: a heading for the figure.
        labels: the two columns' names.

    Example:

    ```python
    plot_reliability(y_val, val_probs, "runs/a/reliability.png")
    plot_reliability(y_test, test_probs, "T.reliability.png", calibrated=calibration.apply(test_probs))
    ```
    """
    from keras_cxr.evaluation import expected_calibration_error, reliability_bins

    plt = _figure()
    sets = [(labels[0], np.asarray(probs))] + ([(labels[1], np.asarray(calibrated))] if calibrated is not None else [])
    fig, axes = plt.subplots(2, len(sets), figsize=(4.2 * len(sets), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    y_true_ids = np.asarray(y_true_ids)
    for column, (name, values) in enumerate(sets):
        bins = reliability_bins(y_true_ids, values, n_bins)
        ece = expected_calibration_error(y_true_ids, values, n_bins)
        left, width = bins["edges"][:-1], np.diff(bins["edges"])
        filled = bins["count"] > 0
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
        top.bar(left[filled], bins["accuracy"][filled], width=width[filled], align="edge", color="tab:blue",
                edgecolor="white", label=f"accuracy (ECE {ece:.3f})")
        gap = bins["confidence"][filled] - bins["accuracy"][filled]
        top.bar(left[filled], gap, bottom=bins["accuracy"][filled], width=width[filled], align="edge",
                color="tab:red", alpha=0.35, edgecolor="tab:red", label="gap to confidence")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(name)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(left, bins["count"], width=width, align="edge", color="tab:gray", edgecolor="white")
        bottom.set_xlabel("confidence (top probability)")
        bottom.set_ylabel("rows")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def heatmap_overlay(image, heatmap, alpha=0.45):
    """`image` (H, W[, 3], 0-255) with `heatmap` (H, W, in [0, 1]) blended over it in the jet colour map, as uint8 RGB."""
    _figure()
    import matplotlib

    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255
    weight = alpha * np.clip(heatmap, 0, 1)[..., None] ** 0.5  # cold areas keep the image visible
    return np.clip(image * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)


def plot_activation_map(image, heatmap, path, title):
    """One explained image as a PNG: the image, and the image with its class-activation map over it."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6))
    image = np.asarray(image)
    axes[0].imshow(image.astype(np.uint8), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    axes[0].set_title("image", fontsize=8)
    shown = axes[1].imshow(heatmap_overlay(image, heatmap))
    shown.set_cmap("jet")  # the colour bar reads the map's scale, not the blended pixels
    shown.set_clim(0, 1)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title("class-activation map", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
    plt.close(fig)
