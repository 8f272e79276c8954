"""keras-cxr against PyTorch + timm on the same network, in one command.

Times, with the same torch build, thread count, input size and batch size,
two steps of every contender below, each contender in its own freshly
spawned worker process (as a user's program runs one of them), one
contender after another, in an order rotated from round to round:

- a training step: forward, loss, backward and optimizer update
  (keras-cxr: the step function `model.fit` runs for each batch on a
  compiled keras-cxr model with AdamW and the focal loss, the batch converted
  to a tensor and the loss read back as fit's progress bar does; timm:
  `zero_grad / forward / cross_entropy / backward / step`, the loss read
  back with `.item()`);
- inference: keras-cxr's predict path (`keras_cxr.predict.predict_probs`)
  vs a forward of the timm model in eval mode, softmax, copied to the host.

Contenders (`CONTENDERS`):

- "ours": keras-cxr as the `keras-cxr` command runs it: the worker calls
  `keras_cxr.accel.keep_freed_memory()` and `keras_cxr.accel.enable()`
  before building the model with `keras_cxr.models.build` (which marks and
  prepares it; from scratch Swin-T at 128 px gets window 4, as timm is given);
- "plain": the same keras-cxr model with Keras's own code (accel never
  enabled, glibc's default heap);
- "timm": timm as the usual loop is written: `torch.optim.AdamW` with torch's
  default implementation, default memory format, `torch.no_grad()` inference;
- "timm_alloc" (CPU only): that loop in a process given keras-cxr's heap
  setting (`keras_cxr.accel.keep_freed_memory()` only), so the share of a
  ratio that comes from that setting is visible;
- "timm tuned": timm as a careful user runs it: `AdamW(fused=True)` (foreach
  where torch has no fused kernel for the device; the output says which),
  `torch.inference_mode()` inference, timed in the default and in the
  `channels_last` memory format (two contenders, "timm_tuned" and
  "timm_tuned_cl"); per round the faster of the two is the reference;
- "timm compiled": the tuned loop on `torch.compile(model)` (default mode),
  both memory formats, the faster per round. Its worker compiles (train and
  inference graphs, a few untimed steps) before any timing; a worker that
  raises or is not ready within `--compile-timeout` seconds of its start is
  reported as "did not finish: <reason>" and not retried for that network.

Every step is timed as the median of `--steps` steps after `--warmup`
untimed ones. Each reported time is the median over `--rounds` rounds (each
round a fresh process per contender); each ratio (reference time /
keras-cxr time; > 1: keras-cxr is faster) is computed within a round and
reported as the median over rounds with its spread (min-max), which is the
machine's noise. Trainable parameter counts (keras: `model.trainable_weights`;
timm: parameters with `requires_grad`) are compared and a mismatch is
printed and recorded loudly.

Also the input pipeline, one process: `CXRDataset` decoding, resizing and
augmenting real JPEGs vs the seed's torchvision transforms on the same files
(images per second, no workers).

Results are printed and written, with the machine and versions, to `--out`
(default `benchmarks/RESULTS.md`; atomically, so an interrupted run leaves
the last results whole).

On a CUDA GPU, `--device cuda --precision mixed_float16` compares keras-cxr
under Keras's `mixed_float16` policy with timm under `torch.autocast`
(float16) and a `GradScaler` (the usual AMP loop, for every timm
contender). On a CPU with bfloat16 instructions (what `precision="auto"`
picks there), `--precision mixed_bfloat16` compares Keras's
`mixed_bfloat16` policy with timm under `torch.autocast("cpu",
dtype=torch.bfloat16)` (no scaler: bfloat16 has float32's range). `cudnn.benchmark` is on for everyone. Run it with `bash
benchmarks/run` (its own environment: timm needs torchvision, which needs
another torch build than the test environment).
"""

import argparse
import datetime
import multiprocessing
import os
import pathlib
import platform
import signal
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
if "--device" in sys.argv:  # Keras picks its torch device when it is imported
    os.environ["KERAS_TORCH_DEVICE"] = sys.argv[sys.argv.index("--device") + 1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

# keras and keras_cxr are imported where they are used: timm's worker processes never import keras.

HERE = pathlib.Path(__file__).resolve().parent
CXR4 = HERE.parent.parent / "shared" / "data" / "cxr4"
KINDS = ("train", "infer")

# keras-cxr model name -> (timm name, extra timm kwargs) of the same network,
# trained the same way: keras-cxr's models keep their libraries' stochastic
# depth (keras.applications EfficientNetV2: drop-connect 0.2; keras-hub Swin:
# drop path 0.1, both rising linearly over the blocks as timm's does), which
# timm leaves off unless asked.
NETWORKS = {
    "effv2_s": ("tf_efficientnetv2_s", {"drop_path_rate": 0.2}),
    "swin_t": ("swin_tiny_patch4_window7_224", {"drop_path_rate": 0.1}),
}

# Contender -> what its worker process runs.
CONTENDERS = {
    "ours": "keras-cxr: accel.keep_freed_memory() and accel.enable() before building, as the keras-cxr command",
    "plain": "the same keras-cxr model with Keras's own code (accel off, glibc's default heap)",
    "timm": "timm, the usual loop: AdamW (torch's default implementation), default memory format, no_grad inference",
    "timm_alloc": "timm's usual loop given keras-cxr's heap setting (accel.keep_freed_memory() only)",
    "timm_tuned": "timm tuned: fused AdamW, inference_mode, default memory format",
    "timm_tuned_cl": "timm tuned: fused AdamW, inference_mode, channels_last",
    "timm_compiled": "timm tuned on torch.compile(model), default memory format",
    "timm_compiled_cl": "timm tuned on torch.compile(model), channels_last",
}
# Reported reference -> the contenders it is the faster of, round by round.
REFERENCES = {
    "plain": ("plain",),
    "timm": ("timm",),
    "timm_alloc": ("timm_alloc",),
    "timm_tuned": ("timm_tuned", "timm_tuned_cl"),
    "timm_compiled": ("timm_compiled", "timm_compiled_cl"),
}
LABELS = {
    "ours": "keras-cxr",
    "plain": "plain Keras",
    "timm": "timm",
    "timm_alloc": "timm, keras-cxr's heap",
    "timm_tuned": "timm tuned",
    "timm_compiled": "timm compiled",
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
    """The keras-cxr model of `name`: `keras_cxr.models.build`, the path users take.

    From scratch, `build("swin_t", image_size=128)` picks window 4 (the last
    stage is 4 wide), the window timm is given at that size (`swin_window`);
    `build` marks and prepares its models for whatever acceleration this
    process has switched on.
    """
    from keras_cxr import models

    model = models.build(name, num_classes=4, image_size=image_size, dropout=0.0)
    if name.startswith("swin"):
        window = model.get_layer("backbone").get_config()["window_size"]
        assert window == swin_window(image_size), (window, swin_window(image_size))
    return model


def build_timm(name, image_size):
    import timm

    timm_name, kwargs = NETWORKS[name]
    if name == "swin_t":
        kwargs = {**kwargs, "img_size": image_size, "window_size": swin_window(image_size)}
    return timm.create_model(timm_name, pretrained=False, num_classes=4, **kwargs)


def keras_steps(name, image_size, batch, precision="float32"):
    """keras-cxr's (train step, inference step, trainable parameter count), under this process's acceleration.

    Acceleration is whatever the process switched on before the call: the
    "ours" worker calls `accel.keep_freed_memory()` and `accel.enable()`,
    the "plain" worker nothing (Keras's own code). Both steps end with
    results on the host (a loss value, numpy probabilities), so on a GPU
    they include the synchronisation.
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

    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return train_step, lambda: predict_probs(model, x, batch_size=batch), trainable


def _adamw(parameters, tuned):
    """timm's AdamW and what implementation it runs: torch's default, or fused (foreach where fused is unavailable)."""
    parameters = list(parameters)
    if tuned:
        try:
            return torch.optim.AdamW(parameters, lr=1e-4, fused=True), "fused"
        except (RuntimeError, ValueError, TypeError) as e:  # no fused kernel for this device / torch
            return torch.optim.AdamW(parameters, lr=1e-4, foreach=True), f"foreach (fused unavailable: {e})"
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    try:  # torch's own choice when neither is asked for (private; only for the report)
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach(parameters, differentiable=False, use_fused=False)
        return optimizer, "default (foreach)" if foreach else "default (for-loop)"
    except Exception:  # noqa: BLE001
        return optimizer, "default"


AUTOCAST = {"float32": None, "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}  # policy -> timm's autocast


def timm_steps(name, image_size, batch, device="cpu", amp=None, channels_last=False, tuned=False,
               compiled=False):
    """timm's (train step, inference step, trainable parameter count, notes).

    The plain loop (torch's default AdamW, `no_grad` inference), or tuned
    (fused AdamW, `inference_mode`), optionally on `torch.compile(model)`;
    with `amp` ("float16" or "bfloat16"), autocast to that type, and for
    float16 a GradScaler. A compiled model is
    compiled here, by running both steps a few times, so that the timing
    never includes compilation.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_timm(name, image_size).to(device, memory_format=memory_format)
    optimizer, implementation = _adamw(model.parameters(), tuned or compiled)
    forward = torch.compile(model) if compiled else model
    scaler = torch.amp.GradScaler(device, enabled=amp == "float16")
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 4, (batch,), device=device)
    no_grad = torch.inference_mode if tuned or compiled else torch.no_grad

    def autocast():
        return torch.autocast(device, dtype=getattr(torch, amp or "bfloat16"), enabled=amp is not None)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # the loss on the host, as keras-cxr's progress bar reads it

    def infer_step():
        model.eval()
        with no_grad(), autocast():
            forward(x).float().softmax(dim=1).cpu()

    notes = {"optimizer": implementation}
    if compiled:
        start = time.perf_counter()
        for step in (train_step, train_step, infer_step, infer_step, train_step):
            step()
        notes["compile_s"] = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train_step, infer_step, trainable, notes


def _worker(connection, who, name, size, args):
    """One contender's process: build its steps, say ("ready", params, notes) or ("error", reason), time on request."""
    if who.startswith("timm_compiled"):
        os.setpgrp()  # its own process group: a timed-out compile is killed with inductor's compile workers
    try:
        torch.set_num_threads(args.threads)
        torch.backends.cudnn.benchmark = True
        notes = {}
        if who in ("ours", "plain"):
            if who == "ours":  # what the keras-cxr command does for its own process
                from keras_cxr import accel

                accel.keep_freed_memory()
                accel.enable()
            train, infer, params = keras_steps(name, size, args.batch, precision=args.precision)
            if who == "ours":
                notes["accel"] = {patch: state for patch, state in accel.status().items() if state != "on"}
        else:
            if who == "timm_alloc":
                from keras_cxr import accel

                accel.keep_freed_memory()
            train, infer, params, notes = timm_steps(
                name, size, args.batch, args.device, amp=AUTOCAST[args.precision],
                channels_last=who.endswith("_cl"), tuned=who.startswith("timm_tuned"),
                compiled=who.startswith("timm_compiled"))
    except Exception as e:  # noqa: BLE001  - reported by the parent
        connection.send(("error", f"{type(e).__name__}: {e}"))
        return
    connection.send(("ready", params, notes))
    steps = {"train": train, "infer": infer}
    while (kind := connection.recv()) is not None:
        try:
            connection.send(("ms", median_ms(steps[kind], args.steps, args.warmup)))
        except Exception as e:  # noqa: BLE001
            connection.send(("error", f"{kind} step: {type(e).__name__}: {e}"))
            return


def _receive(process, connection, timeout):
    """The worker's next message, or ("error", why) if it died or said nothing within `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not connection.poll(1.0):
        if not process.is_alive():
            return ("error", f"worker exited with code {process.exitcode}")
        if deadline is not None and time.monotonic() > deadline:
            return ("error", f"not ready within {timeout:.0f} s (--compile-timeout)")
    try:
        return connection.recv()
    except EOFError:
        return ("error", f"worker exited with code {process.exitcode}")


def _stop(process, connection):
    if process.is_alive():
        try:
            connection.send(None)
        except OSError:
            pass
        process.join(timeout=60)
    if process.is_alive():  # a compile still running past its limit: its group, inductor's workers too
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (OSError, PermissionError):
            process.kill()
        process.join(timeout=60)


class ContenderFailed(Exception):
    pass


def run_contender(who, name, size, args):
    """`who`'s medians {kind: ms}, trainable parameters and notes, from a fresh worker process of its own."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_worker, args=(theirs, who, name, size, args), daemon=True)
    start = time.perf_counter()
    process.start()
    theirs.close()
    try:
        timeout = args.compile_timeout if who.startswith("timm_compiled") else None
        message = _receive(process, ours, timeout)
        if message[0] != "ready":
            raise ContenderFailed(message[1])
        _, params, notes = message
        notes["ready_s"] = time.perf_counter() - start
        medians = {}
        for kind in KINDS:
            ours.send(kind)
            message = _receive(process, ours, None)
            if message[0] != "ms":
                raise ContenderFailed(message[1])
            medians[kind] = message[1]
        return medians, params, notes
    finally:
        _stop(process, ours)


def contenders(args):
    who_runs = ["ours", "plain", "timm"] + (["timm_alloc"] if args.device == "cpu" else [])
    who_runs += ["timm_tuned", "timm_tuned_cl"]
    if args.compile_timeout > 0:
        who_runs += ["timm_compiled", "timm_compiled_cl"]
    return who_runs


def _short(reason, limit=160):
    line = str(reason).strip().splitlines()[0] if str(reason).strip() else "unknown"
    return (line[:limit] + "...") if len(line) > limit else line


def compare(name, size, args):
    """Every contender on `name` at `size` px, `args.rounds` rounds, each contender in a fresh process per round.

    Each contender runs in its own process (same interpreter, torch build and
    thread count), as a user's program runs one of them: in a shared process
    the heap one leaves behind decides how often the other page-faults
    (measured: 0 vs 25,000 faults per Swin-T step, by call order). The
    contenders run one after another (no idle worker holds memory or
    compiles while another is timed), in an order rotated each round; every
    round starts fresh processes: the same step timed in two processes of
    this VM differed by up to 15%, so a time is the median over several
    processes and a ratio is taken within a round.

    Returns:
        {"rounds": [{contender: {kind: ms}}], "params": {contender: trainable
        parameters}, "notes": {contender: [notes per round]}, "failures":
        {contender: reason}} (only the compiled contenders may fail).
    """
    who_runs = contenders(args)
    result = {"rounds": [], "params": {}, "notes": {}, "failures": {}}
    for r in range(args.rounds):
        order = who_runs[r % len(who_runs):] + who_runs[:r % len(who_runs)]
        timed = {}
        for who in order:
            if who in result["failures"]:
                continue  # a compile that did not finish is not retried for this network
            try:
                medians, params, notes = run_contender(who, name, size, args)
            except ContenderFailed as e:
                if not who.startswith("timm_compiled"):
                    raise RuntimeError(f"{who} failed on {name} at {size} px: {e}") from None
                result["failures"][who] = _short(e)
                print(f"  round {r + 1} {who}: did not finish: {_short(e)}", flush=True)
                continue
            timed[who] = medians
            result["params"][who] = params
            result["notes"].setdefault(who, []).append(notes)
            print(f"  round {r + 1} {who}: train {medians['train']:.1f} ms, infer {medians['infer']:.1f} ms "
                  f"(ready after {notes['ready_s']:.0f} s)", flush=True)
        result["rounds"].append(timed)
    return result


def summarize(result, args):
    """Median times, median ratios with their spread, memory-format wins, and why a reference is missing."""
    rounds = result["rounds"]
    summary = {"ms": {}, "ratio": {}, "channels_last": {}, "missing": {}}
    per_round = {}  # reference -> kind -> [ms or None per round]
    for ref, members in {"ours": ("ours",), **REFERENCES}.items():
        for kind in KINDS:
            values, cl_wins, counted = [], 0, 0
            for timed in rounds:
                found = [(timed[m][kind], m) for m in members if m in timed]
                values.append(min(found)[0] if found else None)
                if len(found) == 2:
                    counted += 1
                    cl_wins += min(found)[1].endswith("_cl")
            per_round.setdefault(ref, {})[kind] = values
            present = [v for v in values if v is not None]
            summary["ms"][ref, kind] = statistics.median(present) if present else None
            if len(members) == 2:
                summary["channels_last"][ref, kind] = (cl_wins, counted)
    for ref, members in REFERENCES.items():
        if ref == "timm_compiled" and args.compile_timeout <= 0:
            summary["missing"][ref] = "not run (--compile-timeout 0)"
        elif ref == "timm_alloc" and args.device != "cpu":
            summary["missing"][ref] = "CPU only"
        elif summary["ms"][ref, "train"] is None:
            reasons = sorted({result["failures"].get(m, "no result") for m in members})
            summary["missing"][ref] = "did not finish: " + "; ".join(reasons)
        elif any(m in result["failures"] for m in members):
            summary["missing"][ref] = "only " + ", ".join(m for m in members if m not in result["failures"]) \
                + " finished (" + "; ".join(f"{m}: {result['failures'][m]}" for m in members
                                            if m in result["failures"]) + ")"
        for kind in KINDS:
            ratios = [t / k for t, k in zip(per_round[ref][kind], per_round["ours"][kind])
                      if t is not None and k is not None]
            summary["ratio"][ref, kind] = (statistics.median(ratios), min(ratios), max(ratios)) if ratios else None
    params = result["params"]
    summary["params"] = (params.get("ours"), params.get("timm"))
    summary["params_equal"] = len(set(params.values())) == 1
    summary["params_all"] = dict(params)
    notes = result["notes"]
    summary["optimizer"] = {}  # reference -> its AdamW implementation, from whichever of its workers finished
    for ref in ("timm", "timm_tuned", "timm_compiled"):
        for who in REFERENCES[ref]:
            if who in notes:
                summary["optimizer"][ref] = notes[who][0].get("optimizer")
                break
    summary["compile_s"] = [n["compile_s"] for who in ("timm_compiled", "timm_compiled_cl")
                            for n in notes.get(who, [])]
    accel_off = {}
    for n in notes.get("ours", []):
        accel_off.update(n.get("accel", {}))
    summary["accel_not_on"] = accel_off
    return summary


def _ms(value):
    return "-" if value is None else f"{value:.0f}"


def _ratio(value, bold=False):
    if value is None:
        return "-"
    median = f"**{value[0]:.2f}**" if bold else f"{value[0]:.2f}"
    return f"{median} ({value[1]:.2f}-{value[2]:.2f})"


def _cell(text):
    return str(text).replace("|", "/")


def _formats(summary, ref):
    parts = []
    for kind in KINDS:
        wins, counted = summary["channels_last"].get((ref, kind), (0, 0))
        parts.append(f"{kind} {wins}/{counted}" if counted else f"{kind} -")
    return ", ".join(parts)


def _accel_note(summary):
    # "waiting": the Swin patch, for a model that never imports keras_hub.
    off = {p: s for p, s in summary["accel_not_on"].items() if s != "waiting"}
    return "none (all on)" if not off else "; ".join(f"{p}: {s}" for p, s in off.items())


def _compile_note(summary):
    """Compile + warm-up seconds per compiled worker, and which of them did not finish, if any."""
    seconds = ", ".join(f"{c:.0f}" for c in summary["compile_s"]) or "-"
    missing = summary["missing"].get("timm_compiled")
    return seconds + (f"; {missing}" if missing and summary["ms"]["timm_compiled", "train"] is not None else "")


def report_line(name, size, s):
    k_params, t_params = s["params"]
    lines = [f"{name} {size}px: trainable parameters keras-cxr {k_params:,}, timm {t_params:,}"
             + ("" if s["params_equal"] else f"  <-- MISMATCH {s['params_all']}")]
    for kind in KINDS:
        times = ", ".join(
            f"{LABELS[who]} " + (_ms(s["ms"][who, kind]) if s["ms"][who, kind] is not None
                                 else s["missing"].get(who, "-"))
            for who in LABELS if who != "ours")
        ratios = ", ".join(f"vs {LABELS[ref]} {_ratio(s['ratio'][ref, kind])}"
                           for ref in ("timm", "timm_alloc", "timm_tuned", "timm_compiled")
                           if s["ratio"][ref, kind] is not None)
        lines.append(f"  {kind}: keras-cxr {_ms(s['ms']['ours', kind])} ms; {times} ms; ratio {ratios}")
    lines.append(f"  AdamW: {s['optimizer']}; rounds with channels_last faster: tuned {_formats(s, 'timm_tuned')}"
                 f"; compiled {_formats(s, 'timm_compiled')}; compile + warm-up s: {_compile_note(s)}"
                 f"; keras-cxr accel patches not on: {_accel_note(s)}")
    return "\n".join(lines)


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


def results_markdown(rows, args, pipeline):
    setting = f"{args.device}, float32"
    if args.precision == "mixed_float16":
        setting = (f"{args.device}, keras-cxr `{args.precision}` vs timm AMP float16 with a GradScaler "
                   "(every timm contender)")
    elif args.precision == "mixed_bfloat16":
        setting = (f"{args.device}, keras-cxr `{args.precision}` vs timm under bfloat16 autocast "
                   "(every timm contender)")
    lines = [
        "# Speed: keras-cxr vs PyTorch + timm",
        "",
        f"Measured {datetime.date.today()}: `benchmarks/speed.py {' '.join(sys.argv[1:])}` "
        + ("(on the CPU machine through `bash benchmarks/run`)." if args.device == "cpu"
           else "(on a lent GPU machine, with its own torch and timm)."),
        "",
        f"Machine: {machine()}.",
        "",
        f"Setting: {setting}. Batch {args.batch}, random weights. Each step is timed as the median of "
        f"{args.steps} steps after {args.warmup} warm-up steps, in a fresh process per contender and round; each "
        f"time below is the median over {args.rounds} rounds. Ratio = reference time / keras-cxr time within a "
        "round (above 1: keras-cxr is faster), given as the median over the rounds with the range of the "
        "rounds' ratios in parentheses (the machine's noise). timm trains with the stochastic depth "
        "keras-cxr's models have (EfficientNetV2-S: drop path 0.2, Swin-T: 0.1).",
        "",
        "Contenders, each in its own process (same interpreter, torch build and thread count), one after "
        "another in an order rotated from round to round:",
        "",
        "- **keras-cxr**: the model as the `keras-cxr` command runs it: `keras_cxr.accel.keep_freed_memory()` "
        "and `keras_cxr.accel.enable()` before building; training is the step `model.fit` runs per batch "
        "(AdamW, focal loss, loss read back), inference `keras_cxr.predict.predict_probs`.",
        "- **plain Keras**: the same model with Keras's own code (accel not enabled, glibc's default heap).",
        "- **timm**: the usual loop: `torch.optim.AdamW` with torch's default implementation, default memory "
        "format, `torch.no_grad()` inference.",
        "- **timm, keras-cxr's heap** (CPU only): that loop in a process given keras-cxr's heap setting "
        "(`keras_cxr.accel.keep_freed_memory()`: freed memory kept for the next step instead of unmapped); the "
        "ratio against it is keras-cxr's margin without that setting's share.",
        "- **timm tuned**: `AdamW(fused=True)` (foreach where fused is unavailable; see the last table), "
        "`torch.inference_mode()` inference, timed in the default and in the `channels_last` memory format; "
        "per round the faster one counts.",
        "- **timm compiled**: the tuned loop on `torch.compile(model)` (default mode), both memory formats, the "
        "faster per round. Compilation (the first train and inference steps) runs before the timing; a worker "
        f"that raises or is not ready within {args.compile_timeout:.0f} s is reported as not finished.",
        "",
    ]
    for kind, title in (("train", "Training step"), ("infer", "Inference")):
        lines += [
            f"## {title}: ms, and ratio = reference / keras-cxr",
            "",
            "| network (keras-cxr / timm) | px | keras-cxr | plain Keras | timm | timm, keras-cxr's heap | timm tuned "
            "| timm compiled | **vs timm** | vs timm, keras-cxr's heap | **vs timm tuned** | **vs timm compiled** |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            s = r["summary"]
            times = [_ms(s["ms"][who, kind]) if s["ms"][who, kind] is not None else _cell(s["missing"].get(who, "-"))
                     for who in ("ours", "plain", "timm", "timm_alloc", "timm_tuned", "timm_compiled")]
            ratios = [_ratio(s["ratio"]["timm", kind], bold=True), _ratio(s["ratio"]["timm_alloc", kind]),
                      _ratio(s["ratio"]["timm_tuned", kind], bold=True),
                      _ratio(s["ratio"]["timm_compiled", kind], bold=True)]
            lines.append(f"| {r['network']} | {r['size']} | " + " | ".join(times + ratios) + " |")
        lines.append("")
    lines += [
        "## Parameters and settings",
        "",
        "Trainable parameters: keras `model.trainable_weights`, timm parameters with `requires_grad`. "
        "\"channels_last faster\": rounds in which the `channels_last` run was the faster of the two formats "
        "(out of the rounds where both finished).",
        "",
        "| network | px | trainable params keras-cxr / timm | timm AdamW: plain / tuned / compiled | channels_last "
        "faster, tuned | channels_last faster, compiled | torch.compile: compile + warm-up s per worker | keras-cxr "
        "accel patches not on |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s = r["summary"]
        k_params, t_params = s["params"]
        params = f"{k_params:,} / {t_params:,}" + ("" if s["params_equal"]
                                                   else f" **MISMATCH** ({_cell(s['params_all'])})")
        optimizer = " / ".join(_cell(s["optimizer"].get(who, "-")) for who in ("timm", "timm_tuned", "timm_compiled"))
        lines.append(f"| {r['network']} | {r['size']} | {params} | {optimizer} | {_formats(s, 'timm_tuned')} | "
                     f"{_formats(s, 'timm_compiled')} | {_cell(_compile_note(s))} | {_cell(_accel_note(s))} |")
    if pipeline:
        ours, reference = pipeline
        lines += [
            "",
            f"Input pipeline, one process, {args.pipeline_images} cxr4 JPEGs at {args.pipeline_size} px with the "
            f"seed's augmentation: keras-cxr `CXRDataset` {ours:.0f} images/s, torchvision transforms "
            f"{reference:.0f} images/s, ratio {ours / reference:.2f}.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (their median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each in fresh processes; times and ratios are medians over them")
    parser.add_argument("--compile-timeout", type=float, default=900,
                        help="seconds a torch.compile'd timm worker may take to build and compile before it "
                             "counts as not finished; 0 skips the compiled contenders")
    parser.add_argument("--pipeline-images", type=int, default=256, help="0 skips the input pipeline")
    parser.add_argument("--pipeline-size", type=int, default=384)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="float32", choices=list(AUTOCAST),
                        help="keras-cxr's dtype policy; timm autocasts to float16 (with a GradScaler) or bfloat16")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="the Markdown file written")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be at least 1, --warmup at least 0")
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    rows = []
    for name in args.networks:
        for size in args.sizes:
            print(f"{name} {size}px: {', '.join(contenders(args))}, {args.rounds} round(s)", flush=True)
            summary = summarize(compare(name, size, args), args)
            rows.append({"network": f"{name} / {NETWORKS[name][0]}", "size": size, "summary": summary})
            print(report_line(name, size, summary), flush=True)
            if not summary["params_equal"]:
                print(f"WARNING: trainable parameter counts differ on {name} at {size} px: "
                      f"{summary['params_all']}", file=sys.stderr, flush=True)
    pipeline = None
    if args.pipeline_images:
        pipeline = pipeline_rates(args.pipeline_size, args.pipeline_images, args.batch)
        print(f"input pipeline {args.pipeline_size}px: {pipeline[0]:.0f} vs {pipeline[1]:.0f} images/s "
              f"(x{pipeline[0] / pipeline[1]:.2f})")
    out = pathlib.Path(args.out)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(results_markdown(rows, args, pipeline))
    os.replace(partial, out)  # an interrupted run leaves the last results whole
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
