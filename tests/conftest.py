import os
import pathlib

import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")
# The embedded synthetic data set is generated once per test session, here,
# not in the user's cache; subprocesses inherit the variable.
os.environ["KERAS_CXR_CACHE"] = tempfile.mkdtemp(prefix="keras-cxr-test-cache-")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CXR4 = (REPO / ".." / "shared" / "data" / "cxr4").resolve()


@pytest.fixture
def cxr4_dir():
    """The real chest X-ray sample beside the checkout (CI always has it)."""
    if not (CXR4 / "train.csv").exists():
        pytest.skip(f"real data not found at {CXR4} (../shared/data/cxr4 beside the repository)")
    return CXR4


@pytest.fixture(autouse=True)
def _float32_policy():
    """Tests that switch to mixed precision must not leak it into other tests."""
    import keras

    yield
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _acceleration_off_after_each_test():
    """A test that leaves `keras_cxr.accel` on would speed up, and change, the tests after it."""
    yield
    from keras_cxr import accel

    if accel.active():
        accel.disable()


@pytest.fixture(scope="session")
def untrained_model_file(tmp_path_factory):
    """A `.keras` file of an untrained cxr_resnet at 64 px (seeded), without a run directory."""
    from keras_cxr import models
    from keras_cxr.seeding import set_seed

    set_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "best.keras"
    models.build("cxr_resnet", image_size=64).save(path)
    return path
