"""keras-cxr against plain PyTorch + timm on the same network, in one command.

Times, with the same torch build, thread count, input size and batch size,
each contender in its own worker process (as a user's program runs one of
them; see `compare`), timed in turn:

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
faster), the best of several rounds and each round's own ratio (their
spread is the machine's noise), and writes them with the machine and
versions to `benchmarks/RESULTS.md`. On the CPU, timm is also timed with
keras-cxr's heap setting (`keras_cxr.fast_alloc`), so the share of a ratio
that comes from that setting is visible.

On a CUDA GPU, `--device cuda --precision mixed_float16` compares keras-cxr
under Keras's `mixed_float16` policy with timm under `torch.autocast`
(float16) and a `GradScaler`, the usual AMP loop; timm is timed both in its
default memory format and in `channels_last`, and the faster one is the
reference. `cudnn.benchmark` is on for everyone. Run it with `bash benchmarks/run` (its own
environment: timm needs torchvision, which needs another torch build than
the test environment).
"""

import argparse
import contextlib
import datetime
import multiprocessing
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

# keras and keras_cxr are imported where they are used: timm's worker processes never import them.

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
    import keras

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


def keras_steps(name, image_size, batch, precision="float32"):
    """keras-cxr's (train step, inference step, parameter count), as this process imported it.

    With ``KERAS_CXR_FAST_OPS=0`` in the environment that is plain Keras
    (Keras's own kernels, no traced inference, glibc's default heap). Both
    steps end with results on the host (a loss value, numpy probabilities),
    so on a GPU they include the synchronisation.
    """
    from keras_cxr.losses import FocalLoss
    from keras_cxr.precision import set_precision
    from keras_cxr.predict import predict_probs

    import keras

    set_precision(precision)
    try:
        model = build_keras(name, image_size)
    finally:
        set_precision("float32")
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=FocalLoss())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, batch)]
    model.train_on_batch(x, y)  # builds the model's metrics and optimizer
    model.make_train_function()

    def train_step():  # one iteration of fit's loop
        batch = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y), None)
        float(model.train_function([batch])["loss"])

    return train_step, lambda: predict_probs(model, x, batch_size=batch), model.count_params()


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


# Contender -> (what it runs, environment of its process). "plain" is the same
# keras-cxr model with Keras's own kernels; "timm_alloc" is timm given
# keras-cxr's heap setting (`keras_cxr.fast_alloc`, installed alone: importing
# keras_cxr with its fast ops off), to show how much of a ratio that setting
# is; "timm_cl" (CUDA only) timm in channels_last memory.
CONTENDERS = {
    "ours": ("keras", {}),
    "plain": ("keras", {"KERAS_CXR_FAST_OPS": "0"}),
    "timm": ("timm", {}),
    "timm_alloc": ("timm", {"KERAS_CXR_FAST_OPS": "0"}),
    "timm_cl": ("timm", {}),
}


def _worker(connection, who, name, size, args):
    """One contender's process: build its steps, then time them on request."""
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    if CONTENDERS[who][0] == "keras":
        train, infer, params = keras_steps(name, size, args.batch, precision=args.precision)
    else:
        if who == "timm_alloc":
            from keras_cxr import fast_alloc

            fast_alloc.install()
        train, infer, params = timm_steps(name, size, args.batch, args.device, args.precision != "float32",
                                          channels_last=who == "timm_cl")
    connection.send(params)
    steps = {"train": train, "infer": infer}
    while (kind := connection.recv()) is not None:
        connection.send(median_ms(steps[kind], args.steps, args.warmup))


@contextlib.contextmanager
def _environment(changes):
    saved = dict(os.environ)
    os.environ.update(changes)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _start(who, name, size, args):
    """A worker process for `who` and its end of the pipe; it inherits the environment at its start."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_worker, args=(theirs, who, name, size, args), daemon=True)
    with _environment(CONTENDERS[who][1]):  # keras_cxr reads KERAS_CXR_FAST_OPS when imported
        process.start()
    return process, ours


def _time_round(name, size, args, who_runs):
    """One round: a fresh worker process per contender, started together, then timed one after another."""
    workers = {who: _start(who, name, size, args) for who in who_runs}
    try:
        params = {who: connection.recv() for who, (_, connection) in workers.items()}
        medians = {}
        for who, (_, connection) in workers.items():
            for kind in ("train", "infer"):
                connection.send(kind)
                medians[who, kind] = connection.recv()
    finally:
        for process, connection in workers.values():
            if process.is_alive():
                connection.send(None)
            process.join(timeout=60)
    return medians, params


def compare(name, size, args):
    """Best-of-rounds medians (ms) per contender and kind, each round's ratios, and parameter counts.

    Each contender runs in its own process (same interpreter, torch build and
    thread count), as a user's program runs one of them: in a shared process
    the heap one leaves behind decides how often the other page-faults
    (measured: 0 vs 25,000 faults per Swin-T step, by call order). Every
    round starts fresh processes: the same step timed in two processes of
    this VM differed by up to 15%, so a contender's best is taken over
    several processes, not over several rounds of one.
    """
    who_runs = ["ours", "plain", "timm", "timm_alloc"] if args.device == "cpu" else ["ours", "plain", "timm",
                                                                                      "timm_cl"]
    medians = {(who, kind): [] for who in who_runs for kind in ("train", "infer")}
    for r in range(args.rounds):  # each round times the contenders in a rotated order
        order = who_runs[r % len(who_runs):] + who_runs[:r % len(who_runs)]
        round_medians, params = _time_round(name, size, args, order)
        for key, value in round_medians.items():
            medians[key].append(value)
    if "timm_cl" in who_runs:
        for kind in ("train", "infer"):  # the faster timm memory format, round by round
            medians["timm", kind] = [min(pair) for pair in zip(medians["timm", kind], medians["timm_cl", kind])]
    best = {key: min(values) for key, values in medians.items()}
    # Each round's own ratio shows how far the machine's noise moves the best-of ratio.
    spread = {kind: "-".join(f"{t / k:.2f}" for t, k in sorted(zip(medians["timm", kind], medians["ours", kind]),
                                                                key=lambda pair: pair[0] / pair[1]))
              for kind in ("train", "infer")}
    return best, spread, params["ours"], params["timm"]


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
    import keras
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each in fresh processes; the best median counts")
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
            row = {"network": f"{name} / {NETWORKS[name][0]}", "size": size, "params": f"{k_params:,} / {t_params:,}"}
            for kind in ("train", "infer"):
                ms = {who: best.get((who, kind)) for who in ("ours", "plain", "timm", "timm_alloc")}
                row[kind] = ms
                row[kind + " ratio"] = ms["timm"] / ms["ours"]
                row[kind + " ratio, same heap"] = ms["timm_alloc"] / ms["ours"] if ms["timm_alloc"] else None
                row[kind + " rounds"] = spread[kind]
            rows.append(row)
            print(f"{name} {size}px: " + "; ".join(
                f"{kind} keras-cxr {row[kind]['ours']:.0f} ms (plain Keras {row[kind]['plain']:.0f}), timm "
                f"{row[kind]['timm']:.0f} ms: x{row[kind + ' ratio']:.2f} (rounds {row[kind + ' rounds']})"
                + (f", timm with keras-cxr's heap setting {row[kind]['timm_alloc']:.0f} ms: "
                   f"x{row[kind + ' ratio, same heap']:.2f}" if row[kind]["timm_alloc"] else "")
                for kind in ("train", "infer")), flush=True)
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
        f"rounds of the median of {args.steps} steps after {args.warmup} warm-up steps. "
        "Ratio = reference time / keras-cxr time (above 1: keras-cxr is faster). timm trains with the "
        "stochastic depth keras-cxr's models have (EfficientNetV2-S: drop path 0.2, Swin-T: 0.1).",
        "",
        "Each contender runs in its own process, started by this one command with the same interpreter, "
        "torch build and thread count; each round starts fresh processes and times them one after another, in "
        "an order rotated from round to round. In one shared process the heap one contender leaves behind "
        "decides how often the other page-faults (measured: 0 vs 25,000 faults per Swin-T step, by call "
        "order), which no user's program sees; and the same step timed in two processes of this VM differed by "
        "up to 15%, so the best is taken over several processes.",
        "",
        "\"plain Keras\" is the same keras-cxr model with Keras's own kernels (`KERAS_CXR_FAST_OPS=0`: no "
        "`keras_cxr.fast_ops`, no traced inference, glibc's default heap). \"timm, same heap\" is timm in a "
        "process given keras-cxr's heap setting (`keras_cxr.fast_alloc`: freed memory kept for the next step "
        "instead of unmapped); the ratio against it is keras-cxr's margin without that setting's share.",
        "",
        "Each round's own train / inference ratio is listed too: their spread is the machine's noise.",
        "",
        "| network (keras-cxr / timm) | px | params (ours / timm) | train ms keras-cxr / plain Keras / timm "
        "/ timm, same heap | **train ratio** | train ratio, same heap | infer ms keras-cxr / plain Keras / timm "
        "/ timm, same heap | **infer ratio** | infer ratio, same heap | ratios per round (train; infer) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cells(row, kind):
        ms = " / ".join("-" if v is None else f"{v:.0f}" for v in row[kind].values())
        same_heap = row[kind + " ratio, same heap"]
        return f"{ms} | **{row[kind + ' ratio']:.2f}** | " + ("-" if same_heap is None else f"{same_heap:.2f}")

    for r in rows:
        lines.append(f"| {r['network']} | {r['size']} | {r['params']} | {cells(r, 'train')} | {cells(r, 'infer')} "
                     f"| {r['train rounds']}; {r['infer rounds']} |")
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
