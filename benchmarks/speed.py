"""keras-cxr against plain PyTorch + timm on the same network, in one process.

Times, with the same torch build, thread count, input size and batch size:

- a training step: forward, loss, backward and optimizer update
  (keras-cxr: the step function `model.fit` runs for each batch on a
  compiled keras-cxr model with AdamW and the focal loss, the batch converted
  to a tensor and the loss read back as fit's progress bar does; timm: the usual
  `zero_grad / forward / cross_entropy / backward / step` loop);
- inference: keras-cxr's predict path (`keras_cxr.predict.predict_probs`)
  vs a `torch.no_grad()` forward of the timm model in eval mode;
- the input pipeline, per worker: `CXRDataset` decoding, resizing and
  augmenting real JPEGs vs the seed's torchvision transforms on the same
  files (images per second, one process, no workers).

It prints medians and keras-cxr / reference ratios (> 1: keras-cxr is
faster), the best of alternating rounds and each round's own ratio (their
spread is the machine's noise), and writes them with the machine and
versions to `benchmarks/RESULTS.md`.

On a CUDA GPU, `--device cuda --precision mixed_float16` compares keras-cxr
under Keras's `mixed_float16` policy with timm under `torch.autocast`
(float16) and a `GradScaler`, the usual AMP loop; timm is timed both in its
default memory format and in `channels_last`, and the faster one is the
reference. `cudnn.benchmark` is on for everyone. Run it with `bash benchmarks/run` (its own
environment: timm needs torchvision, which needs another torch build than
the test environment).
"""

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
if "--device" in sys.argv:  # Keras picks its torch device when it is imported
    os.environ["KERAS_TORCH_DEVICE"] = sys.argv[sys.argv.index("--device") + 1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import keras_cxr  # noqa: E402,F401  (pins the torch backend before keras loads)
import keras  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CXR4 = HERE.parent.parent / "shared" / "data" / "cxr4"

# keras-cxr model name -> (timm name, extra timm kwargs) of the same network,
# trained the same way: keras-cxr's models keep their libraries' stochastic
# depth (keras.applications EfficientNetV2: drop-connect 0.2; keras-hub Swin:
# drop path 0.1, both rising linearly over the blocks as timm's does), which
# timm leaves off unless asked.
NETWORKS = {
    "effv2_s": ("tf_efficientnetv2_s", {"drop_path_rate": 0.2}),
    "swin_t": ("swin_tiny_patch4_window7_224", {"drop_path_rate": 0.1}),
}


def median_ms(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def swin_window(image_size):
    """Swin-T's window at `image_size`: 7 at 224; at 128 the last stage is 4 wide, so 4."""
    return 7 if image_size % (32 * 7) == 0 else image_size // 32


def build_keras(name, image_size):
    from keras_cxr import models

    if name == "swin_t" and swin_window(image_size) != 7:
        from keras_cxr.models import swin

        swin.ARCHS["swin_t_bench"] = {**swin.ARCHS["swin_t"], "window_size": swin_window(image_size)}
        features = swin._features

        def bench_features(images, _name, size, source):
            return features(images, "swin_t_bench", size, source)

        return _functional(bench_features, image_size)
    return models.build(name, num_classes=4, image_size=image_size, dropout=0.0)


def _functional(features, image_size):
    from keras_cxr.models.head import classification_head
    from keras_cxr.models.weights import WeightsSource

    images = keras.Input((image_size, image_size, 3), name="images")
    x = features(images, None, image_size, WeightsSource("none"))
    # Named like the registry's Swin-T so keras-cxr treats it as its own architecture (traced inference).
    return keras.Model(images, classification_head(x, 4, 0.0), name="swin_t")


def build_timm(name, image_size):
    import timm

    timm_name, kwargs = NETWORKS[name]
    if name == "swin_t":
        kwargs = {**kwargs, "img_size": image_size, "window_size": swin_window(image_size)}
    return timm.create_model(timm_name, pretrained=False, num_classes=4, **kwargs)


def keras_steps(name, image_size, batch, fast=True, precision="float32"):
    """keras-cxr's (train step, inference step, parameter count); `fast=False`: Keras's own kernels.

    Both steps end with results on the host (a loss value, numpy
    probabilities), so on a GPU they include the synchronisation.
    """
    from keras_cxr import fast_ops
    from keras_cxr.losses import FocalLoss
    from keras_cxr.precision import set_precision
    from keras_cxr.predict import predict_probs

    set_precision(precision)
    if not fast:
        fast_ops.uninstall()  # built as plain Keras would: kernels in Keras's memory order
    try:
        model = build_keras(name, image_size)
    finally:
        fast_ops.install()
        set_precision("float32")
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=FocalLoss())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, batch)]

    def with_kernels(fn):
        def step():
            (fast_ops.install if fast else fast_ops.uninstall)()
            try:
                fn()
            finally:
                fast_ops.install()
        return step

    model.train_on_batch(x, y)  # builds the model's metrics and optimizer
    model.make_train_function()

    def train_step():  # one iteration of fit's loop
        batch = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y), None)
        float(model.train_function([batch])["loss"])

    return (with_kernels(train_step),
            with_kernels(lambda: predict_probs(model, x, batch_size=batch)), model.count_params())


def timm_steps(name, image_size, batch, device="cpu", amp=False, channels_last=False):
    """timm's (train step, inference step, parameter count): the plain loop, or AMP float16 with a GradScaler."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_timm(name, image_size).to(device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 4, (batch,), device=device)

    def autocast():
        return torch.autocast(device, dtype=torch.float16, enabled=amp)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # the loss on the host, as keras-cxr's progress bar reads it

    def infer_step():
        model.eval()
        with torch.no_grad(), autocast():
            model(x).float().softmax(dim=1).cpu()

    return train_step, infer_step, sum(p.numel() for p in model.parameters())


def compare(name, size, args):
    """Best-of-rounds medians (ms) of ours, plain Keras and timm, and each round's ratios, per kind."""
    amp = args.precision != "float32"
    contenders = {
        "ours": keras_steps(name, size, args.batch, precision=args.precision),
        "plain": keras_steps(name, size, args.batch, fast=False, precision=args.precision),
        "timm": timm_steps(name, size, args.batch, args.device, amp),
    }
    if args.device == "cuda":
        contenders["timm_cl"] = timm_steps(name, size, args.batch, args.device, amp, channels_last=True)
    medians = {(who, kind): [] for who in contenders for kind in ("train", "infer")}
    for _ in range(args.rounds):  # alternate, so a slow spell of the machine hits everyone
        for who, (train, infer, _) in contenders.items():
            medians[who, "train"].append(median_ms(train, args.steps, args.warmup))
            medians[who, "infer"].append(median_ms(infer, args.steps, args.warmup))
    for kind in ("train", "infer"):  # the faster timm memory format, round by round
        medians["timm", kind] = [min(m) for m in zip(*(medians[who, kind] for who in contenders
                                                        if who.startswith("timm")))]
    best = {key: min(values) for key, values in medians.items()}
    # Each round's own ratio shows how far the machine's noise moves the best-of ratio.
    spread = {kind: "-".join(f"{t / k:.2f}" for t, k in sorted(zip(medians["timm", kind], medians["ours", kind]),
                                                                key=lambda pair: pair[0] / pair[1]))
              for kind in ("train", "infer")}
    return best, spread, contenders["ours"][2], contenders["timm"][2]


def pipeline_rates(image_size, images, batch):
    """Images/s of keras-cxr's training dataset and the seed's torchvision transforms, one process."""
    from PIL import Image
    from torchvision import transforms as T

    from keras_cxr.data import Augmentation, CXRDataset, read_table

    table = read_table(CXR4 / "train.csv", labels="required")
    table = table.subset(np.arange(min(images, len(table))))
    aug = Augmentation(rotation=10, translate=0.08, scale=(0.92, 1.08), shear=12, brightness=0.2, contrast=0.2,
                       erasing_p=0.35)
    dataset = CXRDataset(table, image_size, batch_size=batch, training=True, augmentation=aug, sampling="none")
    dataset[0]  # import and first-call costs out of the timing
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    ours = len(dataset) * batch / (time.perf_counter() - start)

    seed = T.Compose([
        T.Resize((image_size, image_size)),
        T.RandomRotation(10),
        T.RandomAffine(0, translate=(0.08, 0.08), scale=(0.92, 1.08), shear=12),
        T.ColorJitter(brightness=0.2, contrast=0.2),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        T.RandomErasing(p=0.35, scale=(0.02, 0.12)),
    ])
    paths = list(table.paths)
    seed(Image.open(paths[0]).convert("RGB"))
    start = time.perf_counter()
    for i in range(len(dataset) * batch):
        seed(Image.open(paths[i % len(paths)]).convert("RGB"))
    reference = len(dataset) * batch / (time.perf_counter() - start)
    return ours, reference


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import timm
    import torchvision

    if torch.cuda.is_available() and os.environ.get("KERAS_TORCH_DEVICE", "").startswith("cuda"):
        cpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}); {cpu}"
    return (f"{cpu}; {platform.system()} {platform.machine()}; Python {platform.python_version()}; "
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
            f"keras {keras.__version__}, numpy {np.__version__}; torch threads {torch.get_num_threads()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best median counts")
    parser.add_argument("--pipeline-images", type=int, default=256)
    parser.add_argument("--pipeline-size", type=int, default=384)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_float16"],
                        help="keras-cxr's dtype policy; timm runs AMP float16 with mixed_float16")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    rows = []
    for name in args.networks:
        for size in args.sizes:
            best, spread, k_params, t_params = compare(name, size, args)
            k_train, p_train, t_train = best["ours", "train"], best["plain", "train"], best["timm", "train"]
            k_infer, p_infer, t_infer = best["ours", "infer"], best["plain", "infer"], best["timm", "infer"]
            row = (f"{name} / {NETWORKS[name][0]}", size, k_params, t_params, k_train, p_train, t_train,
                   t_train / k_train, k_infer, p_infer, t_infer, t_infer / k_infer, spread["train"], spread["infer"])
            rows.append(row)
            print("{} {}px params {:,}/{:,}: train {:.0f} (plain Keras {:.0f}) vs timm {:.0f} ms (x{:.2f}), "
                  "infer {:.0f} (plain Keras {:.0f}) vs timm {:.0f} ms (x{:.2f}); ratios per round: "
                  "train {}, infer {}".format(*row), flush=True)
    if args.pipeline_images:
        ours, reference = pipeline_rates(args.pipeline_size, args.pipeline_images, args.batch)
        print(f"input pipeline {args.pipeline_size}px: {ours:.0f} vs {reference:.0f} images/s "
              f"(x{ours / reference:.2f})")
    setting = f"{args.device}, float32"
    if args.precision != "float32":
        setting = (f"{args.device}, keras-cxr `{args.precision}` vs timm AMP float16 with a GradScaler "
                   "(default or channels_last memory format, whichever is faster)")

    lines = [
        "# Speed: keras-cxr vs PyTorch + timm",
        "",
        f"Measured {datetime.date.today()}: `benchmarks/speed.py {' '.join(sys.argv[1:])}` "
        + ("(on the CPU machine through `bash benchmarks/run`)." if args.device == "cpu"
           else "(on a lent GPU machine, with its own torch and timm)."),
        "",
        f"Machine: {machine()}.",
        "",
        f"Setting: {setting}. Batch {args.batch}, random weights; each number is the best of {args.rounds} "
        f"alternating rounds of the median of {args.steps} steps after {args.warmup} warm-up steps. "
        "Ratio = reference time / keras-cxr time (above 1: keras-cxr is faster). timm trains with the "
        "stochastic depth keras-cxr's models have (EfficientNetV2-S: drop path 0.2, Swin-T: 0.1).",
        "",
        "\"plain Keras\" is the same keras-cxr model with Keras's own kernels (`KERAS_CXR_FAST_OPS=0`: no "
        "`keras_cxr.fast_ops`, no traced inference).",
        "",
        "Each round's own train / inference ratio is listed too: their spread is the machine's noise.",
        "",
        "| network (keras-cxr / timm) | px | params (ours / timm) | train ms keras-cxr | train ms plain Keras "
        "| train ms timm | **train ratio** | infer ms keras-cxr | infer ms plain Keras | infer ms timm "
        "| **infer ratio** | ratios per round (train; infer) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:,} / {r[3]:,} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.0f} | **{r[7]:.2f}** "
                     f"| {r[8]:.0f} | {r[9]:.0f} | {r[10]:.0f} | **{r[11]:.2f}** | {r[12]}; {r[13]} |")
    if args.pipeline_images:
        lines += [
            "",
            f"Input pipeline, one process, {args.pipeline_images} cxr4 JPEGs at {args.pipeline_size} px with the "
            f"seed's augmentation: keras-cxr `CXRDataset` {ours:.0f} images/s, torchvision transforms "
            f"{reference:.0f} images/s, ratio {ours / reference:.2f}.",
        ]
    lines.append("")
    out = pathlib.Path(args.out)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("\n".join(lines))
    os.replace(partial, out)  # an interrupted run leaves the last results whole
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
