"""CTC fine-tuning, evaluation (WER), transcription and export to transformers.

A distilled student (or any teacher) gets a linear CTC head over the character vocabulary of
data.py (fairseq's letter set, `|` between words) and is fine-tuned on transcribed audio with
fairseq's HuBERT recipe (examples/hubert/config/finetune/base_10h.yaml), scaled by flags: the
CNN / Fbank front-end frozen (unless --train-frontend), the encoder frozen for the first
--freeze-steps updates, tri-stage learning rate (base_10h's 8000 / 0 / 72000 steps, or shares of
--max-steps with --stages for short runs), time and channel masking of the transformer input,
layerdrop. Dev WER (jiwer) is measured every --eval-every steps and the best checkpoint kept.
Decoding is greedy, or a beam search with a KenLM language model through torchaudio's CTC
decoder. Like distill.py it runs under torchrun (DDP; each rank decodes a share of the dev set),
stops cleanly on Ctrl-C and resumes exactly with --resume.

    python finetune.py --init runs/tiny/student.pt --train corpus/train --valid corpus/dev \\
        --out-dir runs/tiny-ctc --max-steps 200 --freeze-steps 50 --lr 5e-4 --stages 0.1,0.4,0.5
    python finetune.py --eval runs/tiny-ctc/best.pt --data corpus/test      # prints WER x.xx
    python finetune.py --transcribe runs/tiny-ctc/best.pt a.flac b.wav     # FILE<TAB>TRANSCRIPT
    python finetune.py --export-hf runs/tiny-ctc/best.pt hf-tiny           # transformers folder
    python finetune.py --export-encoder runs/tiny/student.pt enc-tiny      # the distilled encoder alone
"""
import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace

import torch

import caches
import checkpoints
import data
import fbank_frontend
import model
import runtime
from runtime import (GracefulStop, Logger, RunState, add_parts, autocast, last_step, mean_parts, no_sync_unless,
                     read_batch, reached_max_steps, save, set_lr, setup, start_run, stop_if_asked,
                     stop_unless_finite)
from scoring import evaluate, make_decoder

# ----------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = runtime.make_parser(__doc__)
    g = p.add_argument_group("mode (default: fine-tune)")
    g.add_argument("--eval", metavar="CKPT", help="print the WER of a fine-tuned checkpoint on each --data set")
    g.add_argument("--transcribe", nargs="+", metavar=("CKPT", "FILE"),
                   help="print FILE<TAB>TRANSCRIPT for each audio file (any sample rate, any channels)")
    g.add_argument("--export-hf", nargs=2, metavar=("CKPT", "DIR"),
                   help="write a transformers HubertForCTC folder (CNN front-end models only)")
    g.add_argument("--export-encoder", nargs=2, metavar=("CKPT", "DIR"),
                   help="write the encoder of a distilled student (student.pt) or a CTC model, without heads: "
                        "a transformers HubertModel folder (CNN front-end) or safetensors + config.json that "
                        "model.load_teacher reads (Fbank)")
    g = p.add_argument_group("data")
    g.add_argument("--train", nargs="+", help="transcribed LibriSpeech-layout folders / fairseq manifests, or "
                   "Libri-light's sets: librispeech_finetuning/10h, /1h or /10min")
    g.add_argument("--valid", nargs="+", help="held-out sets for periodic WER (best checkpoint kept)")
    g.add_argument("--data", nargs="+", help="sets to evaluate with --eval")
    g.add_argument("--max-train-hours", type=float,
                   help="train on a fixed random subset of this many hours, speakers not balanced (Libri-light's own "
                        "sets: --train librispeech_finetuning/10h); see train_subset()")
    g.add_argument("--subset-seed", type=int, default=0, help="which subset --max-train-hours picks")
    g.add_argument("--batch-seconds", type=float, default=32.0,
                   help="padded audio per batch, seconds (fairseq: max_tokens 3.2M samples = 200 s)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--cache-frontend", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the frozen CNN's output of each training and --valid utterance in memory after its "
                        "first use (small sets seen for many epochs, dev WER every --eval-every steps; ~frames x CNN "
                        "channels x 4 bytes, 1 h at 512 channels: ~370 MB); see caches.FrontendCache")
    add_model_args(p.add_argument_group("model (fairseq base_10h values)"))
    add_optim_args(p.add_argument_group("optim (fairseq base_10h values)"))
    g = p.add_argument_group("decoding (greedy unless --lm or --lexicon; beam search needs flashlight-text)")
    g.add_argument("--lm", help="KenLM language model (.bin or .arpa) for beam search")
    g.add_argument("--lexicon", help="lexicon file: WORD then its letters, each word ending in |")
    g.add_argument("--beam", type=int, default=50, help="beam size, hypotheses")
    g.add_argument("--lm-weight", type=float, default=2.0, help="language model weight (fairseq ls_4gram.yaml)")
    g.add_argument("--word-score", type=float, default=-1.0, help="word insertion score (fairseq ls_4gram.yaml)")
    g = p.add_argument_group("io")
    runtime.add_io_args(g, "checkpoint.pt, best.pt, last.pt, log.jsonl, args.json", required=False)
    g.add_argument("--eval-every", type=int, default=1000, help="steps between dev WER evaluations and checkpoints")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def add_model_args(g):
    g.add_argument("--init", help="student.pt from distill.py, or any teacher source (fine-tune HuBERT itself)")
    g.add_argument("--keep-layers", type=int,
                   help="fine-tune only the first N transformer layers of --init (a truncated teacher: how much "
                        "of the task needs depth)")
    g.add_argument("--final-dropout", type=float, default=0.0, help="dropout before the CTC head")
    g.add_argument("--dropout", type=float, default=0.0, help="encoder dropout (projection, attention and FFN outputs)")
    g.add_argument("--attention-dropout", type=float, default=0.0, help="dropout on attention weights")
    g.add_argument("--activation-dropout", type=float, default=0.1, help="dropout inside the FFN")
    g.add_argument("--layerdrop", type=float, default=0.1, help="probability of skipping a transformer layer")
    g.add_argument("--mask-prob", type=float, default=0.75,
                   help="share of frames starting a masked span (HuBERT 10 h: 0.75; wav2vec 2.0 100 h: 0.65)")
    g.add_argument("--mask-length", type=int, default=10, help="masked span, frames of 20 ms")
    g.add_argument("--mask-channel-prob", type=float, default=0.5, help="share of channels starting a zeroed span")
    g.add_argument("--mask-channel-length", type=int, default=64, help="zeroed channel span, channels")
    g.add_argument("--train-frontend", action=argparse.BooleanOptionalAction, default=False,
                   help="train the CNN / Fbank front-end with the encoder (fairseq's feature_grad_mult 1 "
                        "instead of base_10h's 0); e.g. for a distilled Fbank front-end far from converged")
    g.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=None,
                   help=fbank_frontend.SPECAUGMENT_HELP + ", on top of the masking above; unset: as the --init "
                        "student was distilled (its config says)")


def add_optim_args(g):
    g.add_argument("--max-steps", type=int, default=25_000, help="optimizer steps (base_10h: max_update)")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=8000,
                   help="tri-stage LR: steps of linear warm-up from 0.01 x --lr to --lr")
    g.add_argument("--hold-steps", type=int, default=0, help="tri-stage LR: steps held at --lr after the warm-up")
    g.add_argument("--decay-steps", type=int, default=72_000,
                   help="tri-stage LR: steps of exponential decay to 0.05 x --lr, constant after (base_10h's "
                        "stages outlast its 25k steps: its LR ends at 0.49 x --lr)")
    g.add_argument("--stages", metavar="W,H,D",
                   help="instead of the three step counts: warm-up,hold,decay shares of --max-steps adding up "
                        "to 1 (fairseq's phase_ratio), e.g. 0.1,0.4,0.5 for short runs")
    g.add_argument("--freeze-steps", type=int, default=10_000,
                   help="first steps in which only the CTC head trains (the front-end never trains)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98), help="Adam betas")
    g.add_argument("--eps", type=float, default=1e-8, help="Adam epsilon")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--clip", type=float, default=0.0, help="gradient norm clip (0 = off, as fairseq)")
    g.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision")


def check_args(p, args):
    if not (args.eval or args.transcribe or args.export_hf or args.export_encoder):
        missing = [f for f in ("init", "train", "out_dir") if not getattr(args, f)]
        if missing:
            p.error("fine-tuning needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
    if args.eval and not args.data:
        p.error("--eval needs --data")
    if args.cache_frontend and args.train_frontend:
        p.error("--cache-frontend keeps a frozen front-end's output; --train-frontend trains it: choose one")
    if args.transcribe and len(args.transcribe) < 2:
        p.error("--transcribe needs a checkpoint and at least one audio file")
    if args.stages is not None:
        try:
            shares = [float(x) for x in args.stages.split(",")]
        except ValueError:
            shares = []
        if len(shares) != 3 or abs(sum(shares) - 1) > 1e-6 or min(shares) < 0:
            p.error("--stages takes three non-negative shares that add up to 1, e.g. 0.1,0.4,0.5")
        # as fairseq's phase_ratio: the step counts replace --warmup/--hold/--decay-steps (args.json shows them)
        args.warmup_steps, args.hold_steps, args.decay_steps = (int(s * args.max_steps) for s in shares)
    if min(args.warmup_steps, args.hold_steps, args.decay_steps) < 0:
        p.error("--warmup-steps, --hold-steps and --decay-steps must not be negative")


# ----------------------------------------------------------------------------------------------
# Learning rate and training subsets


def tri_stage_lr(step, peak, warmup, hold, decay, init_scale=0.01, final_scale=0.05):
    """fairseq's tri_stage schedule (TriStageLRSchedule): linear warm-up over `warmup` steps from
    init_scale * peak to peak, `hold` steps at peak, then exponential decay over `decay` steps to
    final_scale * peak, constant after. The stages are step counts; finetune.py's defaults are
    fairseq's examples/hubert/config/finetune/base_10h.yaml (8000 / 0 / 72000 steps, final_lr_scale
    0.05; init_lr_scale 0.01 is tri_stage's default), and --stages turns shares of --max-steps
    into step counts as fairseq's phase_ratio does.

    >>> [round(tri_stage_lr(s, 1.0, 10, 40, 50), 4) for s in (0, 10, 50, 75, 100)]
    [0.01, 1.0, 1.0, 0.2236, 0.05]
    """
    if step < warmup:
        return peak * (init_scale + (1 - init_scale) * step / warmup)
    if step < warmup + hold:
        return peak
    if step < warmup + hold + decay:
        return peak * final_scale ** ((step - warmup - hold) / decay)
    return peak * final_scale


def train_subset(utterances, hours, seed=0):
    """A fixed low-resource subset of at most `hours` hours (like Libri-light's 10 h / 1 h).

    Utterances are ranked by sha1(f"{seed}/{id}"), a pseudo-random order that depends only on
    the ids (not on file order, machine or Python version), and taken in that order until the
    next one would pass the budget. So re-runs pick the same subset, a smaller subset is part of
    every larger one (1 h inside 10 h), and adding audio to the corpus keeps the order of the old.
    Unlike Libri-light's sets (data.LIBRILIGHT_SPLITS), speakers are not balanced.
    """
    rank = sorted(utterances, key=lambda u: hashlib.sha1(f"{seed}/{u.id}".encode()).hexdigest())
    budget, total, chosen = hours * 3600 * data.SAMPLE_RATE, 0, []
    for u in rank:
        if total + u.num_samples > budget:
            break
        chosen.append(u)
        total += u.num_samples
    if not chosen:
        raise ValueError(f"--max-train-hours {hours}: less than the first utterance picked "
                         f"({rank[0].num_samples / data.SAMPLE_RATE:.1f} s)")
    return sorted(chosen, key=lambda u: u.id)


# ----------------------------------------------------------------------------------------------
# Building, saving and loading CTC models


def encoder_for_init(src):
    """The encoder to fine-tune from any load_teacher source: a distilled student, a teacher or CTC
    checkpoint of this project, a fairseq .pt, a Hugging Face folder, torchaudio:HUBERT_BASE."""
    return model.load_teacher(src).encoder


def with_regularisation(encoder, args):
    """The same weights in an encoder rebuilt with the fine-tuning dropouts and layerdrop
    (fairseq's hubert_ctc overrides the pre-training values the same way), --specaugment when
    given (an Fbank front-end only), and only the first --keep-layers transformer layers."""
    specaugment = encoder.config.specaugment if args.specaugment is None else args.specaugment
    if specaugment and encoder.config.frontend != "fbank":
        raise ValueError(f"--specaugment needs an Fbank student (distilled from a *-fbank preset); "
                         f"{args.init} has HuBERT's waveform CNN")
    layers = args.keep_layers or encoder.config.layers
    if not 1 <= layers <= encoder.config.layers:
        raise ValueError(f"--keep-layers {layers}: {args.init} has {encoder.config.layers} transformer layers")
    config = replace(encoder.config, dropout=args.dropout, attention_dropout=args.attention_dropout,
                     activation_dropout=args.activation_dropout, layerdrop=args.layerdrop,
                     specaugment=specaugment, layers=layers)
    dropped = tuple(f"encoder.transformer.layers.{i}." for i in range(layers, encoder.config.layers))
    rebuilt = model.Encoder(config)
    rebuilt.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith(dropped)})
    return rebuilt


def set_trainable(ctc, train_encoder, train_frontend=False):
    """fairseq's recipe: the front-end never trains (feature_grad_mult 0) unless train_frontend
    (--train-frontend), and then with the encoder; the encoder and the mask embedding only from
    --freeze-steps on (freeze_finetune_updates); the CTC head always."""
    ctc.requires_grad_(True)
    ctc.encoder.requires_grad_(train_encoder)
    ctc.mask_embedding.requires_grad_(train_encoder)
    ctc.encoder.feature_extractor.requires_grad_(train_encoder and train_frontend)


def ctc_checkpoint(ctc, **extra):
    head = {k: v for k, v in ctc.state_dict().items() if not k.startswith("encoder.")}  # proj, mask_embedding
    return checkpoints.encoder_checkpoint(ctc.encoder, "ctc", ctc_config=asdict(ctc.config), ctc_head=head, **extra)


def ctc_from_checkpoint(ckpt, path):
    if ckpt.get("kind") != "ctc":
        raise ValueError(f"{path}: not a fine-tuned CTC checkpoint (kind {ckpt.get('kind')!r}); "
                         f"fine-tune it first with finetune.py --init {path} ...")
    ctc = model.CTCModel(model.encoder_from_checkpoint(ckpt, path), model.CTCConfig(**ckpt["ctc_config"]))
    ctc.load_state_dict({**{"encoder." + k: v for k, v in ckpt["encoder"].items()}, **ckpt["ctc_head"]})
    return ctc


def load_ctc(path):
    return ctc_from_checkpoint(checkpoints.load_checkpoint(path), path).eval()


# ----------------------------------------------------------------------------------------------
# Modes


def run_eval(args):
    device, rank, world = setup(args)
    ctc = load_ctc(args.eval).to(device)
    decode, decoding = make_decoder(args)
    for path in args.data:
        utterances = data.drop_short(data.load_corpus([path]), quiet=rank != 0)
        wer, rows = evaluate(ctc, utterances, device, args.batch_seconds, decode, desc=path, rank=rank, world=world)
        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        out = f"{os.path.splitext(args.eval)[0]}.{name}.hyp.txt"
        if rank == 0:
            with open(out, "w") as f:
                f.writelines(f"{i}\t{h}\n" for i, _, h in rows)
            print(f"{path}: WER {wer:.2f} ({len(rows)} utterances, {decoding}; hypotheses in {out})", flush=True)


def run_transcribe(args):
    device, _, _ = setup(args)
    ctc = load_ctc(args.transcribe[0]).to(device)
    decode, decoding = make_decoder(args)
    print(f"# {decoding}", file=sys.stderr, flush=True)  # stdout stays FILE<TAB>TRANSCRIPT lines
    for path in args.transcribe[1:]:
        wave = data.load_audio(path)
        if len(wave) < data.MIN_SAMPLES:
            print(f"warning: {path}: {len(wave)} samples, shorter than one 25 ms frame", file=sys.stderr, flush=True)
            wave = torch.nn.functional.pad(wave, (0, data.MIN_SAMPLES - len(wave)))  # silence: one frame
        with torch.no_grad():
            log_probs, frame_lengths = ctc(wave[None].to(device), torch.tensor([len(wave)], device=device))
        print(f"{path}\t{decode(log_probs, frame_lengths)[0]}", flush=True)


def run_export(args):
    ckpt_path, out_dir = args.export_hf
    try:
        checkpoints.export_huggingface(load_ctc(ckpt_path), out_dir)
    except ValueError as e:
        sys.exit(f"error: {ckpt_path}: {e}")
    print(f"wrote {out_dir}: transformers.pipeline('automatic-speech-recognition', model='{out_dir}')")


def run_export_encoder(args):
    ckpt_path, out_dir = args.export_encoder
    checkpoints.export_encoder(model.load_teacher(ckpt_path).encoder, out_dir)
    print(f"wrote {out_dir}: model.load_teacher('{out_dir}') reads it (CNN encoders: transformers.HubertModel too)")


def load_train_set(args, rank):
    utterances = data.drop_short(data.load_corpus(args.train), quiet=rank != 0)
    for u in utterances:  # a bad transcript fails now, not in the middle of training
        if not u.text:
            raise ValueError(f"{u.path}: no transcript; CTC fine-tuning needs transcribed audio")
        try:
            data.encode(u.text)
        except ValueError as e:
            raise ValueError(f"{u.text_source or u.path} (audio {u.path}): {e}") from None
    if args.max_train_hours:
        utterances = train_subset(utterances, args.max_train_hours, args.subset_seed)
        if rank == 0:
            with open(os.path.join(args.out_dir, "train_subset.txt"), "w") as f:
                f.writelines(u.id + "\n" for u in utterances)
    if rank == 0:
        hours = sum(u.num_samples for u in utterances) / data.SAMPLE_RATE / 3600
        print(f"train: {len(utterances)} utterances, {hours:.2f} h of labelled audio", flush=True)
    return utterances


@dataclass(kw_only=True)
class Run(RunState):
    """A fine-tuning run: build_run makes it, train steps it."""
    ctc: model.CTCModel
    net: torch.nn.Module                 # ctc, inside DistributedDataParallel when world > 1
    trainable: list                      # parameters the optimizer updates: all but a frozen front-end
    valid_utts: list                     # --valid utterances (may be empty)
    train_cache: caches.FrontendCache = None  # --cache-frontend: the CNN's output per train utterance
    dev_cache: caches.FrontendCache = None    # and per --valid utterance (ids may repeat across corpora)
    best: float = math.inf               # best dev WER so far, %

    def network(self):
        return self.ctc

    def checkpoint(self, full):
        """The CTC model (best.pt, last.pt: for --eval, --transcribe, --export-hf) and the best dev WER."""
        return ctc_checkpoint(self.ctc, step=self.step, best_wer=self.best, args=vars(self.args))


def train(args):
    device, rank, world = setup(args)
    start_run(args, rank)
    run = build_run(args, device, rank, world)
    ctc, net, optimizer, scaler = run.ctc, run.net, run.optimizer, run.scaler
    logger = Logger(args.out_dir, args.max_steps, rank)
    cache = run.train_cache
    last_log, interval = run.step, {}  # the logged loss: the mean over the steps since the last line (add_parts)
    stop_at = last_step(run)
    with GracefulStop() as stopper:
        while run.step < stop_at:
            stop_if_asked(stopper, run)
            ctc.train()
            frozen = run.step < args.freeze_steps
            set_trainable(ctc, train_encoder=not frozen, train_frontend=args.train_frontend)
            lr = tri_stage_lr(run.step, args.lr, args.warmup_steps, args.hold_steps, args.decay_steps)
            set_lr(optimizer, lr)
            loss_sum = 0.0
            for micro in range(args.grad_accum):
                batch = read_batch(run)
                waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
                targets, target_lengths = batch["targets"].to(device), batch["target_lengths"].to(device)
                with no_sync_unless(net, last=micro == args.grad_accum - 1):
                    features = cache(batch["ids"], waves, lengths) if cache else None
                    with autocast(device, args.precision):
                        log_probs, frame_lengths = net(waves, lengths, features)
                    # fairseq's ctc criterion with sentence_avg: summed over frames, averaged over utterances
                    loss = torch.nn.functional.ctc_loss(
                        log_probs.float().transpose(0, 1), targets.clamp(min=0), frame_lengths, target_lengths,
                        blank=data.BLANK, reduction="sum", zero_infinity=True) / len(waves)
                    stop_unless_finite(run, loss, {"ctc": loss.item()})
                    scaler.scale(loss / args.grad_accum).backward()
                loss_sum += loss.item() / args.grad_accum
                logger.add_audio(lengths.sum().item() / data.SAMPLE_RATE * world)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable, args.clip or math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.step += 1
            add_parts(interval, {"ctc": loss_sum})
            if run.step % args.log_every == 0 or run.step == args.max_steps:
                logger.log(run.step, run.step - last_log, **mean_parts(interval), grad_norm=float(grad_norm),
                           frozen=float(frozen), lr=lr)
                last_log, interval = run.step, {}
            if run.valid_utts and (run.step % args.eval_every == 0 or run.step == args.max_steps):
                validate(run)
            if run.step % args.eval_every == 0 or run.step == stop_at:
                save(run, run.ckpt_path)
    if reached_max_steps(run):
        save(run, os.path.join(args.out_dir, "last.pt"), full=False)
        if not run.valid_utts:
            save(run, os.path.join(args.out_dir, "best.pt"), full=False)
        if rank == 0:
            result = f"best dev WER {run.best:.2f}" if run.valid_utts else "no --valid set: best.pt = last.pt"
            print(f"done: {result}; {os.path.join(args.out_dir, 'best.pt')}", flush=True)
    runtime.leave_process_group(world)


# ----------------------------------------------------------------------------------------------
# Building (or resuming) a run, validating, saving and stopping it


def build_run(args, device, rank, world):
    """Data, the CTC model (new from --init, or from OUT/checkpoint.pt with --resume), DDP,
    optimizer and scaler, in that order (the order the random numbers are drawn in)."""
    ckpt_path, resume = runtime.find_resume(args, rank, world)
    train_utts = load_train_set(args, rank)
    valid_utts = data.drop_short(data.load_corpus(args.valid), quiet=rank != 0) if args.valid else []
    loader, sampler = data.make_loader(train_utts, args.batch_seconds, shuffle=True, seed=args.seed,
                                       rank=rank, world_size=world, num_workers=args.num_workers)
    if resume:
        ctc = ctc_from_checkpoint(resume, ckpt_path)
    else:
        encoder = with_regularisation(encoder_for_init(args.init), args)
        ctc = model.CTCModel(encoder, model.CTCConfig(
            vocab_size=len(data.VOCAB), final_dropout=args.final_dropout, mask_prob=args.mask_prob,
            mask_length=args.mask_length, mask_channel_prob=args.mask_channel_prob,
            mask_channel_length=args.mask_channel_length))
    ctc.to(device)
    set_trainable(ctc, train_encoder=True, train_frontend=args.train_frontend)  # DDP registers these now
    trainable = [p for p in ctc.parameters() if p.requires_grad]  # all but a frozen front-end
    # Some parameters get no gradient in a step (frozen encoder, layerdrop, mask embedding with
    # masking off): DDP must look for them, or it waits for their gradients forever.
    net = runtime.wrap_ddp(ctc, device, world, find_unused=True)
    run = Run(args=args, device=device, rank=rank, world=world, ckpt_path=ckpt_path,
              optimizer=runtime.adamw(ctc.named_parameters(), args),
              scaler=torch.amp.GradScaler(device.type, enabled=args.precision == "fp16"),
              ctc=ctc, net=net, trainable=trainable, valid_utts=valid_utts)
    if args.cache_frontend:
        run.train_cache, run.dev_cache = caches.FrontendCache(ctc.encoder), caches.FrontendCache(ctc.encoder)
    runtime.start(run, resume, loader, sampler)
    if resume:
        run.best = resume["best_wer"]
    if rank == 0:
        print_plan(run, train_utts, resumed=resume is not None)
    return run


def print_plan(run, train_utts, resumed):
    """What will train on what; notes on flags that make a short run do less than asked."""
    args, trainable = run.args, run.trainable
    hours = sum(u.num_samples for u in train_utts) / data.SAMPLE_RATE / 3600
    print(f"fine-tuning {model.count_parameters(run.ctc) / 1e6:.2f}M parameters "
          f"({sum(p.numel() for p in trainable) / 1e6:.2f}M trainable, encoder frozen for "
          f"{args.freeze_steps} steps) on {len(train_utts)} utterances, {hours:.3g} h, device {run.device} x{run.world}"
          + (f"; resumed at step {run.step}" if resumed else ""), flush=True)
    if args.freeze_steps >= args.max_steps:
        print(f"note: --freeze-steps {args.freeze_steps} >= --max-steps {args.max_steps}: only the CTC "
              f"head will train", flush=True)
    if args.warmup_steps >= args.max_steps:
        top = tri_stage_lr(args.max_steps - 1, args.lr, args.warmup_steps, 0, 0)
        print(f"note: --warmup-steps {args.warmup_steps} >= --max-steps {args.max_steps}: the learning rate "
              f"never reaches --lr (at most {top:.3g}); for short runs give --stages, e.g. 0.1,0.4,0.5",
              flush=True)


def validate(run):
    """Dev WER (every rank decodes a share), logged; a new best is saved as best.pt."""
    args = run.args
    try:
        wer, _ = evaluate(run.ctc, run.valid_utts, run.device, args.batch_seconds, rank=run.rank, world=run.world,
                          frontend_cache=run.dev_cache)
    except data.AudioError as e:  # raised on every rank alike
        runtime.stop_on_bad_audio(run, str(e) if run.rank == 0 else None)
    if run.rank == 0:
        print(f"step {run.step}: dev WER {wer:.2f}", flush=True)
        with open(os.path.join(args.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps({"step": run.step, "dev_wer": wer}) + "\n")
    if wer < run.best:
        run.best = wer
        save(run, os.path.join(args.out_dir, "best.pt"), full=False)


def main(args):
    if args.eval:
        run_eval(args)
    elif args.transcribe:
        run_transcribe(args)
    elif args.export_hf:
        run_export(args)
    elif args.export_encoder:
        run_export_encoder(args)
    else:
        train(args)


if __name__ == "__main__":
    runtime.run_main(main, parse_args)
