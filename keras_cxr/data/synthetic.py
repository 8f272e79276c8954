"""Procedural chest-X-ray-like images: keras-cxr's embedded default dataset.

The generator draws a frontal chest radiograph from simple shapes (body, two
lung fields, mediastinum and spine, heart shadow, clavicles, ribs, diaphragm
domes, hilar vessels), varies the patient (size, position, a few degrees of
rotation, exposure, blur, noise) and adds one class-specific finding:

* ``normal``: clean lungs;
* ``bacteria``: one focal lobar consolidation, a dense blob in ONE lung;
* ``virus``: diffuse bilateral, perihilar reticular (interstitial) texture;
* ``COVID-19``: bilateral, peripheral, lower-zone ground-glass haze.

Severity is drawn per image and can be mild, and every class gets the same
nuisance variation (including breast/soft-tissue shadows at the lung bases
that mimic faint basal haze), so a small CNN can learn the classes at
64-128 px but not perfectly.

Image x grows to the image right, which is the patient's LEFT (the heart bulges
to the image right), exactly as on a real PA radiograph; never flip these
images horizontally.

The dataset writer produces the Kaggle layout (``images/`` plus ``train.csv``,
``val.csv`` and ``test.csv`` with header
``new_filename,normal,bacteria,virus,COVID-19`` and one-hot integer labels;
the test split keeps its labels so evaluation is possible). Output is
deterministic: the same parameters give byte-identical files.

Only numpy and Pillow are needed; this module imports neither keras nor torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_COUNTS",
    "GENERATOR_VERSION",
    "default_dataset_dir",
    "ensure_default_dataset",
    "make_synthetic_arrays",
    "make_synthetic_dataset",
    "render_image",
]

# Same order as keras_cxr.CLASS_NAMES; duplicated so this module stays importable
# on its own, without importing the package's keras-dependent parts.
CLASS_NAMES = ("normal", "bacteria", "virus", "COVID-19")

# Bump whenever render_image's output changes, so cached datasets are rebuilt.
GENERATOR_VERSION = 1

# (normal, bacteria, virus, COVID-19) per split: bacteria most common and
# COVID-19 rare (~5%), like the real data (Kaggle 1%, cxr4 5.7%).
DEFAULT_COUNTS: dict[str, tuple[int, int, int, int]] = {
    "train": (60, 100, 60, 12),
    "val": (15, 25, 15, 5),
    "test": (15, 25, 15, 5),
}

_SPLITS = ("train", "val", "test")
_MARKER = "synthetic.json"  # written last; its presence means "complete"
_FORMATS = {"png": ("png", "PNG"), "jpeg": ("jpeg", "JPEG"), "jpg": ("jpg", "JPEG")}


# ----------------------------------------------------------------------------
# small numpy helpers
# ----------------------------------------------------------------------------


def _sig(x):
    """Logistic function: a soft step used for every shape edge."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur as a sum of shifted copies.

    Deliberately not a BLAS matrix product: multithreaded BLAS on a busy
    machine made that 10-100x slower than these few vectorised adds.
    """
    if sigma_px < 0.2:
        return img
    n0, n1 = img.shape
    r = min(int(np.ceil(3.0 * sigma_px)), n0 - 1, n1 - 1)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (0, 0)), mode="reflect")
    out = k[0] * p[0:n0]
    for j in range(1, 2 * r + 1):
        out += k[j] * p[j : j + n0]
    p = np.pad(out, ((0, 0), (r, r)), mode="reflect")
    out = k[0] * p[:, 0:n1]
    for j in range(1, 2 * r + 1):
        out += k[j] * p[:, j : j + n1]
    return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise smooth at the scale of ``size / cells`` px."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC),
        dtype=np.float64,
    )
    return (field - field.mean()) / (field.std() + 1e-8)


def _draw_segments(field, seg, width, strength):
    """Max-composite tapered soft lines (vessels) into ``field`` in place.

    ``seg`` rows are (col0, row0, col1, row1) in pixels; each line is drawn
    only inside its bounding box, which keeps this cheap.
    """
    n0, n1 = field.shape
    for (c0, r0, c1, r1), w, st in zip(seg, width, strength):
        pad = 3.0 * w
        ra, rb = int(max(min(r0, r1) - pad, 0)), int(min(max(r0, r1) + pad + 1, n0))
        ca, cb = int(max(min(c0, c1) - pad, 0)), int(min(max(c0, c1) + pad + 1, n1))
        if ra >= rb or ca >= cb:
            continue
        rr = np.arange(ra, rb, dtype=np.float64)[:, None]
        cc = np.arange(ca, cb, dtype=np.float64)[None, :]
        dc, dr = c1 - c0, r1 - r0
        t = np.clip(((cc - c0) * dc + (rr - r0) * dr) / (dc * dc + dr * dr + 1e-12), 0.0, 1.0)
        d2 = (cc - c0 - t * dc) ** 2 + (rr - r0 - t * dr) ** 2
        wt = w * (1.0 - 0.6 * t)  # vessels taper towards the periphery
        val = st * (1.0 - 0.5 * t) * np.exp(-np.minimum(d2 / (2.0 * wt * wt), 30.0))
        np.maximum(field[ra:rb, ca:cb], val, out=field[ra:rb, ca:cb])


# ----------------------------------------------------------------------------
# one image
# ----------------------------------------------------------------------------


def render_image(
    class_id: int, rng: np.random.Generator, size: int = 128, return_lesion: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one synthetic frontal chest X-ray.

    Args:
        class_id: 0 normal, 1 bacteria (focal consolidation in one lung),
            2 virus (diffuse bilateral perihilar reticular texture),
            3 COVID-19 (bilateral peripheral lower-zone ground-glass haze).
        rng: numpy Generator; the image is a pure function of its state, so
            ``np.random.default_rng(k)`` always gives the same image.
        size: output height and width in pixels (>= 16).
        return_lesion: also return the finding's density map.

    Returns:
        ``uint8`` array of shape ``(size, size)``: grayscale, bright = dense
        (bone, heart), dark = air (lungs, background). The image's right side
        is the patient's left. With ``return_lesion``, a tuple
        ``(image, lesion)`` where ``lesion`` is a ``float32`` ``(size, size)``
        map of the density the finding added (all zeros for normal), e.g. to
        check that a saliency map points at the lesion.

    The generator state fixes the patient and the acquisition independently
    of ``class_id``: rendering the same seed as two classes gives the same
    patient, differing only by the finding.

    Example:
        >>> import numpy as np
        >>> img = render_image(3, np.random.default_rng(0), size=64)
        >>> img.shape, img.dtype
        ((64, 64), dtype('uint8'))
    """
    class_id = int(class_id)
    if class_id not in (0, 1, 2, 3):
        raise ValueError(f"class_id must be 0..3 ({', '.join(CLASS_NAMES)}), got {class_id}")
    size = int(size)
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    n = size
    # Three independent streams: the same rng state gives the same patient and
    # acquisition for every class_id, so rendering one seed with two classes
    # differs only by the finding (paired / counterfactual images).
    g_anat, g_path, g_acq = (np.random.default_rng(int(k)) for k in rng.integers(0, 2**62, size=3))
    px = n / 2.0  # pixels per patient unit at scale 1 (the image spans [-1, 1])

    # --- patient pose: image coords (x, y) -> patient coords (u, v) ---------
    # u: left-right, u > 0 is the image right = patient's left; v: downwards.
    coords = (np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0
    x, y = np.meshgrid(coords, coords)
    scale = g_anat.uniform(0.88, 1.04)
    sx = scale * g_anat.uniform(0.94, 1.08)  # chest width relative to height
    sy = scale
    theta = np.deg2rad(g_anat.uniform(-4.0, 4.0))
    tx, ty = g_anat.uniform(-0.05, 0.05), g_anat.uniform(-0.02, 0.07)
    c, s = np.cos(theta), np.sin(theta)
    u = (c * (x - tx) + s * (y - ty)) / sx
    v = (-s * (x - tx) + c * (y - ty)) / sy
    a = np.abs(u)  # distance from the midline; both hemithoraces share it
    edge = 0.02  # soft-edge width in patient units

    def to_pixels(uu, vv):
        xx = tx + c * sx * uu - s * sy * vv
        yy = ty + s * sx * uu + c * sy * vv
        return (xx + 1.0) * px - 0.5, (yy + 1.0) * px - 0.5

    # --- body: attenuation grows with the path length through a cylinder ----
    torso_w = g_anat.uniform(0.90, 1.0)
    half_w = torso_w * (1.0 - 0.07 * (v - 0.2) ** 2)  # chest widest at the lower ribs
    top = -0.86 + 0.10 * (a / torso_w) ** 2  # sloping shoulders
    path = np.sqrt(np.clip(1.0 - (a / half_w) ** 2, 0.0, 1.0))
    torso = (0.35 + 0.65 * path) * _sig((half_w - a) / 0.025) * _sig((v - top) / 0.04)
    neck = (0.4 + 0.6 * np.sqrt(np.clip(1.0 - (a / 0.3) ** 2, 0.0, 1.0))) * _sig((0.3 - a) / 0.03)
    body = np.maximum(torso, 0.75 * neck * _sig((-0.6 - v) / 0.05))
    dens = 0.5 * body

    # --- lungs: superellipses narrowing towards the apex --------------------
    lungs = []
    lung_par = []
    for side in (-1, 1):  # -1 = image left = patient's right lung (larger)
        big = side < 0
        ac = g_anat.uniform(0.43, 0.47) if big else g_anat.uniform(0.43, 0.46)
        ra = g_anat.uniform(0.34, 0.38) if big else g_anat.uniform(0.31, 0.35)
        rv = g_anat.uniform(0.66, 0.73) if big else g_anat.uniform(0.63, 0.70)
        vc = -0.08 if big else -0.05
        vdome = g_anat.uniform(0.30, 0.40) if big else g_anat.uniform(0.36, 0.46)
        au = side * u  # > 0 inside this hemithorax
        tt = np.clip((v - (vc - rv)) / (2.0 * rv), 0.0, 1.0)
        e = (np.abs(au - ac) / (ra * (0.5 + 0.5 * np.sqrt(tt)))) ** 2.4 + (np.abs(v - vc) / rv) ** 2.4
        mask = _sig((1.0 - e) / 0.08)
        med = 0.08 + 0.06 * np.clip((v + 0.3) / 0.7, 0.0, 1.0)  # mediastinum widens downwards
        mask *= _sig((au - med) / edge)
        diaphragm = vdome + 0.24 * ((au - ac) / ra) ** 2  # dome; deep costophrenic angle
        mask *= _sig((diaphragm - v) / edge)
        lungs.append(mask)
        lung_par.append((side, ac, ra, rv, vc, vdome, au, e))

    # heart: tilted ellipse bulging to the image right (patient's left)
    hx, hy = g_anat.uniform(0.13, 0.19), g_anat.uniform(0.28, 0.36)
    hw, hh = g_anat.uniform(0.28, 0.34), g_anat.uniform(0.21, 0.27)
    ht = np.deg2rad(-25.0 + g_anat.uniform(-8.0, 8.0))
    hu = np.cos(ht) * (u - hx) + np.sin(ht) * (v - hy)
    hv = -np.sin(ht) * (u - hx) + np.cos(ht) * (v - hy)
    hh = np.where(hv < 0, 1.8 * hh, hh)  # upper border fades into the hila
    heart = _sig((1.0 - (hu / hw) ** 2 - (hv / hh) ** 2) / 0.10)
    lungs = [lung * (1.0 - 0.9 * heart) for lung in lungs]
    lung = np.clip(lungs[0] + lungs[1], 0.0, 1.0)

    # air in the lungs: darkest where the lung is thickest, denser at the bases
    lung_dark = g_anat.uniform(0.30, 0.38)
    core = np.clip(lung_par[0][7], 0, 1) * (u < 0) + np.clip(lung_par[1][7], 0, 1) * (u >= 0)
    dens -= lung_dark * lung * (1.0 - 0.25 * core) * (1.0 - 0.2 * _sig((v - 0.15) / 0.15))

    # --- mediastinum and heart (one soft-tissue shadow), spine, trachea -----
    mediast = _sig((0.11 + 0.04 * np.clip((v + 0.3) / 0.7, 0, 1) - a) / 0.025) * _sig((0.7 - v) / 0.05)
    # below the diaphragm domes: liver / abdomen, as dense as the heart
    abdomen = _sig((v - 0.42 - 0.1 * a) / 0.06) * (1.0 - lung) * body
    dens += 0.13 * np.maximum(np.maximum(mediast * body, heart), abdomen)
    spine = np.exp(-np.minimum((u / 0.075) ** 2, 30.0)) * _sig((v + 1.0) / 0.05)
    vert_phase = g_anat.uniform(0.0, 2.0 * np.pi)
    dens += 0.07 * spine * (0.75 + 0.25 * np.cos(2.0 * np.pi * v / 0.11 + vert_phase))
    dens -= 0.07 * np.exp(-np.minimum((u / 0.03) ** 2, 30.0)) * _sig((-0.2 - v) / 0.03)  # trachea

    # --- bones: ribs and clavicles -------------------------------------------
    xr = np.clip(a - 0.05, 0.0, None)
    thorax = _sig((a - 0.06) / edge) * _sig((torso_w - 0.06 - a) / 0.03)
    # posterior ribs: rise a little from the spine, then curve down laterally
    w_post = v - (-0.25 * xr + 0.85 * xr**2)
    spacing = g_anat.uniform(0.11, 0.125)
    phase = g_anat.uniform(0.0, 1.0)
    post = np.clip((np.cos(2 * np.pi * (w_post / spacing + phase)) - 0.3) / 0.7, 0.0, 1.0) ** 0.6
    post *= _sig((w_post + 0.80) / 0.03) * _sig((0.42 - w_post) / 0.05)
    # anterior ribs run down towards the midline, fainter
    w_ant = v - (-0.50 * xr + 0.15 * xr**2)
    ant = np.clip((np.cos(2 * np.pi * (w_ant / 0.16 + phase)) - 0.45) / 0.55, 0.0, 1.0)
    ant *= _sig((w_ant + 0.75) / 0.05) * _sig((0.05 - w_ant) / 0.05)
    rib_amp = g_anat.uniform(0.04, 0.07)
    dens += thorax * (rib_amp * post + 0.45 * rib_amp * ant) * (0.25 + 0.75 * lung)

    clav_v = -0.70 + g_anat.uniform(-0.04, 0.04) - 0.22 * xr + 0.12 * xr**2
    clav = np.exp(-np.minimum(((v - clav_v) / 0.04) ** 2, 30.0))
    dens += 0.12 * clav * _sig((a - 0.08) / 0.02) * _sig((0.78 - a) / 0.04)

    # --- hilar vessels (normal lung markings) --------------------------------
    n_seg = 9
    seg_u0, seg_v0, seg_u1, seg_v1, seg_w, seg_st = [], [], [], [], [], []
    for side in (-1, 1):
        hil_u, hil_v = side * g_anat.uniform(0.15, 0.19), g_anat.uniform(-0.12, -0.04)
        ang = g_anat.uniform(-1.2, 1.3, n_seg)  # radians from "outwards", + = downwards
        length = g_anat.uniform(0.22, 0.48, n_seg)
        ex, ey = hil_u + side * np.cos(ang) * length, hil_v + np.sin(ang) * length
        f = g_anat.uniform(0.4, 0.7, n_seg)  # one smaller branch off each vessel
        bx, by = hil_u + f * (ex - hil_u), hil_v + f * (ey - hil_v)
        bang = ang + g_anat.choice([-1.0, 1.0], n_seg) * g_anat.uniform(0.4, 0.8, n_seg)
        blen = g_anat.uniform(0.10, 0.22, n_seg)
        seg_u0 += [np.full(n_seg, hil_u), bx]
        seg_v0 += [np.full(n_seg, hil_v), by]
        seg_u1 += [ex, bx + side * np.cos(bang) * blen]
        seg_v1 += [ey, by + np.sin(bang) * blen]
        seg_w += [g_anat.uniform(0.010, 0.017, n_seg), g_anat.uniform(0.007, 0.011, n_seg)]
        seg_st += [g_anat.uniform(0.6, 1.0, n_seg), g_anat.uniform(0.4, 0.8, n_seg)]
    c0, r0 = to_pixels(np.concatenate(seg_u0), np.concatenate(seg_v0))
    c1, r1 = to_pixels(np.concatenate(seg_u1), np.concatenate(seg_v1))
    vessels = np.zeros((n, n))
    _draw_segments(
        vessels,
        np.stack([c0, r0, c1, r1], axis=1),
        np.maximum(np.concatenate(seg_w) * px * scale, 0.35),
        np.concatenate(seg_st),
    )
    vessel_amp = g_anat.uniform(0.05, 0.08)

    # nuisance in every class: breast / soft-tissue shadow over the lower
    # outer lungs, a mimic of COVID-19's basal haze
    if g_anat.random() < 0.35:
        breast = _sig((v - g_anat.uniform(0.05, 0.25)) / 0.08) * _sig((a - 0.35) / 0.1) * body
        dens += g_anat.uniform(0.02, 0.06) * breast

    # --- class-specific finding ----------------------------------------------
    lesion = np.zeros_like(u)
    if class_id == 1:  # bacteria: one lobar consolidation in one lung
        k = int(g_path.integers(2))
        side, ac, ra, rv, vc, vdome, au, e = lung_par[k]
        lobe = g_path.choice(3, p=[0.25, 0.25, 0.5])  # upper / middle / lower zone
        cv = [vc - rv * g_path.uniform(0.25, 0.55), vc + g_path.uniform(-0.05, 0.2), vdome - g_path.uniform(0.0, 0.15)][lobe]
        cu = side * (ac + ra * g_path.uniform(-0.25, 0.4))
        rx, ry = g_path.uniform(0.12, 0.26), g_path.uniform(0.11, 0.24)
        bt = g_path.uniform(-0.6, 0.6)
        bu = np.cos(bt) * (u - cu) + np.sin(bt) * (v - cv)
        bv = -np.sin(bt) * (u - cu) + np.cos(bt) * (v - cv)
        r = np.sqrt((bu / rx) ** 2 + (bv / ry) ** 2)
        r = r * (1.0 + 0.22 * _smooth_noise(g_path, n, 7))  # irregular margin
        blob = _sig((1.0 - r) / 0.18)
        if g_path.random() < 0.5:  # sharp border along a fissure
            fa = g_path.uniform(0.0, np.pi)
            blob *= _sig(((u - cu) * np.cos(fa) + (v - cv) * np.sin(fa) + 0.4 * min(rx, ry)) / 0.01)
        blob *= 0.8 + 0.2 * _smooth_noise(g_path, n, 24)
        sev = g_path.beta(2.0, 1.6)
        # the opacity lies within the lung (and partly effaces its border)
        lesion = (0.12 + 0.24 * sev) * blob * np.clip(lungs[k] * 1.15, 0.0, 1.0)
    elif class_id == 2:  # virus: bilateral perihilar reticular texture
        sev = g_path.beta(2.0, 1.6)
        band = _blur(g_path.standard_normal((n, n)), 0.011 * n) - _blur(g_path.standard_normal((n, n)), 0.03 * n)
        band /= band.std() + 1e-8
        net = np.exp(-((band / 0.45) ** 2))  # zero-crossings form a net of fine lines
        patch = _sig(_smooth_noise(g_path, n, 10) / 0.6)
        env = np.exp(-((a - 0.18) ** 2 + (v + 0.08) ** 2) / (2 * 0.30**2)) + 0.35  # perihilar
        asym = np.where(u < 0, g_path.uniform(0.7, 1.0), g_path.uniform(0.7, 1.0))
        lesion = (0.07 + 0.11 * sev) * (0.65 * net + 0.35 * patch) * env * asym * lung
        # peribronchial thickening: the hilar vessels look heavier
        lesion += 0.6 * sev * vessel_amp * vessels * _sig((lung - 0.2) / 0.1)
    elif class_id == 3:  # COVID-19: bilateral peripheral lower-zone ground glass
        sev = g_path.beta(2.0, 1.6)
        haze = np.zeros_like(u)
        for k in range(2):
            side, ac, ra, rv, vc, vdome, au, e = lung_par[k]
            periph = np.clip(e, 0.0, 1.2) ** 1.5 * _sig((au - ac + 0.1 * ra) / (0.25 * ra))
            lower = _sig((v - vc - g_path.uniform(-0.15, 0.1)) / 0.15)
            haze += g_path.uniform(0.6, 1.0) * (0.5 * periph + 0.5 * periph * lower + 0.3 * lower) * lungs[k]
        haze *= _sig((_smooth_noise(g_path, n, 6) + 0.6) / 0.5)  # patchy
        haze = _blur(haze, 0.02 * n)
        lesion = (0.14 + 0.17 * sev) * haze

    dens += lesion
    dens += vessel_amp * vessels * _sig((lung - 0.2) / 0.1)

    # --- acquisition: blur, exposure, noise ----------------------------------
    img = _blur(dens, g_acq.uniform(0.25, 1.0) * n / 128.0)
    img += 0.015 * _smooth_noise(g_acq, n, 12)  # uneven exposure / scatter
    lo, hi = g_acq.uniform(-0.02, 0.05), g_acq.uniform(0.70, 0.80)
    img = np.clip((img - lo) / (hi - lo), 0.0, None)
    img = np.tanh(img * 1.1) / np.tanh(1.1)  # soft shoulder: dense areas do not clip
    img = img ** g_acq.uniform(0.8, 1.25)
    img += g_acq.uniform(0.008, 0.03) * g_acq.standard_normal((n, n))
    img = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    if return_lesion:
        return img, lesion.astype(np.float32)
    return img


# ----------------------------------------------------------------------------
# many images
# ----------------------------------------------------------------------------


def _image_rng(seed: int, image_id: int) -> np.random.Generator:
    # One independent stream per image: an image does not depend on how many
    # images come before it, only on (seed, id).
    return np.random.default_rng([int(seed), int(image_id)])


def make_synthetic_arrays(
    counts: Sequence[int] = (40, 40, 40, 40), image_size: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render labelled synthetic images in memory (no files), shuffled.

    Args:
        counts: images per class, in the order normal, bacteria, virus,
            COVID-19.
        image_size: height and width in pixels.
        seed: the same seed gives identical arrays.

    Returns:
        ``(images, labels)``: ``uint8`` array ``(N, size, size)`` and ``int64``
        class indices ``(N,)``.

    Example:
        >>> x, y = make_synthetic_arrays((2, 2, 2, 1), image_size=32, seed=1)
        >>> x.shape, y.tolist().count(3)
        ((7, 32, 32), 1)
    """
    counts = _check_counts(counts, "counts")
    labels = np.repeat(np.arange(4), counts)
    labels = np.random.default_rng([int(seed), 0x5EED]).permutation(labels)
    images = np.empty((len(labels), image_size, image_size), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = render_image(int(label), _image_rng(seed, i), image_size)
    return images, labels.astype(np.int64)


def _check_counts(value, where: str) -> tuple[int, int, int, int]:
    try:
        out = tuple(int(c) for c in value)
    except TypeError as err:
        raise TypeError(f"{where} must be 4 integers (normal, bacteria, virus, COVID-19)") from err
    if len(out) != 4 or any(c < 0 for c in out):
        raise ValueError(f"{where} must be 4 non-negative integers (normal, bacteria, virus, COVID-19), got {value!r}")
    return out


def _normalize_params(counts, image_size, seed, image_format) -> dict:
    if counts is None:
        counts = DEFAULT_COUNTS
    if not isinstance(counts, Mapping):
        raise TypeError('counts must map split names to 4 class counts, e.g. {"train": (60, 100, 60, 12), ...}')
    unknown = set(counts) - set(_SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {list(_SPLITS)}")
    norm = {split: list(_check_counts(counts[split], f"counts[{split!r}]")) for split in _SPLITS if split in counts}
    if not any(sum(c) for c in norm.values()):
        raise ValueError("counts asks for no images")
    fmt = str(image_format).lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    image_size = int(image_size)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    return {
        "generator": "keras_cxr.data.synthetic",
        "version": GENERATOR_VERSION,
        "counts": norm,
        "image_size": image_size,
        "seed": int(seed),
        "image_format": fmt,
    }


def _read_marker(path: Path):
    try:
        return json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(path: Path, params: dict) -> bool:
    info = _read_marker(path)
    if not isinstance(info, dict) or info.get("params") != params:
        return False
    return all((path / f"{split}.csv").is_file() for split in params["counts"])


def _write_dataset(root: Path, params: dict) -> None:
    seed = params["seed"]
    size = params["image_size"]
    ext, pil_format = _FORMATS[params["image_format"]]
    split_labels = {
        split: np.repeat(np.arange(4), counts) for split, counts in params["counts"].items()
    }
    total = sum(len(lab) for lab in split_labels.values())
    width = max(6, len(str(total - 1)))
    order_rng = np.random.default_rng([seed, 0xC5F])
    # file ids are a random permutation, so names carry no class or split
    ids = order_rng.permutation(total)
    (root / "images").mkdir(parents=True)
    header = "new_filename," + ",".join(CLASS_NAMES) + "\n"
    start = 0
    for split, labels in split_labels.items():
        rows = []
        for j, label in enumerate(labels):
            image_id = int(ids[start + j])
            name = f"syn_{image_id:0{width}d}.{ext}"
            img = render_image(int(label), _image_rng(seed, image_id), size)
            save_kw = {"quality": 90} if pil_format == "JPEG" else {}
            Image.fromarray(img).save(root / "images" / name, format=pil_format, **save_kw)
            onehot = ["0"] * 4
            onehot[int(label)] = "1"
            rows.append(name + "," + ",".join(onehot) + "\n")
        start += len(labels)
        shuffled = [rows[k] for k in order_rng.permutation(len(rows))]
        with open(root / f"{split}.csv", "w", newline="\n") as fh:
            fh.write(header + "".join(shuffled))
    info = {"params": params, "class_names": list(CLASS_NAMES), "n_images": total}
    (root / _MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def make_synthetic_dataset(
    out_dir,
    counts: Mapping[str, Sequence[int]] | None = None,
    image_size: int = 128,
    seed: int = 0,
    image_format: str = "png",
    overwrite: bool = False,
) -> Path:
    """Write a synthetic chest-X-ray dataset in the Kaggle CSV layout.

    Creates ``out_dir/images/syn_NNNNNN.<ext>`` and ``train.csv``, ``val.csv``
    and ``test.csv`` (header ``new_filename,normal,bacteria,virus,COVID-19``,
    one-hot integer labels, rows shuffled; the test split is labelled too).
    File numbers are a random permutation, so names reveal neither class nor
    split. The parameters are stored in ``out_dir/synthetic.json``.

    The dataset is generated in a temporary sibling folder and renamed into
    place, so an interrupted run never leaves a folder that looks complete.
    If ``out_dir`` already holds a complete dataset made with the same
    parameters it is reused as is (no work).

    Args:
        out_dir: destination folder; must not exist, be empty, or hold a
            dataset written by this function.
        counts: ``{"train": (normal, bacteria, virus, covid), "val": ...,
            "test": ...}``; splits left out are not written. Defaults to
            :data:`DEFAULT_COUNTS` (train 60/100/60/12, val and test
            15/25/15/5: 352 images).
        image_size: height and width of every image in pixels.
        seed: same seed and parameters give byte-identical files.
        image_format: ``"png"`` (lossless, default), ``"jpeg"`` or ``"jpg"``
            (quality 90, like the real data).
        overwrite: replace a dataset in ``out_dir`` that this function wrote
            with other parameters. A folder with other contents is never
            touched.

    Returns:
        ``Path`` of the dataset folder.

    Raises:
        FileExistsError: ``out_dir`` holds something else, or a synthetic
            dataset with other parameters and ``overwrite`` is False.

    Example:
        >>> root = make_synthetic_dataset("/tmp/cxr_syn", counts={"train": (6, 10, 6, 2)}, image_size=64)
        >>> sorted(p.name for p in root.iterdir())
        ['images', 'synthetic.json', 'train.csv']
    """
    params = _normalize_params(counts, image_size, seed, image_format)
    out = Path(out_dir).expanduser().absolute()
    if _is_complete(out, params):
        return out
    replace_old = False
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if _read_marker(out) is None:
                raise FileExistsError(
                    f"{out} is not empty and is not a synthetic dataset; choose another folder"
                )
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a synthetic dataset with other parameters; "
                    "pass overwrite=True to replace it or choose another folder"
                )
            replace_old = True
    out.parent.mkdir(parents=True, exist_ok=True)
    # not tempfile.mkdtemp: its 0700 mode would survive the rename
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        _write_dataset(tmp, params)
        if replace_old:
            trash = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
            os.rename(out, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, out)  # atomic; also replaces an empty folder on POSIX
        except OSError:
            # another process finished the same dataset first: use theirs
            if _is_complete(out, params):
                return out
            if not out.is_dir() or any(out.iterdir()):
                raise
            out.rmdir()  # an empty folder that rename would not replace (Windows)
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------
# default dataset in the user cache
# ----------------------------------------------------------------------------


def _cache_root() -> Path:
    env = os.environ.get("KERAS_CXR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keras_cxr"


def default_dataset_dir(
    counts: Mapping[str, Sequence[int]] | None = None,
    image_size: int = 128,
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Cache folder of the synthetic dataset with these parameters.

    The cache root is ``$KERAS_CXR_CACHE`` if set, else ``~/.cache/keras_cxr``.
    The folder name encodes the generator version, size, seed and a short hash
    of all parameters, so different settings never collide. Nothing is
    created.

    Args:
        counts, image_size, seed, image_format: as in
            :func:`make_synthetic_dataset`.

    Returns:
        e.g. ``~/.cache/keras_cxr/synthetic-v1-128px-seed0-<hash>``.

    Example:
        >>> default_dataset_dir().name.startswith("synthetic-v")
        True
    """
    params = _normalize_params(counts, image_size, seed, image_format)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    name = f"synthetic-v{GENERATOR_VERSION}-{params['image_size']}px-seed{params['seed']}-{digest}"
    return _cache_root() / name


def ensure_default_dataset(
    counts: Mapping[str, Sequence[int]] | None = None,
    image_size: int = 128,
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Return the cached synthetic dataset, generating it on first use.

    Repeated calls (and other processes) reuse the complete dataset in
    :func:`default_dataset_dir`; generating the default 352 images takes a
    few seconds.

    Args:
        counts, image_size, seed, image_format: as in
            :func:`make_synthetic_dataset` (defaults: :data:`DEFAULT_COUNTS`,
            128 px, seed 0, PNG).

    Returns:
        ``Path`` of the dataset folder (``images/``, ``train.csv``,
        ``val.csv``, ``test.csv``).

    Example:
        >>> root = ensure_default_dataset()
        >>> (root / "train.csv").is_file()
        True
    """
    out = default_dataset_dir(counts, image_size, seed, image_format)
    return make_synthetic_dataset(out, counts, image_size, seed, image_format)
