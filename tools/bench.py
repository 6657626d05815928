"""Throughput of a distillation training step: audio-seconds per second and model FLOPs utilisation.

One step is what distill.py does per batch: teacher forward (no grad), student forward and
backward, AdamW; its peak memory is measured too (GPU: tensors; Linux CPU: the process). The setups: the toy teacher of pretrain.py -> the "tiny" student, and HuBERT
Base (12 x 768, random weights) -> FitHuBERT, the paper's main pair; each in fp32 and bf16
autocast, on random audio. FLOPs are counted once per setup by torch.utils.flop_counter.
FlopCounterMode (matmuls, convolutions, attention; elementwise ops count 0), and MFU = FLOPs per
step / seconds per step / the machine's fp32 matmul peak, measured in the same run with a large
torch.matmul. A torch.profiler pass names the ops that take the time.
`python -m tools.bench fbank` times inference instead: whole encoders (HuBERT Base, fithubert,
fithubert-fbank) on the CPU, the paper's Fbank speed claim (Sec. 3.3). Run it from the
repository root, as a module: it imports the project's files.

    python -m tools.bench                                    # CPU: about two minutes
    python -m tools.bench --device cuda --batch 16 --seconds 10
    python -m tools.bench fbank                              # CPU inference time: fithubert vs fithubert-fbank
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import data
import distill
import model
import runtime

# ----------------------------------------------------------------------------------------------
# Setups and the matmul peak

SETUPS = {  # name: (teacher EncoderConfig fields, student preset)
    "toy": (dict(layers=4, dim=256, ffn=1024, heads=4,  # pretrain.py's default teacher
                 conv_layers=model.hubert_cnn(128)), "tiny"),
    "base": ({}, "fithubert"),  # EncoderConfig's defaults are HuBERT Base
}
MAX_STEP_SECONDS = 30  # skip a precision whose step would take longer even at its matmul peak


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, min_seconds=0.05):
    """FLOP/s of the best of 3 square torch.matmul in nn.Linear's layout (x @ W.T), n doubling from
    512 until one takes min_seconds (or n = 16384): the machine's practical peak for that dtype."""
    for n in (512, 1024, 2048, 4096, 8192, 16384):
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        times = []
        for _ in range(4):  # the first call is a warm-up
            sync(device)
            t0 = time.perf_counter()
            torch.matmul(a, b.t())
            sync(device)
            times.append(time.perf_counter() - t0)
        if min(times[1:]) >= min_seconds:
            break
    return 2 * n ** 3 / min(times[1:])


def attention_flops():
    """FlopCounterMode formulas for the CPU attention kernel (flash_attention_for_cpu), which it
    does not count yet; CUDA's attention kernels it knows."""
    from torch.utils import flop_counter
    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, out_shape=None, **__: flop_counter.sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, out_shape=None, **__: flop_counter.sdpa_backward_flop_count(g, q, k, v)}


# ----------------------------------------------------------------------------------------------
# One setup in one precision


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):  # Linux: "5" resets the peak resident set size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory(device):
    """Bytes since reset_peak_memory: CUDA's peak allocation by tensors; on a Linux CPU the process's
    peak resident set (VmHWM: torch's libraries and the Python runtime included); else None."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), None)
    return None


def measure(args, device, teacher, preset, precision, waves, lengths):
    """(FLOPs per step, median seconds per step, median CPU seconds of this process per step,
    {op: share of the time}, peak memory bytes of a step) of training steps."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode
    step_args = argparse.Namespace(**{**vars(distill_defaults()), "precision": precision,
                                      "disc_weight": args.disc_weight})
    distiller, _ = distill.make_distiller(step_args, preset, model.build_student(preset, teacher), teacher)
    distiller.to(device).train()
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-5)

    def train_step():
        loss, _ = distill.distill_loss(step_args, teacher, distiller, waves, lengths, False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(distiller.parameters(), step_args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)

    with FlopCounterMode(display=False, custom_mapping=attention_flops()) as counter:
        train_step()  # also the warm-up
    times = []
    reset_peak_memory(device)
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        train_step()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    peak = peak_memory(device)
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with profile(activities=activities, acc_events=True) as prof:
        train_step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in ops) or 1
    wall, cpu = (sorted(t)[len(t) // 2] for t in zip(*times))
    return counter.get_total_flops(), wall, cpu, {e.key: getattr(e, key) / total for e in ops[:6]}, peak


def distill_defaults():
    """distill.py's defaults for the loss and optimiser (its required paths are not used here)."""
    return distill.parse_args(["--teacher", "-", "--data", "-", "--out-dir", "-"])


# ----------------------------------------------------------------------------------------------
# Fbank vs CNN inference (`python -m tools.bench fbank`): whole encoders with random weights


def fbank_bench(args):
    """Median inference time of whole encoders on one batch, side by side in one process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    waves = 0.1 * torch.randn(args.batch, int(args.seconds * data.SAMPLE_RATE))
    lengths = torch.full((args.batch,), waves.shape[1])
    models = {"HuBERT Base (teacher)": model.Encoder(model.EncoderConfig()),
              "fithubert": model.build_student("fithubert"),
              "fithubert-fbank": model.build_student("fithubert-fbank")}

    def median_ms(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)

    rows = {}
    with torch.inference_mode():
        for name, m in models.items():
            m.eval()
            total = median_ms(lambda: m(waves, lengths))
            front = median_ms(lambda: m.frontend(waves, lengths))
            rows[name] = {"params_M": round(model.count_parameters(m) / 1e6, 2), "ms": round(total, 1),
                          "frontend_ms": round(front, 1)}
    base = rows["fithubert"]["ms"]
    print(f"{args.batch} x {args.seconds:g} s audio, {args.threads} CPU threads, median of {args.runs} runs, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"{'model':<24} {'params (M)':>10} {'ms':>8} {'front-end ms':>12} {'front-end %':>11} "
          f"{'speed vs fithubert':>18}")
    for name, r in rows.items():
        r["speedup_vs_fithubert"] = round(base / r["ms"], 2)
        print(f"{name:<24} {r['params_M']:>10.2f} {r['ms']:>8.1f} {r['frontend_ms']:>12.1f} "
              f"{100 * r['frontend_ms'] / r['ms']:>10.0f}% {r['speedup_vs_fithubert']:>17.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "seconds": args.seconds, "threads": args.threads, "rows": rows}, f, indent=2)
    return rows


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = runtime.make_parser(__doc__)
    p.prog = "python -m tools.bench"  # not bench.py: it runs as a module
    g = p.add_argument_group("workload")
    g.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS), help="teacher -> student pairs")
    g.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="autocast precisions; bf16 is skipped where its matmul is slower than fp32's "
                        "(CPUs without AVX512-BF16 or AMX)")
    g.add_argument("--batch", type=int, default=4, help="utterances per batch")
    g.add_argument("--seconds", type=float, default=4.0, help="length of each utterance, seconds")
    g.add_argument("--disc-weight", type=float, default=0.5, help="discriminative loss weight (0 = regression only)")
    g = p.add_argument_group("run")
    g.add_argument("--steps", type=int, default=3, help="timed steps per setup and precision, after 1 warm-up")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--seed", type=int, default=0, help="random seed (weights and audio)")
    g.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def parse_fbank_args(argv=None):
    p = runtime.make_parser(__doc__)  # the same examples
    p.prog = "python -m tools.bench fbank"
    p.description = "CPU inference time: fithubert vs fithubert-fbank vs the teacher"
    p.add_argument("--batch", type=int, default=4, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each utterance, seconds")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model (median reported)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(args):
    device = runtime.pick_device(args.device)
    torch.manual_seed(args.seed)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(device, dtypes[p]) for p in dict.fromkeys(["fp32", *args.precisions])}
    waves = 0.1 * torch.randn(args.batch, int(args.seconds * data.SAMPLE_RATE), device=device)
    lengths = torch.full((args.batch,), waves.shape[1], device=device)
    rows = []
    for name in args.setups:
        teacher_fields, preset = SETUPS[name]
        encoder = model.Encoder(model.EncoderConfig(**teacher_fields))
        teacher = model.Teacher(encoder, model.PredictionHead(encoder.config.dim, 256, 504)).to(device)
        flops = 0
        for precision in args.precisions:
            if peaks[precision] < peaks["fp32"] or flops / peaks[precision] > MAX_STEP_SECONDS:
                print(f"{name} {precision}: skipped, {precision} matmul runs at {peaks[precision] / 1e9:.1f} "
                      f"GFLOP/s here, fp32 at {peaks['fp32'] / 1e9:.1f}", flush=True)
                continue
            flops, seconds, cpu_seconds, top, peak = measure(args, device, teacher, preset, precision, waves, lengths)
            rows.append({"setup": name, "precision": precision, "gflop": flops / 1e9, "seconds": seconds,
                         "peak_gb": peak / 1e9 if peak else None,
                         "audio_s_per_s": args.batch * args.seconds / seconds, "top_ops": top,
                         "cpu_share": cpu_seconds / seconds / torch.get_num_threads()})
            print(f"{name} {precision}: {flops / 1e9:.1f} GFLOP/step, {seconds:.3f} s/step", flush=True)
    # Measured again: other processes may have slowed the first measurement; the better one counts.
    peaks = {p: max(peak, matmul_peak(device, dtypes[p])) for p, peak in peaks.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{where}, torch {torch.__version__}; batch {args.batch} x {args.seconds:g} s; median of {args.steps} "
          f"steps after 1 warm-up; matmul peak " + ", ".join(f"{p} {v / 1e12:.3f}" for p, v in peaks.items())
          + " TFLOP/s; FLOPs by FlopCounterMode (one step)")
    for r in rows:
        r["mfu"] = r["gflop"] * 1e9 / r["seconds"] / peaks["fp32"]
        r["mfu_own_peak"] = r["gflop"] * 1e9 / r["seconds"] / peaks[r["precision"]]
        # On a CPU shared with other work the process gets less than its threads' worth of time:
        # the CPU share says how much, so that a low MFU from contention is not read as slow code.
        print(f"{r['setup']:<5} {r['precision']}: {r['gflop']:8.1f} GFLOP/step {r['seconds']:8.3f} s/step "
              f"{r['audio_s_per_s']:8.1f} audio-s/s   MFU {100 * r['mfu']:5.1f}% of the fp32 peak"
              + (f", {100 * r['mfu_own_peak']:.1f}% of bf16's" if r["precision"] == "bf16" else "")
              + (f"; CPU share {100 * r['cpu_share']:.0f}%" if device.type == "cpu" else "")
              + (f"; peak memory {r['peak_gb']:.2f} GB" + (" (process)" if device.type == "cpu" else "")
                 if r["peak_gb"] else "")
              + "\n    time: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["top_ops"].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "batch": args.batch, "seconds": args.seconds, "peaks": peaks, "rows": rows},
                      f, indent=2)
    return rows


def command(argv):
    """(what to run, its parsed arguments) for `python -m tools.bench [fbank] ...`."""
    return (fbank_bench, parse_fbank_args(argv[1:])) if argv[:1] == ["fbank"] else (main, parse_args(argv))


if __name__ == "__main__":
    run, args = command(sys.argv[1:])
    run(args)
