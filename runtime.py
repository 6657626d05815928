"""Run plumbing every driver shares: flags, device, DDP, run state, resume, graceful stop, logging.

distill.py, finetune.py and pretrain.py import these, never each other. Nothing here is about
distillation: it is what any plain PyTorch loop needs to run on one CPU or under `torchrun` on
many GPUs, stop cleanly on Ctrl-C or a non-finite loss (every rank together: torchaudio #3749),
and resume bit-exactly (checkpoints keep every rank's RNG state and the data position). A driver
subclasses RunState with its networks (network(), checkpoint()) and writes its loop with these:

    device, rank, world = runtime.setup(args)          # under torchrun: one process per GPU
    ckpt_path, resume = runtime.find_resume(args, rank, world)
    run = Run(args=args, device=device, ..., optimizer=runtime.adamw(net.named_parameters(), args))
    runtime.start(run, resume, loader, sampler)        # restores the state, starts the batches
    with runtime.GracefulStop() as stopper:
        while run.step < runtime.last_step(run):
            runtime.stop_if_asked(stopper, run)        # Ctrl-C: save, exit 130
            batch = runtime.read_batch(run)            # unreadable audio: save, exit 1
            ...loss...; runtime.stop_unless_finite(run, loss, parts); backward, step; run.step += 1
            runtime.save(run, run.ckpt_path)           # every --save-every steps
"""
import argparse
import contextlib
import json
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import checkpoints
import data

# ----------------------------------------------------------------------------------------------
# Command line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown once, after each flag's help (none for flags without one); the epilog's
    examples keep their lines."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def make_parser(doc):
    """An ArgumentParser whose description is the docstring's first line and whose epilog is its
    last paragraph, the usage examples."""
    return argparse.ArgumentParser(description=doc.split("\n")[0], epilog="examples:\n" + doc.strip().split("\n\n")[-1],
                                   formatter_class=HelpFormatter)


def add_io_args(g, outputs, required=True):
    """The flags every driver shares: where its files go, resuming, logging, seed, device."""
    g.add_argument("--out-dir", required=required, help=f"folder for {outputs}")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue exactly from OUT/checkpoint.pt")
    g.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    g.add_argument("--stop-after", type=int, help="end this run after N more steps, with a checkpoint to "
                   "--resume from (time-boxed jobs); the LR schedule still spans --max-steps")
    g.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + r)")
    g.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps, ...")


def run_main(main, parse_args):
    """A driver's `python x.py`: our own checks' errors as one line without a traceback; a second
    Ctrl-C (the first one saves, see GracefulStop) exits 130."""
    try:
        main(parse_args())
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# Device, process group, run folder


def pick_device(name):
    """"auto" -> cuda when there is one, else Apple's mps, else cpu; anything else as torch names it.
    (On mps an operation it lacks raises; PYTORCH_ENABLE_MPS_FALLBACK=1 runs those on the CPU.)"""
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        return torch.device("cuda" if torch.cuda.is_available() else
                            "mps" if mps is not None and mps.is_available() else "cpu")
    return torch.device(name)


def setup(args):
    """Device, distributed process group (under torchrun), seeds. Returns (device, rank, world).

    Each rank seeds with seed + rank, so that ranks draw different dropout masks; DDP copies rank
    0's initial weights to every rank, and checkpoints keep every rank's RNG state."""
    rank, world = 0, 1
    device = pick_device(args.device)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per process
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL starts; and checkpoints keep this GPU's RNG state
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    return device, rank, world


def start_run(args, rank):
    """Create OUT, print the arguments and save them to OUT/args.json (rank 0 only)."""
    if rank == 0:
        os.makedirs(args.out_dir, exist_ok=True)
        print("arguments: " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()), flush=True)
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)


# ----------------------------------------------------------------------------------------------
# Schedule and data position


def lr_at(step, max_steps, peak, warmup):
    """Linear warmup over `warmup` (fraction of max_steps) to `peak`, then linear decay to 0."""
    w = max(1, int(warmup * max_steps))
    if step < w:
        return peak * (step + 1) / w
    return peak * max(0.0, (max_steps - step) / max(1, max_steps - w))


def batch_stream(loader, sampler, state):
    """Endless batches; state {"epoch", "skip"} counts what was consumed, for exact resume."""
    while True:
        sampler.set_epoch(state["epoch"], skip=state["skip"])
        for batch in loader:
            state["skip"] += 1
            yield batch
        state["epoch"] += 1
        state["skip"] = 0


@dataclass(kw_only=True)
class RunState:
    """What every driver's loop carries between steps and saves for --resume. A driver's Run adds its
    networks and says how they are saved (network, checkpoint); the helpers below do the rest."""
    args: object                         # the parsed command line
    device: torch.device
    rank: int                            # this process (0 without torchrun)
    world: int                           # processes
    ckpt_path: str                       # OUT/checkpoint.pt: the state to --resume from
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler = None  # fp16 loss scaling (disabled unless --precision fp16)
    batches: object = None               # endless batch iterator (batch_stream)
    step: int = 0                        # optimizer steps done
    data_state: dict = field(default_factory=lambda: {"epoch": 0, "skip": 0})  # position in the data
    saved_step: int = None               # step of the last checkpoint written this run (None: none)

    def network(self):
        """The trained module, whose parameters must agree across ranks."""
        raise NotImplementedError

    def checkpoint(self, full):
        """The networks as plain data (a dict for checkpoints.save_checkpoint); full: for --resume."""
        raise NotImplementedError


def find_resume(args, rank, world):
    """(OUT/checkpoint.pt, its contents with --resume or None); every rank must find the same one."""
    ckpt_path = os.path.join(args.out_dir, "checkpoint.pt")
    resume = checkpoints.load_checkpoint(ckpt_path) if args.resume and os.path.exists(ckpt_path) else None
    if args.resume and resume is None and rank == 0:
        print(f"--resume: no {ckpt_path} yet, starting from scratch", flush=True)
    check_same_start(resume, world)
    return ckpt_path, resume


def start(run, resume, loader, sampler):
    """Restore optimizer, scaler, step, data position and this rank's RNG state from `resume` (if
    any), then start the batch stream. Call it last: after everything that draws random numbers."""
    if resume:
        run.optimizer.load_state_dict(resume["optimizer"])
        if run.scaler is not None:
            run.scaler.load_state_dict(resume["scaler"])
        run.step = run.saved_step = resume["step"]
        run.data_state = dict(resume["data_state"])
        set_rng_state(resume["rng"][run.rank % len(resume["rng"])])  # exact with the same world size
    run.batches = batch_stream(loader, sampler, run.data_state)  # advances run.data_state


def wrap_ddp(module, device, world, find_unused):
    """DistributedDataParallel around `module` under torchrun, else the module itself."""
    if world == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused)


def adamw(named_params, args):
    """AdamW from the driver's --lr, --betas, --eps, --weight-decay over the trainable (name, parameter)
    pairs. Weight decay falls on weights only, none on any parameter whose name holds "bias": the
    parameter groups of the authors' s3prl optimizer (layer-norm weights decay too; their names hold
    no "LayerNorm"). fused: one kernel over all tensors instead of a dozen small ops per tensor."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [{"params": [p for n, p in named if "bias" not in n], "weight_decay": args.weight_decay},
              {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas), eps=args.eps, fused=True)


def save(run, path, full=True):
    """Every rank calls it (a full checkpoint gathers the RNG states); rank 0 writes. full: the whole
    state for --resume; else the networks alone (student.pt, best.pt, teacher.pt)."""
    check_ranks_agree(run.network(), run.world)
    rngs = gather_rng(run.world) if full else None
    if run.rank != 0:
        return
    ckpt = run.checkpoint(full)
    if full:
        ckpt.update(step=run.step, optimizer=run.optimizer.state_dict(), data_state=dict(run.data_state), rng=rngs,
                    scaler=run.scaler.state_dict() if run.scaler is not None else None)
        run.saved_step = run.step
    checkpoints.save_checkpoint(ckpt, path)


def read_batch(run):
    """The next batch (a dict, on the CPU); unreadable audio on any rank stops every rank, with the
    state before this step saved."""
    batch, error = next_batch(run.batches)
    if any_rank(error, run.device, run.world):
        stop_on_bad_audio(run, error)
    return batch


def stop_on_bad_audio(run, error):
    """Every rank calls it: the state after this step is saved, then every rank stops."""
    if error:  # printed by the rank that read the file
        print(f"error: {error}", file=sys.stderr, flush=True)
    save(run, run.ckpt_path)
    finish(1, f"stopped on unreadable audio; the state after step {run.step} is in {run.ckpt_path}; "
              f"fix or remove the file, then {resume_hint()}", run.rank, run.world)


def stop_unless_finite(run, loss, parts, hint="Try a lower --lr or --precision fp32"):
    """A non-finite loss on any rank stops every rank, without saving: the weights may be the cause."""
    if all_finite(loss.detach(), run.device, run.world):
        return
    found = ", ".join(f"{k} {v:.4g}" for k, v in parts.items() if not isinstance(v, list))
    last = run.ckpt_path if run.saved_step is not None else "none"
    finish(1, f"error: non-finite loss at step {run.step + 1} ({found}); stopping. Last checkpoint: {last} "
              f"(step {run.saved_step}). {hint}", run.rank, run.world)


# ----------------------------------------------------------------------------------------------
# RNG state, and agreement between ranks (exact resume)


def rng_state():
    """Every random generator a step touches, as tensors and plain values (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
             "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_initialized():  # this process's GPU only (all GPUs would wake every one of them)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_same_start(resume, world):
    """All ranks must resume from the same checkpoint; a rank that finds none would start over."""
    steps = [resume["step"] if resume else None] * world
    if world > 1:
        dist.all_gather_object(steps, steps[0])
    if len(set(steps)) > 1:
        raise ValueError(f"the ranks found different checkpoints to resume from (steps {steps}); "
                         f"--out-dir must be a folder that every node shares")


def gather_rng(world):
    """rng_state() of every rank, in rank order, for the checkpoint (all ranks must call it)."""
    states = [rng_state()] * world
    if world > 1:
        dist.all_gather_object(states, rng_state())
    return states


def check_ranks_agree(module, world):
    """Raise if the parameters differ between ranks. DDP keeps them equal; a parameter it does not
    know of, or a step one rank skipped, would let them drift apart silently. Compares per-tensor
    sums (float64): equal tensors give equal sums, drifted ones practically never do."""
    if world == 1:
        return
    sums = [None] * world
    dist.all_gather_object(sums, [p.detach().double().sum().item() for p in module.parameters()])
    if any(s != sums[0] for s in sums):
        raise RuntimeError("parameters differ between ranks; this is a bug, please report it")


# ----------------------------------------------------------------------------------------------
# Stopping: every rank takes the same branch


def any_rank(flag, device, world):
    """True when `flag` holds on any rank. One all-reduce, so that every rank takes the same branch:
    a rank that stops alone leaves the others waiting in the next all-reduce (torchaudio #3749)."""
    flag = torch.tensor(float(bool(flag)), device=device)
    if world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


def all_finite(value, device, world):
    """True when the loss is finite on every rank (so all ranks stop together)."""
    return not any_rank(not torch.isfinite(value).all(), device, world)


def next_batch(batches):
    """(batch, None), or (None, message) when an audio file turns out broken while decoding."""
    try:
        return next(batches), None
    except data.AudioError as e:
        return None, str(e).strip().splitlines()[-1].split("AudioError: ", 1)[-1]


def no_sync_unless(model, last):
    """DDP all-reduces gradients in every backward; while accumulating, only the last micro-batch's
    needs to (the others add up locally)."""
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


class GracefulStop:
    """Ctrl-C (SIGINT; torchrun forwards it), SIGTERM (preemption) or, on Windows, the Ctrl-Break
    demo_parts/stages.py sends (SIGBREAK) asks the loop to stop at the next step boundary, where
    all ranks agree (any_rank), save and exit 130: a checkpoint taken mid-step would not be
    exact. A second Ctrl-C stops at once, without saving."""

    def __enter__(self):
        self.requested, self.previous = False, {}
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self.previous = {s: signal.signal(s, self.handle) for s in data.STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              f"(Ctrl-C again: stop now, without saving)", file=sys.stderr, flush=True)


def resume_hint():
    argv = sys.argv if "--resume" in sys.argv else sys.argv + ["--resume"]
    return f"continue with: python {shlex.join(argv)} (under torchrun: the same torchrun command plus --resume)"


def last_step(run):
    """The step this run ends after: --max-steps, or earlier with --stop-after N."""
    args = run.args
    return min(args.max_steps, run.step + args.stop_after) if args.stop_after else args.max_steps


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def stop_if_asked(stopper, run):
    """At a step boundary: when Ctrl-C or SIGTERM reached any rank (GracefulStop), every rank
    saves and exits 130 after the same step."""
    if any_rank(stopper.requested, run.device, run.world):
        save(run, run.ckpt_path)
        finish(130, f"interrupted: the state after step {run.step} is in {run.ckpt_path}; {resume_hint()}",
               run.rank, run.world)


def reached_max_steps(run):
    """After a driver's loop: True at --max-steps; else (--stop-after) rank 0 says how to go on."""
    if run.step >= run.args.max_steps:
        return True
    if run.rank == 0:
        print(f"stopped after step {run.step} (--stop-after): {run.ckpt_path}; {resume_hint()}", flush=True)
    return False


def leave_process_group(world):
    """Every rank calls this once, at the end of its run: wait for all (rank 0 may still be writing
    a file), then leave. Under load gloo sometimes aborted a rank torn down before the others."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def finish(code, message, rank, world):
    """Print `message` (rank 0), leave the process group, exit with `code`. Every rank calls it
    together (the stops are agreed with any_rank first)."""
    if rank == 0:
        print(message, file=sys.stderr, flush=True)
    leave_process_group(world)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------
# Logging


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Logger:
    """One fixed-format progress line and one JSON line in OUT/log.jsonl per call (rank 0)."""

    def __init__(self, out_dir, max_steps, rank):
        self.path = os.path.join(out_dir, "log.jsonl")
        self.max_steps, self.rank = max_steps, rank
        self.t0, self.audio = time.time(), 0.0

    def add_audio(self, seconds):
        self.audio += seconds

    def log(self, step, steps_done, **values):
        elapsed = time.time() - self.t0
        ms = 1000 * elapsed / max(1, steps_done)
        rec = {"step": step, **values, "ms_per_step": round(ms, 1),
               "audio_s_per_s": round(self.audio / max(elapsed, 1e-9), 2)}
        self.t0, self.audio = time.time(), 0.0
        if self.rank != 0:
            return rec
        eta = format_duration(ms / 1000 * (self.max_steps - step))
        parts = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "lr" and not isinstance(v, list))
        print(f"step {step:>6}/{self.max_steps} | {parts} | lr {values.get('lr', 0):.2e} | "
              f"{ms:.0f} ms/step | {rec['audio_s_per_s']:.1f} audio-s/s | ETA {eta}", flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


def add_parts(sums, parts):
    """Add one batch's loss parts (numbers, or per-layer lists) to sums {name: (total, batches)}."""
    for k, v in parts.items():
        total, n = sums.get(k, (0.0, 0))
        sums[k] = (total + np.asarray(v, dtype=float), n + 1)


def mean_parts(sums):
    """{name: mean over the batches since the last log line}: what each progress line shows."""
    return {k: (total / n).tolist() for k, (total, n) in sums.items()}


# ----------------------------------------------------------------------------------------------
# Precision


def autocast(device, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
