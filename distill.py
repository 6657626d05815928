"""Distillation driver: a frozen HuBERT teacher teaches a small student.

The loop is written out in main(): teacher forward (no grad), student forward, regression loss
on the predicted teacher layers (L1 + cosine, DistilHuBERT), optional discriminative loss (KL to
the teacher's distribution over HuBERT's codewords, the paper's Sec. 3.2), backward, clip, step,
log. Defaults are the authors' (AdamW 2e-4, 7% warmup, betas 0.9/0.98, eps 1e-6, weight decay
1e-6, clip 5); --tau 0.1 is HuBERT's (theirs is in an unreleased config; each run prints how far
the teacher's codeword distribution is from uniform). Fbank students first train only their
front-end for --frontend-steps (Sec. 3.3), optionally with --specaugment.
--teacher-cache computes the teacher's hidden states once per utterance and reads them back every
step (TeacherCache: toy D&T and S&W distillation 1.36x and 1.44x faster, the same losses up to
fp16 rounding). --cache-frontend keeps a CNN student's front-end (the teacher's CNN) frozen and
computes its output once per utterance (model.FrontendCache); by default it trains with the rest
(the authors' configs scale its gradient by feature_grad_mult 0.1).
Runs unchanged under `torchrun --nproc_per_node=N distill.py ...` (DistributedDataParallel).
Ctrl-C (or SIGTERM) stops at the next step with a checkpoint; --resume continues bit-exactly.
Throughput of this step (audio-s/s, FLOPs utilisation): bench.py.

    python distill.py --teacher runs/teacher/teacher.pt --student tiny --data corpus/train \\
        --out-dir runs/tiny --max-steps 20 --disc-weight 0.5
"""
import argparse
import contextlib
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

import checkpoints
import data
import fbank_frontend
import losses
import model
from runtime import (GracefulStop, Logger, RunState, add_parts, all_finite, any_rank, autocast, batch_stream,
                     check_ranks_agree, check_same_start, finish, gather_rng, last_step, leave_process_group, lr_at,
                     mean_parts, next_batch, no_sync_unless, reached_max_steps, resume_hint, set_rng_state, setup,
                     start_run, stop_if_asked)

# ----------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True,
                   help="LibriSpeech-layout folders and/or fairseq .tsv manifests (transcripts not needed)")
    g.add_argument("--batch-seconds", type=float, default=32.0,
                   help="padded audio per batch and rank, seconds (the authors: 12 utterances ~ 150 s)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", required=True,
                   help="fairseq .pt, Hugging Face folder, torchaudio:HUBERT_BASE, or a checkpoint of this project")
    g.add_argument("--teacher-cache",
                   help="file of the teacher's hidden states for every training utterance (all layers, fp16: "
                        "frames x (L+1) x D x 2 bytes, ~0.75 GB per hour of audio for the toy teacher, ~3.6 GB "
                        "for HuBERT Base): made by the first run that names it, read instead of a teacher "
                        "forward per step by runs with the same teacher and data (the demo's students share one)")
    g = p.add_argument_group("student")
    g.add_argument("--student", default="fithubert", choices=list(model.PRESETS), help="student preset")
    g.add_argument("--layers", type=int, help="override the preset's transformer layers")
    g.add_argument("--dim", type=int, help="override the preset's width")
    g.add_argument("--ffn", type=int, help="override the preset's FFN inner width")
    g.add_argument("--heads", type=int, help="override the preset's attention heads")
    g.add_argument("--attention-dropout", type=float,
                   help="override the preset's dropout on attention weights (0.1, the authors' distiller). "
                        "PyTorch's fused CPU attention has no dropout: with it, attention falls back to a "
                        "~3x slower path (the toy D&T student's CPU step: see demo.py DISTILL)")
    g.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=False,
                   help="Fbank students only: SpecAugment on the fbank features in training (the authors' "
                        "2 frequency masks <= 30 bins, 2 time masks <= 40 frames of 10 ms); stored in the "
                        "student's config, so fine-tuning keeps it unless finetune.py --no-specaugment")
    g.add_argument("--cache-frontend", action=argparse.BooleanOptionalAction, default=False,
                   help="CNN students only: keep the front-end (the CNN copied from the teacher) frozen, the "
                        "authors' feature_grad_mult 0, and compute its output once per training utterance, "
                        "kept in memory (~frames x CNN channels x 4 bytes, 1 h at 512 channels: ~370 MB); "
                        "see model.FrontendCache. Default: the CNN trains with the transformer")
    g.add_argument("--target-layers", type=str, default=None,
                   help="teacher layers to predict, e.g. 4,8,12 (default: 3 evenly spaced for S&W "
                        "presets, proportional layer-to-layer for D&T)")
    g = p.add_argument_group("loss")
    g.add_argument("--l1-weight", type=float, default=1.0, help="weight of the L1 regression term")
    g.add_argument("--cos-weight", type=float, default=1.0, help="weight of the -log sigmoid(cos) term")
    g.add_argument("--disc-weight", type=float, default=0.0,
                   help="weight of the discriminative KL loss (0 = off; the paper tries 0.2-0.8)")
    g.add_argument("--tau", type=float, default=0.1,
                   help="temperature of the codeword distributions softmax(cos / tau), unitless. HuBERT's own "
                        "logit temperature is 0.1 (the authors read theirs from an unreleased config); at 1 a "
                        "softmax over cosines in [-1, 1] across hundreds of codewords is almost uniform (toy "
                        "teacher: entropy 4.600 vs 4.605 nats, max 1.5%%): the KL targets say almost "
                        "nothing. Each run prints the teacher's entropy on its first batch")
    g.add_argument("--disc-head", default="linear", choices=["cos", "linear", "hard"],
                   help="student discriminative head: cosine to the teacher's codewords, linear logits, "
                        "or cross-entropy on the teacher's argmax unit")
    g.add_argument("--frontend-steps", type=int, default=0,
                   help="Fbank students only: first steps that train only the front-end (L1 to teacher "
                        "layer 0, the paper's stage 1); 0 = no stage 1")
    g = p.add_argument_group("optim")
    g.add_argument("--max-steps", type=int, default=25_000, help="optimizer steps (authors: 25k)")
    g.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    g.add_argument("--warmup", type=float, default=0.07, help="warmup, fraction of --max-steps")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98), help="AdamW betas")
    g.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon")
    g.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay")
    g.add_argument("--clip", type=float, default=5.0, help="gradient norm clip")
    g.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="student autocast precision; the teacher stays fp32 under fp16 (s3prl #378)")
    g = p.add_argument_group("io")
    g.add_argument("--out-dir", required=True, help="folder for checkpoint.pt, student.pt, log.jsonl, args.json")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue exactly from OUT/checkpoint.pt")
    g.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    g.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--stop-after", type=int, help="end this run after N more steps, with a checkpoint to "
                   "--resume from (time-boxed jobs); the LR schedule still spans --max-steps")
    g.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + r)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = p.parse_args(argv)
    if args.target_layers:
        args.target_layers = [int(x) for x in args.target_layers.split(",")]
    return args


# ----------------------------------------------------------------------------------------------
# The student with its distillation heads (one module, so DDP sees every trained parameter)


class Distiller(nn.Module):
    def __init__(self, student, heads, frontend_proj=None):
        super().__init__()
        self.student, self.heads, self.frontend_proj = student, heads, frontend_proj

    def forward(self, waves, lengths, frontend_only=False, features=None):
        """-> (pred [N, B, T, C] or front-end pred [B, T, C], disc logits [B, T, K] or None, frame_lengths [B]).
        features: the front-end's output when already computed (--cache-frontend)."""
        if frontend_only:
            x, frame_lengths = self.student.frontend(waves, lengths)
            return self.frontend_proj(x), None, frame_lengths
        hidden, frame_lengths = self.student(waves, lengths, features=features)
        pred, disc_logits = self.heads(hidden)
        return pred, disc_logits, frame_lengths


def trim(x, T):
    """Cut the time axis (dim -2) of x to T frames (Fbank and CNN frame counts differ by <= 1-2)."""
    return x[..., :T, :]


def distill_loss(args, teacher, distiller, waves, lengths, frontend_only, teacher_states=None, features=None):
    """One batch: teacher and student forwards, frames aligned, then losses.distillation_loss.
    teacher_states: the teacher's (hidden states, frame lengths) of this batch if already known
    (TeacherCache), else the teacher runs; features: the student's front-end output if already
    known (FrontendCache). Returns (L, dict of float parts)."""
    if teacher_states is None:
        with autocast(waves.device, "bf16" if args.precision == "bf16" else "fp32"):  # teacher: never fp16
            teacher_states = teacher(waves, lengths)
    t_hidden, t_lengths = teacher_states
    with autocast(waves.device, args.precision):
        pred, s_logits, s_lengths = distiller(waves, lengths, frontend_only, features)
    T = min(pred.shape[-2], t_hidden[0].shape[1])
    mask = model.padding_mask(torch.minimum(s_lengths, t_lengths).clamp(max=T), T)  # (B, T)
    pred = trim(pred.float(), T)
    if frontend_only:  # Fbank stage 1: the front-end alone predicts the transformer input
        target = trim(t_hidden[0].float(), T)
    else:
        layers = distiller_module(distiller).heads.teacher_layers
        target = torch.stack([trim(t_hidden[t].float(), T) for t in layers])  # (N, B, T, C)
    t_logits = None
    if args.disc_weight > 0 and not frontend_only:  # the teacher's distribution p_T over its codewords
        t_logits = trim(teacher.head.logits(t_hidden[-1].float(), args.tau), T)
        s_logits = trim(s_logits.float(), T)
    return losses.distillation_loss(pred, target, mask, s_logits, t_logits, args.l1_weight, args.cos_weight,
                                    args.disc_weight, args.disc_head, frontend_only)


def distiller_module(m):
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def make_distiller(args, preset, student, teacher):
    """The student with its regression heads (and discriminative head, and the Fbank stage-1
    projection), as one module. Returns (distiller, pairs)."""
    tcfg = teacher.config
    style = model.PRESETS[preset].style
    pairs = model.distill_pairs(style, student.config.layers, tcfg.layers, args.target_layers)
    codewords = teacher.head.codewords.detach() if teacher.head is not None else None
    heads = losses.DistillHeads(student.config.dim, tcfg.dim, pairs,
                                args.disc_head if args.disc_weight > 0 else None, codewords, args.tau,
                                style=style)
    # Only when stage 1 runs: a parameter that never gets a gradient stalls DDP at step 2 ("Expected
    # to have finished reduction"). Default nn.Linear init, as the authors' frontend_proj.
    stage1 = student.config.frontend == "fbank" and args.frontend_steps > 0
    frontend_proj = nn.Linear(student.config.dim, tcfg.dim) if stage1 else None
    return Distiller(student, heads, frontend_proj), pairs


# ----------------------------------------------------------------------------------------------
# Main


def check_frontend_flags(args):
    """--frontend-steps and --specaugment act on the Fbank front-end, --cache-frontend on the CNN:
    refuse them for the other kind of student before any work is done (one-line error, not a
    traceback at step 1)."""
    frontend = model.PRESETS[args.student].config.get("frontend", "cnn")
    if args.cache_frontend and frontend != "cnn":
        raise ValueError(f"--cache-frontend needs a student with HuBERT's waveform CNN; {args.student} has an "
                         f"Fbank front-end (its dropout and SpecAugment differ every step)")
    used = [flag for flag, on in (("--frontend-steps", args.frontend_steps > 0),
                                  ("--specaugment", args.specaugment)) if on]
    if used and frontend != "fbank":
        raise ValueError(f"{' and '.join(used)} need{'s' if len(used) == 1 else ''} an Fbank student "
                         f"(a *-fbank preset); {args.student} has HuBERT's waveform CNN")


def codeword_entropy(teacher, waves, lengths, tau):
    """How much the discriminative targets say: the teacher's p_T = softmax(cos / tau) over its K
    codewords on a batch -> (mean entropy over real frames, nats; mean max probability; K).
    Uniform would be log K nats: near it, the KL term teaches almost nothing (lower --tau)."""
    hidden, frame_lengths = teacher(waves, lengths)
    logp = teacher.head.logits(hidden[-1].float(), tau).log_softmax(-1)  # (B, T, K)
    real = ~model.padding_mask(frame_lengths, logp.shape[1])
    entropy = -(logp.exp() * logp).sum(-1)[real]                         # (frames,)
    return entropy.mean().item(), logp.exp().amax(-1)[real].mean().item(), logp.shape[-1]


def print_codeword_entropy(teacher, waves, lengths, tau):
    ent, top, K = codeword_entropy(teacher, waves, lengths, tau)
    print(f"teacher codeword distribution (tau {tau:g}) on the first batch: mean entropy "
          f"{ent:.4f} nats (uniform: log {K} = {math.log(K):.4f}), mean max probability "
          f"{100 * top:.1f}% (near log K the discriminative targets say little; a lower --tau "
          f"sharpens them)", flush=True)


@dataclass(kw_only=True)
class Run(RunState):
    """A distillation run: build_run makes it, main steps it."""
    teacher: model.Teacher
    distiller: nn.Module                 # Distiller, inside DistributedDataParallel when world > 1
    teacher_cache: "TeacherCache" = None  # --teacher-cache
    frontend_cache: model.FrontendCache = None  # --cache-frontend


def main(args):
    check_frontend_flags(args)
    device, rank, world = setup(args)
    start_run(args, rank)
    run = build_run(args, device, rank, world)
    teacher, distiller, optimizer, scaler = run.teacher, run.distiller, run.optimizer, run.scaler
    logger = Logger(args.out_dir, args.max_steps, rank)
    distiller.train()
    last_log, interval = run.step, {}  # interval: loss parts summed since the last log line (add_parts)
    entropy_shown = rank != 0 or teacher.head is None  # printed once, on this run's first batch
    stop_at = last_step(run)
    with GracefulStop() as stopper:
        while run.step < stop_at:
            stop_if_asked(stopper, run, save)
            frontend_only = run.step < args.frontend_steps
            lr = lr_at(run.step, args.max_steps, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(args.grad_accum):
                waves, lengths, ids = read_batch(run)
                states = run.teacher_cache(ids, run.device) if run.teacher_cache else None
                features = run.frontend_cache(ids, waves, lengths) if run.frontend_cache else None
                if not entropy_shown:  # an extra teacher forward, once; it draws no random numbers
                    print_codeword_entropy(teacher, waves, lengths, args.tau)
                    entropy_shown = True
                with no_sync_unless(distiller, last=micro == args.grad_accum - 1):
                    loss, parts = distill_loss(args, teacher, distiller, waves, lengths, frontend_only, states, features)
                    stop_unless_finite(run, loss, parts)
                    scaler.scale(loss / args.grad_accum).backward()
                add_parts(interval, {"loss": loss.item(), **parts})
                logger.add_audio(lengths.sum().item() / data.SAMPLE_RATE * world)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(distiller.parameters(), args.clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.step += 1
            if run.step % args.log_every == 0 or run.step == args.max_steps:
                stage = {"stage": 1.0} if frontend_only else {}
                logger.log(run.step, run.step - last_log, **mean_parts(interval), **stage,
                           grad_norm=float(grad_norm), lr=lr)
                last_log, interval = run.step, {}
            if run.step % args.save_every == 0 or run.step == stop_at:
                save(run, run.ckpt_path)
    end_run(run)


# ----------------------------------------------------------------------------------------------
# Building (or resuming) a run, saving it, stopping it


def build_run(args, device, rank, world):
    """Data, teacher, student with its heads (new, or from OUT/checkpoint.pt with --resume),
    optimizer and scaler, in that order (the order the random numbers are drawn in)."""
    ckpt_path = os.path.join(args.out_dir, "checkpoint.pt")
    resume = checkpoints.load_checkpoint(ckpt_path) if args.resume and os.path.exists(ckpt_path) else None
    if args.resume and resume is None and rank == 0:
        print(f"--resume: no {ckpt_path} yet, starting from scratch", flush=True)
    check_same_start(resume, world)
    utterances = data.drop_short(data.load_corpus(args.data), quiet=rank != 0)
    loader, sampler = data.make_loader(utterances, args.batch_seconds, shuffle=True, seed=args.seed,
                                       rank=rank, world_size=world, num_workers=args.num_workers)
    teacher = model.load_teacher(args.teacher).to(device)
    if args.disc_weight > 0 and teacher.head is None:
        raise ValueError(f"--disc-weight needs the teacher's prediction head (final_proj + codewords); "
                         f"{args.teacher} has none (Hugging Face and fine-tuned checkpoints drop it)")
    cache = TeacherCache(args.teacher_cache, teacher, utterances, device, rank != 0) if args.teacher_cache else None
    distiller, pairs = build_distiller(args, teacher, resume, ckpt_path, utterances, device, rank)
    frontend_cache = None
    if args.cache_frontend:  # a frozen CNN: no gradient, so the optimizer and DDP leave it alone
        distiller.student.feature_extractor.requires_grad_(False)
        frontend_cache = model.FrontendCache(distiller.student)
    if rank == 0:
        tcfg, scfg = teacher.config, distiller.student.config
        n_student = model.count_parameters(distiller.student) / 1e6
        n_heads = model.count_parameters(distiller) / 1e6 - n_student
        print(f"teacher {args.teacher}: {tcfg.layers}x{tcfg.dim}, {model.count_parameters(teacher) / 1e6:.2f}M | "
              f"student {args.student}: {scfg.layers}x{scfg.dim}, {n_student:.2f}M "
              f"(+{n_heads:.2f}M heads) | pairs (student, teacher) {pairs} | {len(utterances)} utterances, "
              f"{len(sampler)} batches/epoch/rank | device {device} x{world}", flush=True)
    if world > 1:
        distiller = nn.parallel.DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=args.frontend_steps > 0 or distiller.student.config.layerdrop > 0)
    # fused: one kernel over all tensors instead of a dozen small ops per tensor (a 12-layer student
    # has ~200): the toy D&T student's CPU step 7% faster
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=args.lr, betas=tuple(args.betas),
                                  eps=args.eps, weight_decay=args.weight_decay, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    run = Run(args=args, device=device, rank=rank, world=world, ckpt_path=ckpt_path, optimizer=optimizer,
              scaler=scaler, teacher=teacher, distiller=distiller, teacher_cache=cache, frontend_cache=frontend_cache)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        run.step, run.data_state, run.saved_step = resume["step"], dict(resume["data_state"]), resume["step"]
        set_rng_state(resume["rng"][rank % len(resume["rng"])])  # exact with the same world size
        if rank == 0:
            print(f"resumed from {ckpt_path} at step {run.step}", flush=True)
    run.batches = batch_stream(loader, sampler, run.data_state)  # advances run.data_state
    return run


def build_distiller(args, teacher, resume, ckpt_path, utterances, device, rank):
    """The student (new from --student, or the checkpoint's) with its heads, on device; a new
    Fbank student gets its CMVN from the training audio. Returns (distiller, pairs)."""
    if resume:
        student = model.encoder_from_checkpoint(resume, ckpt_path)
    else:
        student = model.build_student(args.student, teacher, layers=args.layers, dim=args.dim,
                                      ffn=args.ffn, heads=args.heads, attention_dropout=args.attention_dropout,
                                      specaugment=args.specaugment)
    distiller, pairs = make_distiller(args, args.student, student, teacher)
    distiller.to(device)
    if student.config.frontend == "fbank" and resume is None:
        set_cmvn(student, utterances, rank)
    if resume:
        distiller.load_state_dict(resume["distiller"])
    return distiller, pairs


def save(run, path, final=False):
    """Every rank calls it (the RNG states are gathered); rank 0 writes. final: the student for
    finetune.py alone; else the whole state for --resume."""
    check_ranks_agree(run.distiller, run.world)
    rngs = None if final else gather_rng(run.world)
    if run.rank != 0:
        return
    d, args = distiller_module(run.distiller), run.args
    student_ckpt = checkpoints.encoder_checkpoint(d.student, "student", preset=args.student,
                                                  heads=d.heads.state_dict(), heads_config=d.heads.config(),
                                                  step=run.step, args=vars(args))
    if final:
        checkpoints.save_checkpoint(student_ckpt, path)
        return
    checkpoints.save_checkpoint({**student_ckpt, "distiller": d.state_dict(), "optimizer": run.optimizer.state_dict(),
                                 "scaler": run.scaler.state_dict(), "data_state": dict(run.data_state),
                                 "rng": rngs}, path)
    run.saved_step = run.step


def read_batch(run):
    """The next batch's (waves [B, S], lengths [B]) on the device and its utterance ids; on unreadable audio (any rank)
    every rank saves the state before this step and stops."""
    batch, error = next_batch(run.batches)
    if any_rank(error, run.device, run.world):
        if error:  # printed by the rank that read the file
            print(f"error: {error}", file=sys.stderr, flush=True)
        save(run, run.ckpt_path)
        finish(1, f"stopped on unreadable audio; the state after step {run.step} is in {run.ckpt_path}; "
                  f"fix or remove the file, then {resume_hint()}", run.rank, run.world)
    return batch["waves"].to(run.device), batch["lengths"].to(run.device), batch["ids"]


def stop_unless_finite(run, loss, parts):
    """A non-finite loss on any rank stops every rank, without saving: the weights may be the cause."""
    if all_finite(loss.detach(), run.device, run.world):
        return
    found = ", ".join(f"{k} {v:.4g}" for k, v in parts.items() if not isinstance(v, list))
    last = run.ckpt_path if run.saved_step is not None else "none"
    finish(1, f"error: non-finite loss at step {run.step + 1} ({found}); stopping. Last checkpoint: {last} "
              f"(step {run.saved_step}). A teacher with broken weights fails at step 1; otherwise try a lower "
              f"--lr or --precision fp32", run.rank, run.world)


def end_run(run):
    """After the loop: the final student.pt, or (--stop-after) only the checkpoint saved last."""
    if reached_max_steps(run):
        path = os.path.join(run.args.out_dir, "student.pt")
        save(run, path, final=True)
        if run.rank == 0:
            print(f"done: {path} (student for finetune.py --init)", flush=True)
    leave_process_group(run.world)


def set_cmvn(student, utterances, rank, max_utts=200):
    """Global CMVN of the Fbank front-end from (a sample of) the training audio, stored in the model."""
    sample = utterances[:: max(1, len(utterances) // max_utts)][:max_utts]
    mean, std = fbank_frontend.compute_cmvn(data.load_audio(u.path) for u in sample)
    student.feature_extractor.set_cmvn(mean, std)
    if rank == 0:
        print(f"fbank CMVN from {len(sample)} utterances", flush=True)


# ----------------------------------------------------------------------------------------------
# The teacher's hidden states, computed once (--teacher-cache)


class TeacherCache:
    """The frozen teacher's hidden states of every training utterance, computed once and kept in a
    file, so that each distillation step (and each student distilled from the same teacher on the
    same data) skips the teacher's forward pass: a quarter to a third of a toy D&T or S&W step.

    Each utterance is run alone, without padding: with HuBERT Base's GroupNorm CNN its states
    differ a little from those in a padded batch (README, "Padding and GroupNorm"), the same for
    every epoch. Stored in fp16, read memory-mapped (runs side by side share the pages), returned
    in fp32. The file holds a fingerprint of the teacher's weights and every utterance's id and
    length: one made for another teacher or other audio is refused, not silently used."""

    FORMAT = "hubert-distill/teacher-cache/1"

    def __init__(self, path, teacher, utterances, device, quiet=False):
        fingerprint = weights_fingerprint(teacher)
        with file_lock(path, quiet):  # the first run to name the file makes it; others wait, then read
            if not os.path.exists(path):
                make_teacher_cache(path, teacher, utterances, device, fingerprint, quiet)
        cache = checkpoints.load_checkpoint(path, mmap=True)
        if cache.get("format") != self.FORMAT:
            raise ValueError(f"--teacher-cache {path}: not a teacher cache of this project; "
                             f"delete it or name another file")
        if cache["fingerprint"] != fingerprint:
            raise ValueError(f"--teacher-cache {path} was made with another teacher (its weights differ from "
                             f"--teacher's); delete it or name another file")
        self.hidden = cache["hidden"]  # (L+1, all frames, D) fp16
        self.index = {}                # utterance id -> (first frame, frames, samples)
        start = 0
        for uid, samples, frames in zip(cache["ids"], cache["samples"], cache["frames"]):
            self.index[uid] = (start, frames, samples)
            start += frames
        for u in utterances:
            differs = "missing" if u.id not in self.index else \
                "of another length" if self.index[u.id][2] != u.num_samples else None
            if differs:
                raise ValueError(f"--teacher-cache {path} was made for other audio ({u.id} is {differs}); "
                                 f"delete it or name another file")

    def __call__(self, ids, device):
        """The batch's (hidden states: list of L+1 x [B, T, D] fp32, zero-padded; frame lengths [B])."""
        spans = [self.index[uid][:2] for uid in ids]
        T = max(n for _, n in spans)
        out = torch.zeros(self.hidden.shape[0], len(ids), T, self.hidden.shape[2])
        for b, (start, n) in enumerate(spans):
            out[:, b, :n] = self.hidden[:, start:start + n]
        return list(out.to(device).unbind(0)), torch.tensor([n for _, n in spans], device=device)


def weights_fingerprint(module):
    """sha256 of a module's parameter and buffer names and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + b"\0" + t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path, quiet=False):
    """Hold PATH.lock while the block runs (fcntl.flock: released even if the process dies); where
    there is no fcntl (Windows) there is no lock: two runs would both make the file, the same."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(f"{path}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"waiting for another run to finish {path}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@torch.no_grad()
def make_teacher_cache(path, teacher, utterances, device, fingerprint, quiet=False):
    """Run the teacher on each utterance alone and save all its hidden states (fp16) to path."""
    total, done, hidden, frames = sum(u.num_samples for u in utterances), 0, [], []
    start, shown = time.time(), 0
    for u in utterances:
        wave = data.load_audio(u.path).to(device)
        states, _ = teacher(wave[None], torch.tensor([len(wave)], device=device))
        h = torch.stack(states)[:, 0].half()  # (L+1, T, D)
        if not torch.isfinite(h).all():
            raise ValueError(f"--teacher-cache: the teacher's hidden states of {u.id} do not fit fp16; run without it")
        hidden.append(h.cpu())
        frames.append(h.shape[1])
        done += u.num_samples
        if not quiet and (done / total >= shown + 0.1 or done == total):
            shown = done / total
            rate = done / data.SAMPLE_RATE / (time.time() - start)
            print(f"teacher cache {path}: {100 * shown:.0f}% of {total / data.SAMPLE_RATE / 3600:.2f} h "
                  f"| {rate:.1f} audio-s/s", flush=True)
    checkpoints.save_checkpoint({"format": TeacherCache.FORMAT, "fingerprint": fingerprint,
                                 "ids": [u.id for u in utterances], "samples": [u.num_samples for u in utterances],
                                 "frames": frames, "hidden": torch.cat(hidden, 1)}, path)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FileNotFoundError) as e:  # our own checks' one-line messages, no traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # a second Ctrl-C (the first one saves, see GracefulStop)
        sys.exit(130)
