"""Saved .keras files reload to identical predictions, also in a fresh process."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_cxr import models
from tests.models.support import REPO, TINY, default_size, random_images


@pytest.fixture(scope="module")
def saved_tiny_models(tmp_path_factory):
    """Every tiny family, trained a little and saved to .keras.

    Training first matters: keras-hub's DINOv2 reloads its fine-tuned
    position embeddings inexactly unless keras-cxr works around it.
    """
    root = tmp_path_factory.mktemp("saved")
    saved = {}
    labels = keras.utils.to_categorical(np.arange(8) % 4, 4)
    for name in TINY:
        model = models.build(name)
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="categorical_crossentropy")
        for step in range(2):
            model.train_on_batch(random_images(default_size(name), n=8, seed=10 + step), labels)
        x = random_images(default_size(name), seed=1)
        path = root / f"{name}.keras"
        model.save(path)
        np.save(root / f"{name}_x.npy", x)
        np.save(root / f"{name}_y.npy", model.predict(x, verbose=0))
        saved[name] = path
    return root, saved


@pytest.mark.parametrize("name", TINY)
def test_keras_file_reloads_to_identical_predictions(name, saved_tiny_models):
    root, saved = saved_tiny_models
    reloaded = keras.saving.load_model(saved[name])
    y = reloaded.predict(np.load(root / f"{name}_x.npy"), verbose=0)
    np.testing.assert_array_equal(y, np.load(root / f"{name}_y.npy"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "imports,load",
    [
        # Keras first: `import keras_cxr` registers the custom layers at once.
        ("import keras; import keras_cxr", "keras.saving.load_model"),
        # keras_cxr.models listed without Keras, then keras-cxr's loader.
        ("import keras_cxr.models; keras_cxr.models.names()", "keras_cxr.load_model"),
    ],
)
def test_keras_files_reload_in_fresh_process(saved_tiny_models, imports, load):
    """A process that only imports keras_cxr can load every family."""
    root, saved = saved_tiny_models
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        {imports}
        assert "keras_hub" not in sys.modules
        root = {str(root)!r}
        for name in {sorted(saved)!r}:
            model = {load}(f"{{root}}/{{name}}.keras")
            y = model.predict(np.load(f"{{root}}/{{name}}_x.npy"), verbose=0)
            diff = np.abs(y - np.load(f"{{root}}/{{name}}_y.npy")).max()
            print(name, diff)
            assert diff == 0, (name, diff)
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")


@pytest.mark.slow
def test_efficientnet_rw_s_num_features_survive_save_and_load(tmp_path):
    """keras-hub's EfficientNetBackbone.get_config() drops num_features=1792.

    A nested EfficientNetBackbone would come back with a 1280-wide top conv and
    fail to load its weights; keras-cxr nests the plain functional graph.
    """
    model = models.build("effv2_rw_s", image_size=64)
    top = model.get_layer("backbone").get_layer("top_conv")
    assert top.filters == 1792
    x = random_images(64, seed=2)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "rw_s.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.get_layer("backbone").get_layer("top_conv").filters == 1792
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)
