"""An exported ONNX file in onnxruntime against keras-cxr's own predict path: images per second.

Three ways to predict the same model on the same rows, batch 32, on the CPU:

- "keras accel": `keras_cxr.predictor.predict_csv` with `keras_cxr.accel`
  on, as `keras-cxr predict` runs it;
- "keras plain": the same with acceleration off (Keras's own code);
- "onnxruntime": the model exported by `keras_cxr.export.export_model`
  (calibration folded in when the run has one), run by
  `predict_csv` through onnxruntime's CPUExecutionProvider.

Each is timed twice: **end to end** (`predict_csv` given the file, as the
command runs it: load the model, read the CSV, decode and resize every
image, forward, average) and **forward only** (a loaded model; the same
uint8 batches, decoded once beforehand, through the model alone). One warm-up
pass, then `--rounds` timed passes, the three ways interleaved in each
round; the median and min-max spread of images/s are printed, and the
ratios onnxruntime / keras. Also printed: the largest difference between the
ONNX and Keras probabilities over all rows.

The model is `--model` (a `.keras` or run directory; default ``runs/cpu13``,
a cxr_resnet trained 15 epochs on cxr4 with recipes/cpu.py, when it exists),
else an untrained cxr_resnet at 128 px (speed does not depend on the weights).

Usage:

```bash
python benchmarks/onnx_speed.py [--model runs/cpu13] [--csv ../shared/data/cxr4/test.csv] [--rounds 3]
```
"""

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def default_model(folder):
    """runs/cpu13 when present, else an untrained seeded cxr_resnet at 128 px saved into `folder`."""
    trained = REPO / "runs" / "cpu13"
    if (trained / "best.keras").is_file():
        return trained, "cxr_resnet trained 15 epochs on cxr4 (runs/cpu13)"
    from keras_cxr import models
    from keras_cxr.seeding import set_seed

    set_seed(0)
    path = pathlib.Path(folder) / "untrained.keras"
    models.build("cxr_resnet", image_size=128).save(path)
    return path, "untrained cxr_resnet, 128 px"


def forward_only(predictor, batches, accelerate):
    """Images/s of the model alone on decoded uint8 batches."""
    from keras_cxr import accel
    from keras_cxr.export.onnx_model import OnnxPredictor

    if isinstance(predictor, OnnxPredictor):
        start = time.perf_counter()
        for batch in batches:
            predictor(batch)
        return sum(map(len, batches)) / (time.perf_counter() - start)
    from keras_cxr.predict import inference_mode

    with accel.enabled() if accelerate else contextlib.nullcontext(), inference_mode(predictor.model):
        start = time.perf_counter()
        for batch in batches:
            np.asarray(accel.inference_call(predictor.model, batch))
        return sum(map(len, batches)) / (time.perf_counter() - start)


def end_to_end(model, csv, images_dir, accelerate, calibration):
    from keras_cxr.predictor import predict_csv

    start = time.perf_counter()
    probs = predict_csv([model], csv, images_dir=images_dir, batch_size=32, accelerate=accelerate,
                        calibration=calibration)
    return len(probs) / (time.perf_counter() - start), probs.values


def summary(name, speeds):
    median = statistics.median(speeds)
    return median, f"{name:<14} {median:8.1f} img/s  (min {min(speeds):.1f}, max {max(speeds):.1f}, {len(speeds)} rounds)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .keras file or run directory (default: runs/cpu13, else untrained)")
    parser.add_argument("--csv", default=str(REPO.parent / "shared" / "data" / "cxr4" / "test.csv"))
    parser.add_argument("--images", help="image folder (default: images/ beside the CSV)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from keras_cxr import accel
    from keras_cxr.data.images import load_image
    from keras_cxr.data.table import read_table
    from keras_cxr.export import export_model
    from keras_cxr.export.onnx_model import OnnxPredictor
    from keras_cxr.predictor import Predictor

    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        model, described = (pathlib.Path(args.model), args.model) if args.model else default_model(tmp)
        run = model if model.is_dir() else model.parent
        calibration = run / "calibration.json" if (run / "calibration.json").is_file() else None
        onnx_path = pathlib.Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_model(model, onnx_path, "onnx", calibration=calibration)
        print(f"model: {described}; exported to ONNX in {time.perf_counter() - start:.1f} s"
              + (f", calibration {calibration} folded in" if calibration else ""))
        keras_predictor = Predictor.load(model)
        with accel.enabled():
            accelerated_predictor = Predictor.load(model)  # prepared for accel, as predict does
        onnx_predictor = OnnxPredictor.load(onnx_path)
        table = read_table(args.csv, images_dir=args.images, class_names=keras_predictor.class_names, labels="ignore")
        size = keras_predictor.image_size
        images = np.stack([load_image(p, size) for p in table.paths])
        batches = [images[i:i + 32] for i in range(0, len(images), 32)]
        print(f"{len(table)} rows of {args.csv} at {size} px, batch 32; torch threads {torch.get_num_threads()}, "
              f"onnxruntime {onnx_predictor.session.get_session_options().intra_op_num_threads or 'default'} "
              "intra-op threads (0 = one per physical core)")

        ways = {
            "keras accel": {"path": model, "loaded": accelerated_predictor, "accelerate": True,
                            "calibration": calibration},
            "keras plain": {"path": model, "loaded": keras_predictor, "accelerate": False, "calibration": calibration},
            "onnxruntime": {"path": onnx_path, "loaded": onnx_predictor, "accelerate": False, "calibration": None},
        }
        speeds = {(way, kind): [] for way in ways for kind in ("end to end", "forward only")}
        outputs = {}
        for round_ in range(args.rounds + 1):  # round 0 warms up (accel traces, onnxruntime allocates)
            for way, setting in ways.items():
                e2e, outputs[way] = end_to_end(setting["path"], args.csv, args.images, setting["accelerate"],
                                               setting["calibration"])
                fwd = forward_only(setting["loaded"], batches, setting["accelerate"])
                if round_:
                    speeds[(way, "end to end")].append(e2e)
                    speeds[(way, "forward only")].append(fwd)
        assert not accel.active()
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        for kind in ("end to end", "forward only"):
            print(f"\n{kind}:")
            medians = {}
            for way in ways:
                medians[way], line = summary(way, speeds[(way, kind)])
                print("  " + line)
            print(f"  onnxruntime / keras accel = {medians['onnxruntime'] / medians['keras accel']:.2f}x, "
                  f"onnxruntime / keras plain = {medians['onnxruntime'] / medians['keras plain']:.2f}x")
        gap = np.abs(outputs["onnxruntime"] - outputs["keras accel"]).max()
        print(f"\nlargest |onnx - keras| probability over the {len(table)} rows: {gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
