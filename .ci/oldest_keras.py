"""keras-cxr on the oldest Keras setup.cfg admits: it works, and says which patches it skips.

Run by `.ci/oldest-keras` in an environment with that Keras installed over
the project. Prints one "N passed, 0 failed" line; exits non-zero on a failure.
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

import numpy as np

import keras_cxr
from keras_cxr import accel, models
from keras_cxr.accel.versions import AccelWarning
from keras_cxr.seeding import set_seed

import keras  # noqa: E402  (after keras_cxr, which pins the torch backend)

checks = []
os.chdir(pathlib.Path(__file__).resolve().parents[1])  # the recipes are named relative to the repository


def check(name, ok, detail=""):
    checks.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)


print(f"keras {keras.__version__}, keras-cxr {keras_cxr.__version__}")


def train_and_predict():
    set_seed(0)
    model = models.build("cxr_resnet", image_size=64)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 4)]
    losses = [float(model.train_on_batch(x, y)) for _ in range(2)]
    return losses, model.predict(x, verbose=0)


losses, probs = train_and_predict()
check("build cxr_resnet, two train_on_batch steps, predict (Keras's own code)",
      all(np.isfinite(losses)) and probs.shape == (4, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5),
      f"losses {np.round(losses, 4).tolist()}")

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with accel.enabled() as status:
        fast_losses, fast_probs = train_and_predict()
skipped = [name for name, state in status.items() if state.startswith("skipped")]
messages = [str(w.message) for w in caught if issubclass(w.category, AccelWarning)]
check("accel.enabled(): the same training and predictions",
      np.allclose(fast_losses, losses, rtol=1e-4) and np.allclose(fast_probs, probs, atol=1e-4))
check("one warning names every skipped patch and the versions",
      len(messages) == 1 and all(name in messages[0] for name in skipped) and keras.__version__ in messages[0],
      messages[0] if messages else "no warning")

keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # what precision "auto" picks on a bfloat16 CPU
try:
    with accel.enabled():
        bf16_losses, bf16_probs = train_and_predict()
finally:
    keras.mixed_precision.set_dtype_policy("float32")
check("mixed_bfloat16 under accel: two train_on_batch steps and predict, close to float32",
      np.allclose(bf16_losses, losses, rtol=5e-2) and np.allclose(bf16_probs.sum(axis=1), 1, atol=1e-3),
      f"losses {np.round(bf16_losses, 4).tolist()}")

with tempfile.TemporaryDirectory() as out:
    run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "keras-cxr"), "fit", "recipes/smoke.py",
                          "--epochs", "2", "--set", "swa.start_epoch=none", "--out", out, "--quiet"],
                         capture_output=True, text=True, timeout=900)
    check("keras-cxr fit recipes/smoke.py --epochs 2 --set swa.start_epoch=none",
          run.returncode == 0 and os.path.exists(os.path.join(out, "val_probs.csv")),
          run.stdout.strip().splitlines()[-1] if run.returncode == 0 and run.stdout.strip() else run.stderr[-1500:])
    check("the CLI warns about the skipped patches", "AccelWarning" in run.stderr or "skipped" in run.stderr)

print(f"{sum(checks)} passed, {len(checks) - sum(checks)} failed")
sys.exit(0 if all(checks) else 1)
