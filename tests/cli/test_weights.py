"""`keras-cxr weights fetch` / `weights list`, and `fit` without a network: one line, nothing written (no network)."""

import pathlib

import keras
import pytest

from keras_cxr.models import pretrained
from tests.cli.support import invoke, one_line_error
from tests.models.test_pretrained import UNREACHABLE, caches, fake_downloads, fake_imagenet_file  # noqa: F401  - fixtures

REPO = pathlib.Path(__file__).resolve().parents[2]


def _listing(output):
    return {line.split()[0]: line.split(None, 2)[1:] for line in output.strip().splitlines()}


def test_fit_without_network_says_so_in_one_line_and_writes_nothing(caches, cxr4_dir):  # noqa: F811
    run = caches / "run"
    result = invoke("fit", REPO / "recipes" / "effv2l.py", "--data-dir", cxr4_dir, "--epochs", 1,
                    "--set", "swa.start_epoch=none", "--out", run, "--quiet")
    cached = caches / "keras" / "models" / "efficientnetv2-l_notop.h5"
    one_line_error(result, "model 'effv2_l'", UNREACHABLE + "efficientnetv2-l_notop.h5", "Connection refused",
                   f"local copy at {cached}", "keras-cxr weights fetch effv2_l --out DIR", "set KERAS_HOME=DIR",
                   "--set model.weights=PATH")
    assert not run.exists() and not cached.exists()


def test_fit_without_a_keras_hub_preset_says_so_after_the_progress_line(caches, cxr4_dir):  # noqa: F811
    run = caches / "run"
    result = invoke("fit", REPO / "recipes" / "swin_l.py", "--data-dir", cxr4_dir, "--out", run)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    error = result.output.strip().splitlines()[-1]
    for part in ["Error: model 'swin_l'", "kaggle://keras/swin-transformer/keras/swin_large_patch4_window12_384/1",
                 str(caches / "kagglehub" / "models" / "keras" / "swin-transformer"), "set KAGGLEHUB_CACHE=DIR",
                 "keras-cxr weights fetch swin_l --out DIR"]:
        assert part in error, (part, error)
    assert not run.exists()


def test_fetch_fills_out_and_list_finds_it_there(tmp_path, monkeypatch, fake_downloads):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    out = tmp_path / "usb"
    result = invoke("weights", "fetch", "effv2_s", "swin_t", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    effv2 = out / "models" / "efficientnetv2-s_notop.h5"
    swin = out / "models" / "keras" / "swin-transformer" / "keras" / "swin_tiny_patch4_window7_224" / "1"
    assert effv2.is_file() and (swin / "config.json").is_file()
    assert f"effv2_s        {effv2}" in result.output and f"swin_t         {swin}" in result.output
    assert "set KERAS_HOME and KAGGLEHUB_CACHE" in result.output
    fetched = [call[1] if len(call) == 5 else call[0] for call in fake_downloads]  # origins, handles
    assert fetched == [pretrained.requirement("effv2_s").origin, "keras/swin-transformer/keras/"
                       "swin_tiny_patch4_window7_224/1"]
    # Nothing went to the default caches (Keras may write its keras.json into KERAS_HOME when imported here).
    assert not (tmp_path / "keras" / "models").exists() and not (tmp_path / "kagglehub").exists()

    listed = _listing(invoke("weights", "list", "--dir", out).output)
    assert listed["effv2_s"] == ["cached", str(effv2)] and listed["swin_t"] == ["cached", str(swin)]
    assert listed["effv2_l"][0] == "missing" and listed["tiny_effv2"] == ["-", "no pretrained weights"]
    # Copied to an offline machine: the caches point at the folder.
    monkeypatch.setenv("KERAS_HOME", str(out))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(out))
    result = invoke("weights", "list")
    assert result.exit_code == 0 and _listing(result.output)["effv2_s"] == ["cached", str(effv2)]
    assert _listing(result.output)["swin_t"][0] == "cached"
    # Already there: nothing is downloaded again.
    assert invoke("weights", "fetch", "effv2_s", "swin_t").exit_code == 0 and len(fake_downloads) == 2


def test_fetch_refusals_are_one_line(caches):  # noqa: F811
    one_line_error(invoke("weights", "fetch", "tiny_effv2"), "model 'tiny_effv2' has no pretrained weights")
    one_line_error(invoke("weights", "fetch", "no_such_net"), "unknown model name 'no_such_net'")
    one_line_error(invoke("weights", "fetch", "convnext_t", "--quiet"), UNREACHABLE + "convnext_tiny_notop.h5",
                   "keras-cxr weights fetch convnext_t --out DIR")


@pytest.mark.slow
def test_fit_starts_from_a_copied_folder_offline(tmp_path, monkeypatch, caches, cxr4_dir):  # noqa: F811
    """The fetched folder (faked from random weights) copied in: the same kind of command trains, offline."""
    from keras_cxr.kaggle import normalize_competition
    from tests.test_kaggle import make_competition

    make_competition(tmp_path / "raw", cxr4_dir)
    normalize_competition(tmp_path / "raw", tmp_path / "data")
    copied = tmp_path / "copied"
    fake_imagenet_file(str(copied / "models" / "efficientnetv2-s_notop.h5"), keras.applications.EfficientNetV2S)
    monkeypatch.setenv("KERAS_HOME", str(copied))
    result = invoke("fit", REPO / "recipes" / "effv2s.py", "--data-dir", tmp_path / "data", "--epochs", 1,
                    "--image-size", 32, "--batch-size", 8, "--set", "swa.start_epoch=none",
                    "--set", "schedule.warmup_epochs=0", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.keras").is_file()


def _xrv_checkpoint(path, blocks=None):
    """A torchxrayvision-layout state_dict file (1 channel, 18-way classifier, op_threshs), random weights."""
    import torch

    from keras_cxr.models import densenet
    from tests.models import torch_densenet

    reference = torch_densenet.reference(blocks or densenet.BLOCKS, in_channels=1, classes=18, op_threshs=True)
    torch.save(reference.state_dict(), path)
    return path


@pytest.mark.slow
def test_convert_writes_a_weights_file_that_models_load(tmp_path):
    from keras_cxr import models
    from tests.models.support import assert_same_weights, backbone_weights

    checkpoint = _xrv_checkpoint(tmp_path / "xrv.pt")
    out = tmp_path / "weights" / "xrv.weights.h5"
    result = invoke("weights", "convert", checkpoint, "--model", "densenet121_xrv", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{checkpoint} -> {out}: converted 604 tensors (densenet); dropped the checkpoint's classifier "
        "(classifier.weight (18, 1024), classifier.bias (18,)): keras-cxr's head is trained for your classes",
        f"Fine-tune from it: keras-cxr fit RECIPE --set model.name=densenet121_xrv --set model.weights={out}",
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["xrv.weights.h5"]  # no temporary file left
    from_file = models.build("densenet121_xrv", image_size=64, weights=out)
    from_checkpoint = models.build("densenet121_xrv", image_size=64, weights=checkpoint)
    assert_same_weights(backbone_weights(from_file), backbone_weights(from_checkpoint))


def test_convert_refusals_are_one_line(tmp_path):
    import torch

    checkpoint = _xrv_checkpoint(tmp_path / "xrv.pt")
    out = tmp_path / "out.weights.h5"
    one_line_error(invoke("weights", "convert", checkpoint, "--model", "densenet121", "--out", out),
                   f"PyTorch checkpoint {checkpoint} does not fit the densenet backbone: 1 mis-shaped tensor "
                   "(features.conv0.weight: checkpoint (64, 1, 7, 7), model (64, 3, 7, 7))",
                   "use model densenet121_xrv")
    one_line_error(invoke("weights", "convert", checkpoint, "--model", "cxr_resnet", "--out", out),
                   "--model cxr_resnet: keras-cxr converts PyTorch checkpoints for ", "densenet121, densenet121_xrv")
    one_line_error(invoke("weights", "convert", checkpoint, "--model", "densenet121_xrv", "--out", tmp_path / "a.h5"),
                   "the file name must end in .weights.h5")
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    one_line_error(invoke("weights", "convert", whole, "--model", "densenet121_xrv", "--out", out),
                   f"PyTorch checkpoint {whole} cannot be read as a state_dict without running code",
                   "torch.save(model.state_dict(), 'state_dict.pt')")
    assert not out.exists()


def test_fit_checks_a_pytorch_checkpoint_before_writing_anything(tmp_path, cxr4_dir):
    from keras_cxr.models import densenet

    checkpoint = _xrv_checkpoint(tmp_path / "xrv.pt", blocks=(1, 1, 1, 1))
    run = tmp_path / "run"
    args = ["fit", REPO / "recipes" / "cpu.py", "--data-dir", cxr4_dir, "--epochs", 1, "--set", "swa.start_epoch=none",
            "--out", run, "--quiet"]
    one_line_error(invoke(*args, "--set", "model.name=densenet121_xrv", "--set", f"model.weights={checkpoint}"),
                   f"PyTorch checkpoint {checkpoint} does not fit the densenet backbone: 540 missing keys "
                   "('features.denseblock1.denselayer2.norm1.weight',")
    one_line_error(invoke(*args, "--set", f"model.weights={checkpoint}"),
                   f"model 'cxr_resnet' cannot load PyTorch checkpoints ({checkpoint}); keras-cxr converts them for ",
                   "densenet121, densenet121_xrv")
    assert not run.exists() and densenet.BLOCKS == (6, 12, 24, 16)
