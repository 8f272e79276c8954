"""PNG figures for a run: training curves and a confusion matrix."""

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
