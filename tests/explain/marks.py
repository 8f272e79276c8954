"""Synthetic images whose class is decided by one small mark at a random position, for pointing tests."""

import numpy as np

# Class 0 has no mark (as "normal" has no finding); classes 1-3 are decided by their mark's shape.
SHAPES = (None, "square", "ring", "cross")


def _mark(shape, size):
    m = np.zeros((size, size), np.float32)
    t = max(2, size // 5)
    if shape == "square":
        m[:] = 1
    elif shape == "ring":
        m[:t], m[-t:], m[:, :t], m[:, -t:] = 1, 1, 1, 1
    else:
        c = size // 2
        m[c - t // 2 - 1:c + t // 2 + 1], m[:, c - t // 2 - 1:c + t // 2 + 1] = 1, 1
    return m


def marked_images(n, image_size=96, mark_size=20, seed=0):
    """`(images uint8 (n, s, s, 3), class ids (n,), boxes (n, 4) as (top, left, bottom, right))`.

    Each image is smooth noise with one bright mark (its shape is the class;
    class 0 has none, its box is all -1)
    and, elsewhere, a dark blob of the mark's size that every class has (a
    distractor sharing no edge or brightness with any mark).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    classes = rng.integers(0, len(SHAPES), n)
    boxes = np.empty((n, 4), np.int64)
    for i in range(n):
        field = rng.normal(90, 12, (image_size // 8, image_size // 8))
        field = np.kron(field, np.ones((8, 8)))[:image_size, :image_size] + rng.normal(0, 6, (image_size, image_size))
        top, left = rng.integers(2, image_size - mark_size - 2, 2)
        if SHAPES[classes[i]] is None:
            boxes[i] = -1
        else:
            field[top:top + mark_size, left:left + mark_size] += 110 * _mark(SHAPES[classes[i]], mark_size)
            boxes[i] = (top, left, top + mark_size, left + mark_size)
        yy, xx = np.mgrid[:image_size, :image_size]
        for _ in range(20):
            r, c = rng.integers(mark_size // 2, image_size - mark_size // 2, 2)
            if abs(r - top - mark_size // 2) > mark_size or abs(c - left - mark_size // 2) > mark_size:
                field -= 60 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * (mark_size / 3) ** 2))
                break
        images[i] = np.clip(field, 0, 255).astype(np.uint8)[..., None]
    return images, classes, boxes


def grown_boxes(boxes, margin, image_size):
    """`boxes` widened by `margin` pixels on every side (clipped to the image); class 0's -1 rows stay."""
    grown = np.clip(boxes + np.array([-margin, -margin, margin, margin]), 0, image_size)
    return np.where(boxes >= 0, grown, boxes)


def pointing_rate(maps, boxes, correct):
    """Share of the correctly classified marked images whose map peaks inside their mark's box, and their count."""
    hits = []
    for cam, (top, left, bottom, right), ok in zip(maps, boxes, correct):
        if ok and top >= 0:
            r, c = np.unravel_index(np.argmax(cam), cam.shape)
            hits.append(top <= r < bottom and left <= c < right)
    return float(np.mean(hits)), len(hits)
