"""Distillation driver: a frozen HuBERT teacher teaches a small student.

The loop is written out in main(): teacher forward (no grad), student forward, regression loss on
the predicted teacher layers (L1 + cosine, DistilHuBERT), optional discriminative loss (KL to the
teacher's distribution over HuBERT's codewords, the paper's Sec. 3.2), backward, clip, step, log.
The distillation heads (DistillHeads) live here: only this loop uses them. Defaults are the authors'
(AdamW 2e-4, 7% warmup then linear decay, betas 0.9/0.98, eps 1e-6, weight decay 0.01 on weights and
none on biases, clip 5; their optimizer is s3prl's Lamb in Adam mode: AdamW without bias correction)
except --tau 0.1, HuBERT's own (theirs is unreleased; each run prints how far the teacher's codeword
distribution is from uniform). Fbank students first train only their front-end for --frontend-steps
(Sec. 3.3), optionally with --specaugment. --teacher-cache keeps the teacher's hidden states in a
file, --cache-frontend a CNN student's frozen front-end output in memory (caches.py).
Runs unchanged under `torchrun --nproc_per_node=N distill.py ...` (DistributedDataParallel);
Ctrl-C (or SIGTERM) stops at the next step with a checkpoint; --resume continues bit-exactly.

    python distill.py --teacher runs/teacher/teacher.pt --student tiny --data corpus/train \\
        --out-dir runs/tiny --max-steps 20 --disc-weight 0.5
    torchrun --nproc_per_node=8 distill.py --teacher hubert_base_ls960.pt --student fithubert \\
        --data LibriSpeech/train-clean-100 --out-dir runs/fithubert --precision bf16
"""
import argparse
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

import caches
import checkpoints
import data
import fbank_frontend
import losses
import model
import runtime
from runtime import (GracefulStop, Logger, RunState, add_parts, autocast, last_step, lr_at, mean_parts,
                     no_sync_unless, read_batch, reached_max_steps, save, set_lr, setup, start_run, stop_if_asked,
                     stop_unless_finite)

HEAD_TYPES = ("cos", "linear", "hard")  # student discriminative heads, see DistillHeads
HEAD_STYLES = ("last", "layerwise")     # regression heads, model.Preset.style, see DistillHeads

# ----------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = runtime.make_parser(__doc__)
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
                        "frames x (L+1) x D x 2 bytes, ~3.6 GB per hour of audio for HuBERT Base): made by the "
                        "first run that names it, read instead of a teacher forward per step by runs with the "
                        "same teacher and data (caches.TeacherCache)")
    add_student_args(p.add_argument_group("student"))
    add_loss_args(p.add_argument_group("loss"))
    g = p.add_argument_group("optim")
    g.add_argument("--max-steps", type=int, default=25_000, help="optimizer steps (authors: 25k)")
    g.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    g.add_argument("--warmup", type=float, default=0.07, help="warmup, fraction of --max-steps")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98), help="AdamW betas")
    g.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon")
    g.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay on weights, none on biases (the authors' parameter groups)")
    g.add_argument("--clip", type=float, default=5.0, help="gradient norm clip")
    g.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="student autocast precision; the teacher stays fp32 under fp16 (s3prl #378)")
    g = p.add_argument_group("io")
    runtime.add_io_args(g, "checkpoint.pt, student.pt, log.jsonl, args.json")
    g.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    args = p.parse_args(argv)
    if args.target_layers:
        args.target_layers = [int(x) for x in args.target_layers.split(",")]
    return args


def add_student_args(g):
    g.add_argument("--student", default="fithubert", choices=list(model.PRESETS), help="student preset")
    g.add_argument("--student-init", choices=model.INITS,
                   help="override the preset's start from the teacher: layers (CNN, projection, positional conv, "
                        "first layers: S&W's), cnn (the CNN alone: D&T's), none")
    g.add_argument("--layers", type=int, help="override the preset's transformer layers")
    g.add_argument("--dim", type=int, help="override the preset's width")
    g.add_argument("--ffn", type=int, help="override the preset's FFN inner width")
    g.add_argument("--heads", type=int, help="override the preset's attention heads")
    g.add_argument("--feature-layer-norm", action=argparse.BooleanOptionalAction, default=False,
                   help="a LayerNorm on the CNN features, as HuBERT has (the authors' students have none)")
    g.add_argument("--attention-dropout", type=float,
                   help="override the preset's dropout on attention weights (0.1, the authors' distiller); "
                        "PyTorch's fused CPU attention has no dropout, so 0 is much faster on a CPU")
    g.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=False,
                   help=fbank_frontend.SPECAUGMENT_HELP + "; stored in the student's config, so fine-tuning keeps "
                        "it unless finetune.py --no-specaugment")
    g.add_argument("--cache-frontend", action=argparse.BooleanOptionalAction, default=False,
                   help="CNN students only: keep the front-end (the CNN copied from the teacher) frozen, the "
                        "authors' feature_grad_mult 0, and compute its output once per training utterance, "
                        "kept in memory (~frames x CNN channels x 4 bytes, 1 h at 512 channels: ~370 MB; "
                        "caches.FrontendCache). Off: the CNN trains with the transformer")
    g.add_argument("--target-layers", type=str, default=None,
                   help="teacher layers to predict, e.g. 4,8,12 (default: 3 evenly spaced for S&W "
                        "presets, proportional layer-to-layer for D&T)")


def add_loss_args(g):
    g.add_argument("--l1-weight", type=float, default=1.0, help="weight of the L1 regression term")
    g.add_argument("--cos-weight", type=float, default=1.0, help="weight of the -log sigmoid(cos) term")
    g.add_argument("--disc-weight", type=float, default=0.0,
                   help="weight of the discriminative KL loss (0 = off; the paper tries 0.2-0.8)")
    g.add_argument("--tau", type=float, default=0.1,
                   help="temperature of the codeword distributions softmax(cos / tau), unitless; HuBERT's own "
                        "logit temperature (the authors read theirs from an unreleased config). At 1 a softmax "
                        "over cosines across hundreds of codewords is almost uniform and the KL targets say "
                        "almost nothing: each run prints the teacher's entropy on its first batch")
    g.add_argument("--disc-head", default="cos", choices=list(HEAD_TYPES),
                   help="student discriminative head: cosine to the teacher's frozen codewords (the authors' "
                        "type1 and default), linear logits (type2: with tau 0.1 its first logits are ten times "
                        "too large), or cross-entropy on the teacher's argmax unit (type3)")
    g.add_argument("--frontend-steps", type=int, default=0,
                   help="Fbank students only: first steps that train only the front-end (L1 to teacher "
                        "layer 0, the paper's stage 1); 0 = no stage 1")


# ----------------------------------------------------------------------------------------------
# The student's distillation heads


class DistillHeads(nn.Module):
    """Prediction heads that exist only for distillation (dropped before fine-tuning).

    pairs: [(student_layer, teacher_layer)] indexing hidden_states (0 = transformer input,
    k = output of layer k). DistilHuBERT: [(2, 4), (2, 8), (2, 12)]; FitHuBERT: [(i, i) for i
    in 1..12]. style (model.Preset.style) picks the regression heads, as s3prl's distiller
    `out_layer_type` does:
      "last":      DistilHuBERT's "expand-last": all pairs read one (the last) student layer;
                   Linear(D -> N*D), GELU, then one Linear(D -> teacher_dim) per target layer
                   (s3prl's SplitLinear: chunk k of the N*D vector predicts pairs[k]; same
                   U(+-1/sqrt(D)) init as nn.Linear);
      "layerwise": FitHuBERT's: one Linear(D -> teacher_dim) per pair, on its student layer
                   (the default, so a heads_config saved before `style` existed rebuilds as saved).

    disc_head, applied to the student's last hidden state:
      "cos":    Linear(D -> F), cosine to the teacher's FROZEN codewords [K, F] (a buffer) / tau:
                losses.cosine_logits, the function of HuBERT's own head (model.PredictionHead.logits);
      "hard":   the same cosine logits, trained with cross-entropy to the teacher's argmax unit
                (losses.hard_unit_loss): the authors' type3;
      "linear": Linear(D -> K) / tau (the authors' type2). Dividing by tau keeps one rule for
                all heads; for a free linear layer tau only rescales its effective learning rate;
      None:     regression only.
    codewords: the teacher's codeword embeddings [K, F] (needed for "cos" and "hard"; for
    "linear" only K is taken). To rebuild from `config()` without the teacher, pass
    num_codewords and codeword_dim instead and load the state_dict (it holds the codewords).
    """

    def __init__(self, student_dim, teacher_dim, pairs, disc_head=None, codewords=None, tau=1.0,
                 num_codewords=None, codeword_dim=None, style="layerwise"):
        super().__init__()
        if disc_head is not None and disc_head not in HEAD_TYPES:
            raise ValueError(f"unknown discriminative head {disc_head!r}; choose one of {HEAD_TYPES} or None")
        if style not in HEAD_STYLES:
            raise ValueError(f"unknown head style {style!r}; choose one of {HEAD_STYLES}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.student_dim, self.teacher_dim, self.style = student_dim, teacher_dim, style
        self.pairs = [(int(s), int(t)) for s, t in pairs]
        self.disc_head, self.tau = disc_head, float(tau)
        self.expand = None
        if style == "last" and self.pairs:
            if len({s for s, _ in self.pairs}) > 1:
                raise ValueError(f"style 'last' predicts every target from one student layer; got pairs {self.pairs}")
            self.expand = nn.Linear(student_dim, len(self.pairs) * student_dim)
        self.proj = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.pairs)
        if codewords is not None:
            num_codewords, codeword_dim = codewords.shape
        self.num_codewords, self.codeword_dim = num_codewords, codeword_dim
        self.disc = None
        if disc_head is not None and num_codewords is None:
            raise ValueError(f"disc_head {disc_head!r} needs the teacher's codewords (its head)")
        if disc_head in ("cos", "hard"):
            if codeword_dim is None:
                raise ValueError(f"disc_head {disc_head!r} needs codewords [K, F] or codeword_dim")
            self.disc = nn.Linear(student_dim, codeword_dim)
            cw = codewords.detach().clone().float() if codewords is not None \
                else torch.zeros(num_codewords, codeword_dim)
            self.register_buffer("codewords", cw)  # frozen: a buffer, saved, never trained
        elif disc_head == "linear":
            self.disc = nn.Linear(student_dim, num_codewords)

    def config(self):
        """Plain dict: DistillHeads(**config) + load_state_dict rebuilds this module."""
        return {"student_dim": self.student_dim, "teacher_dim": self.teacher_dim,
                "pairs": [list(p) for p in self.pairs], "disc_head": self.disc_head, "tau": self.tau,
                "num_codewords": self.num_codewords, "codeword_dim": self.codeword_dim, "style": self.style}

    @property
    def teacher_layers(self):
        """Teacher hidden_states indices that the regression targets, in pred-stack order."""
        return [t for _, t in self.pairs]

    def regress(self, student_hidden):
        """student_hidden: list of [B, T, D] -> pred [N, B, T, teacher_dim]."""
        if self.expand is not None:  # "last": expand, GELU, split into N chunks of D
            x = nn.functional.gelu(self.expand(student_hidden[self.pairs[0][0]]))  # (B, T, N*D)
            x = x.unflatten(-1, (len(self.pairs), self.student_dim))  # (B, T, N, D)
            return torch.stack([proj(x[..., k, :]) for k, proj in enumerate(self.proj)])
        return torch.stack([proj(student_hidden[s]) for proj, (s, _) in zip(self.proj, self.pairs)])

    def disc_logits(self, h):
        """Student codeword logits from its last hidden state: [B, T, D] -> [B, T, K]."""
        if self.disc_head == "linear":
            return self.disc(h) / self.tau
        return losses.cosine_logits(self.disc(h), self.codewords, self.tau)  # "cos" and "hard"

    def forward(self, student_hidden):
        """student_hidden: list of [B, T, D] -> (pred [N, B, T, teacher_dim] or None, disc_logits [B, T, K] or None)."""
        pred = self.regress(student_hidden) if self.pairs else None
        logits = self.disc_logits(student_hidden[-1]) if self.disc is not None else None
        return pred, logits


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
            x, frame_lengths = self.student.transformer_input(waves, lengths)
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
    (caches.TeacherCache), else the teacher runs; features: the student's front-end output if
    already known (caches.FrontendCache). Returns (L, dict of float parts)."""
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
    loss, parts = losses.distillation_loss(pred, target, mask, s_logits, t_logits, args.l1_weight, args.cos_weight,
                                           args.disc_weight, args.disc_head, frontend_only)
    if teacher.head is not None and not frontend_only and layers[-1] == len(t_hidden) - 1:
        parts.update(unit_agreement(teacher.head, trim(t_hidden[-1].float(), T), pred[-1].detach(), s_logits, mask))
    return loss, parts


@torch.no_grad()
def unit_agreement(head, t_last, pred_last, s_logits, mask):
    """Shares of real frames where the teacher's unit is picked by the teacher's head on the student's
    regression of its last layer ("unit_reg") and by the student's disc head ("unit_disc"), against
    always guessing the batch's commonest unit ("unit_top")."""
    real = ~mask
    unit = head.logits(t_last).argmax(-1)[real]
    parts = {"unit_reg": (head.logits(pred_last).argmax(-1)[real] == unit).float().mean().item(),
             "unit_top": unit.bincount().max().item() / max(1, len(unit))}
    if s_logits is not None:
        parts["unit_disc"] = (s_logits.argmax(-1)[real] == unit).float().mean().item()
    return parts


def distiller_module(m):
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def make_distiller(args, preset, student, teacher):
    """The student with its regression heads (and discriminative head, and the Fbank stage-1
    projection), as one module. Returns (distiller, pairs)."""
    tcfg = teacher.config
    style = model.PRESETS[preset].style
    pairs = model.distill_pairs(style, student.config.layers, tcfg.layers, args.target_layers)
    codewords = teacher.head.codewords.detach() if teacher.head is not None else None
    heads = DistillHeads(student.config.dim, tcfg.dim, pairs, args.disc_head if args.disc_weight > 0 else None,
                         codewords, args.tau, style=style)
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
    teacher_cache: caches.TeacherCache = None    # --teacher-cache
    frontend_cache: caches.FrontendCache = None  # --cache-frontend

    def network(self):
        return self.distiller

    def checkpoint(self, full):
        """The student with its heads (student.pt, for finetune.py --init); full: also the Distiller."""
        d, args = distiller_module(self.distiller), self.args
        ckpt = checkpoints.encoder_checkpoint(d.student, "student", preset=args.student, heads=d.heads.state_dict(),
                                              heads_config=d.heads.config(), step=self.step, args=vars(args))
        return {**ckpt, "distiller": d.state_dict()} if full else ckpt


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
            stop_if_asked(stopper, run)
            frontend_only = run.step < args.frontend_steps
            lr = lr_at(run.step, args.max_steps, args.lr, args.warmup)
            set_lr(optimizer, lr)
            for micro in range(args.grad_accum):
                batch = read_batch(run)
                waves, lengths, ids = batch["waves"].to(device), batch["lengths"].to(device), batch["ids"]
                states = run.teacher_cache(ids, device) if run.teacher_cache else None
                features = run.frontend_cache(ids, waves, lengths) if run.frontend_cache else None
                if not entropy_shown:  # an extra teacher forward, once; it draws no random numbers
                    print_codeword_entropy(teacher, waves, lengths, args.tau)
                    entropy_shown = True
                with no_sync_unless(distiller, last=micro == args.grad_accum - 1):
                    loss, parts = distill_loss(args, teacher, distiller, waves, lengths, frontend_only, states,
                                               features)
                    stop_unless_finite(run, loss, parts, "A teacher with broken weights fails at step 1; otherwise "
                                                         "try a lower --lr or --precision fp32")
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
    if reached_max_steps(run):
        path = os.path.join(args.out_dir, "student.pt")
        save(run, path, full=False)
        if rank == 0:
            print(f"done: {path} (student for finetune.py --init)", flush=True)
    runtime.leave_process_group(world)


# ----------------------------------------------------------------------------------------------
# Building (or resuming) a run


def build_run(args, device, rank, world):
    """Data, teacher, student with its heads (new, or from OUT/checkpoint.pt with --resume),
    optimizer and scaler, in that order (the order the random numbers are drawn in)."""
    ckpt_path, resume = runtime.find_resume(args, rank, world)
    utterances = data.drop_short(data.load_corpus(args.data), quiet=rank != 0)
    loader, sampler = data.make_loader(utterances, args.batch_seconds, shuffle=True, seed=args.seed,
                                       rank=rank, world_size=world, num_workers=args.num_workers)
    teacher = model.load_teacher(args.teacher).to(device)
    if args.disc_weight > 0 and teacher.head is None:
        raise ValueError(f"--disc-weight needs the teacher's prediction head (final_proj + codewords); "
                         f"{args.teacher} has none (Hugging Face and fine-tuned checkpoints drop it)")
    teacher_cache = caches.TeacherCache(args.teacher_cache, teacher, utterances, device, rank != 0) \
        if args.teacher_cache else None
    distiller, pairs = build_distiller(args, teacher, resume, ckpt_path, utterances, device, rank)
    frontend_cache = None
    if args.cache_frontend:  # a frozen CNN: no gradient, so the optimizer and DDP leave it alone
        distiller.student.feature_extractor.requires_grad_(False)
        frontend_cache = caches.FrontendCache(distiller.student)
    if rank == 0:
        tcfg, scfg = teacher.config, distiller.student.config
        n_student = model.count_parameters(distiller.student) / 1e6
        n_heads = model.count_parameters(distiller) / 1e6 - n_student
        print(f"teacher {args.teacher}: {tcfg.layers}x{tcfg.dim}, {model.count_parameters(teacher) / 1e6:.2f}M | "
              f"student {args.student}: {scfg.layers}x{scfg.dim}, {n_student:.2f}M "
              f"(+{n_heads:.2f}M heads) | pairs (student, teacher) {pairs} | {len(utterances)} utterances, "
              f"{len(sampler)} batches/epoch/rank | device {device} x{world}", flush=True)
    distiller = runtime.wrap_ddp(distiller, device, world, find_unused=args.frontend_steps > 0
                                 or distiller.student.config.layerdrop > 0)
    run = Run(args=args, device=device, rank=rank, world=world, ckpt_path=ckpt_path,
              optimizer=runtime.adamw(distiller.named_parameters(), args),
              scaler=torch.amp.GradScaler(device.type, enabled=args.precision == "fp16"),
              teacher=teacher, distiller=distiller, teacher_cache=teacher_cache, frontend_cache=frontend_cache)
    runtime.start(run, resume, loader, sampler)
    if resume and rank == 0:
        print(f"resumed from {ckpt_path} at step {run.step}", flush=True)
    return run


def build_distiller(args, teacher, resume, ckpt_path, utterances, device, rank):
    """The student (new from --student, or the checkpoint's) with its heads, on device; a new
    Fbank student gets its CMVN from the training audio. Returns (distiller, pairs)."""
    if resume:
        student = model.encoder_from_checkpoint(resume, ckpt_path)
    else:
        student = model.build_student(args.student, teacher, init=args.student_init, layers=args.layers,
                                      dim=args.dim, ffn=args.ffn, heads=args.heads,
                                      attention_dropout=args.attention_dropout, specaugment=args.specaugment,
                                      feature_layer_norm=args.feature_layer_norm)
    distiller, pairs = make_distiller(args, args.student, student, teacher)
    distiller.to(device)
    if student.config.frontend == "fbank" and resume is None:
        set_cmvn(student, utterances, rank)
    if resume:
        distiller.load_state_dict(resume["distiller"])
    return distiller, pairs


def set_cmvn(student, utterances, rank, max_utts=200):
    """Global CMVN of the Fbank front-end from (a sample of) the training audio, stored in the model."""
    sample = utterances[:: max(1, len(utterances) // max_utts)][:max_utts]
    mean, std = fbank_frontend.compute_cmvn(data.load_audio(u.path) for u in sample)
    student.feature_extractor.set_cmvn(mean, std)
    if rank == 0:
        print(f"fbank CMVN from {len(sample)} utterances", flush=True)


if __name__ == "__main__":
    runtime.run_main(main, parse_args)
