"""Toy HuBERT pre-training: a real self-supervised teacher, prediction head included, on a CPU.

HuBERT (Hsu et al., arXiv 2106.07447; fairseq examples/hubert) in miniature, so that the offline
demo distils from a teacher that was trained the way HuBERT is:

  targets, iteration 1: MFCC (13 + deltas + delta-deltas, 25 ms / 10 ms) -> k-means (100 units)
      -> one unit per 10 ms frame, of which every other one is kept: HuBERT's 50 Hz label rate,
      one label per 20 ms CNN frame (fairseq's feat2tar_ratio with label_rate 100).
  masked prediction: spans of CNN frames are replaced by a learned mask embedding (mask_prob 0.8,
      span 10 frames, HuBERT Base) and the transformer predicts the unit of every masked frame:
      cross-entropy over cos(final_proj(h), codeword_k) / 0.1, plus 10 x the CNN feature penalty.
      Unlike HuBERT Base, the toy also predicts the unmasked frames (--unmasked-weight 1): without
      them a few hundred steps do not get it off the unit prior (see the flag's comment).
  targets, iteration 2 (--iterations 2): k-means on a middle layer of the iteration-1 model
      (HuBERT: layer 6 of 12), then a fresh model trains on them, as HuBERT does; --iteration1 T
      takes an already trained teacher T as the iteration-1 model.

The network is torchaudio's hubert_pretrain_model. The result, OUT/teacher.pt, is a checkpoint of
this project (checkpoints.encoder_checkpoint) whose head (final_proj + codewords) the discriminative
distillation loss uses: `model.load_teacher("OUT/teacher.pt").head`.

    python pretrain.py --data corpus/train --out-dir runs/teacher --max-steps 500
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torchaudio.models import hubert_pretrain_model
from torchaudio.models.wav2vec2 import components
from tqdm import tqdm

import checkpoints
import data
import model
import runtime
from runtime import (GracefulStop, Logger, RunState, add_parts, last_step, lr_at, mean_parts, read_batch,
                     reached_max_steps, save, set_lr, setup, start_run, stop_if_asked, stop_unless_finite)

# ----------------------------------------------------------------------------------------------
# Constants (HuBERT Base unless said otherwise)

# kaldi.mfcc arguments (frame length and shift in ms), as fairseq's dump_mfcc_feature.py uses them
MFCC = dict(num_ceps=13, frame_length=25.0, frame_shift=10.0, use_energy=False)
MFCC_DELTAS = 2            # + deltas + delta-deltas: 39 dims
MFCC_PER_FRAME = 2         # 10 ms MFCC frames per 20 ms CNN frame: labels 100 Hz -> 50 Hz
FRAME_HOP = 320            # samples per CNN frame (20 ms at 16 kHz)
LOGIT_TEMP = 0.1           # HuBERT's cosine temperature (torchaudio _compute_logits, fairseq logit_temp)


# ----------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = runtime.make_parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True,
                   help="LibriSpeech-layout folders and/or fairseq .tsv manifests (transcripts not needed)")
    g.add_argument("--batch-seconds", type=float, default=32.0, help="padded audio per batch, seconds")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("targets")
    g.add_argument("--iterations", type=int, default=1, choices=[1, 2],
                   help="1: MFCC k-means targets; 2: then k-means on the iteration-1 model's features")
    g.add_argument("--clusters", type=int, default=100, help="k-means units of iteration 1 (HuBERT: 100)")
    g.add_argument("--clusters-iter2", type=int, default=100,
                   help="k-means units of iteration 2 (HuBERT: 500 on 960 h; 100 suits ~1 h)")
    g.add_argument("--iteration1", default=None, metavar="TEACHER_PT",
                   help="iteration 2 from this teacher's layer (e.g. teacher/toy-teacher.pt) instead of "
                        "training iteration 1 first; implies --iterations 2")
    g.add_argument("--target-layer", type=int, default=None,
                   help="iteration 2: layer of the iteration-1 model to cluster (default: layers // 2, "
                        "like HuBERT's 6 of 12)")
    g.add_argument("--kmeans-frames", type=int, default=100_000,
                   help="frames sampled for fitting k-means (HuBERT: 10%% of the data), frames")
    g.add_argument("--kmeans-iters", type=int, default=30, help="Lloyd iterations of k-means (upper bound)")
    add_model_args(p.add_argument_group("model"))
    g = p.add_argument_group("loss")
    g.add_argument("--mask-prob", type=float, default=0.8,
                   help="share of frames that start a masked span, before overlaps (HuBERT: 0.8)")
    g.add_argument("--mask-length", type=int, default=10, help="masked span, frames (HuBERT: 10)")
    # HuBERT Base predicts masked frames only. Trained so, the toy sits at the unit prior for its
    # first few hundred steps; with the unmasked loss it learns at once (results/NOTES.md, "Toy
    # teacher sizing"). And distillation reads the head on unmasked input, which only this loss trains.
    g.add_argument("--unmasked-weight", type=float, default=1.0,
                   help="weight of the loss on unmasked frames (HuBERT Base: 0)")
    g.add_argument("--feature-penalty", type=float, default=10.0,
                   help="weight of the mean squared CNN output (HuBERT: 10)")
    g.add_argument("--feature-grad-mult", type=float, default=1.0,
                   help="gradient scale into the CNN, 1 = unscaled (HuBERT: 0.1, for stability over 400k "
                        "steps; the toy's few hundred steps want the CNN to learn at full rate)")
    g = p.add_argument_group("optim")
    g.add_argument("--max-steps", type=int, default=400, help="optimizer steps per iteration")
    g.add_argument("--lr", type=float, default=2e-3,
                   help="peak learning rate (HuBERT Base: 5e-4 with 2800 s batches; the small toy "
                        "model and short run take a larger one)")
    g.add_argument("--warmup", type=float, default=0.08, help="warmup, fraction of --max-steps (HuBERT: 8%%)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98), help="AdamW betas (HuBERT)")
    g.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon (HuBERT)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (HuBERT)")
    g.add_argument("--clip", type=float, default=10.0, help="gradient norm clip (HuBERT: 10)")
    g = p.add_argument_group("io")
    runtime.add_io_args(g, "teacher.pt, checkpoint.pt, log.jsonl, args.json")
    g.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    args = p.parse_args(argv)
    if args.iteration1:
        args.iterations = 2
    if not 0 < args.mask_prob <= 1:
        p.error("--mask-prob must be in (0, 1]: masked prediction needs masked frames")
    return args


def add_model_args(g):
    g.add_argument("--layers", type=int, default=4, help="transformer layers (HuBERT Base: 12)")
    g.add_argument("--dim", type=int, default=256, help="transformer width (HuBERT Base: 768)")
    g.add_argument("--ffn", type=int, default=1024, help="feed-forward inner width (HuBERT Base: 3072)")
    g.add_argument("--heads", type=int, default=4, help="attention heads (HuBERT Base: 12)")
    # 128 channels: on a CPU the CNN then costs about as much as the toy transformer, so the paper's
    # CNN-vs-Fbank comparison still means something (results/NOTES.md, "Toy teacher sizing").
    g.add_argument("--conv-dim", type=int, default=128, help="CNN channels per layer (HuBERT: 512)")
    g.add_argument("--pos-conv-kernel", type=int, default=128, help="positional conv kernel, frames (HuBERT: 128)")
    g.add_argument("--pos-conv-groups", type=int, default=16, help="positional conv groups (HuBERT: 16)")
    g.add_argument("--final-dim", type=int, default=256, help="final_proj / codeword width (HuBERT: 256)")
    # HuBERT Base uses 0.1 dropout and 0.05 layerdrop for 400k steps on 960 h; a few epochs of a
    # toy corpus underfit rather than overfit (results/NOTES.md, "Toy teacher sizing").
    g.add_argument("--dropout", type=float, default=0.0, help="dropout, also on attention (HuBERT: 0.1)")
    g.add_argument("--layerdrop", type=float, default=0.0, help="probability of skipping a layer (HuBERT: 0.05)")


# ----------------------------------------------------------------------------------------------
# Targets: features -> k-means -> one unit per CNN frame


def mfcc_features(wave):
    """wave [S] float in [-1, 1] at 16 kHz -> [M, 39] MFCC + deltas + delta-deltas at 100 Hz,
    as fairseq's examples/hubert/simple_kmeans/dump_mfcc_feature.py computes them."""
    mfcc = torchaudio.compliance.kaldi.mfcc(wave[None], sample_frequency=data.SAMPLE_RATE, **MFCC)
    mfcc = mfcc.t()  # (13, M)
    feats = [mfcc]
    for _ in range(MFCC_DELTAS):
        feats.append(torchaudio.functional.compute_deltas(feats[-1]))
    return torch.cat(feats).t().contiguous()  # (M, 39)


@torch.no_grad()
def layer_features(encoder, layer, wave):
    """wave [S] -> [T, D] hidden states of `layer`, one utterance at a time so that padding never
    touches the first CNN layer's GroupNorm (README, "Padding and GroupNorm")."""
    device = next(encoder.parameters()).device
    hidden, _ = encoder(wave[None].to(device), torch.tensor([len(wave)], device=device), num_layers=layer)
    return hidden[layer][0].cpu()


def squared_distances(x, centroids):
    """x [N, D], centroids [K, D] -> [N, K] squared Euclidean distances."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.t() + centroids.pow(2).sum(1)).clamp(min=0)


def assign(x, centroids, chunk=65_536):
    """x [N, D] -> [N] index of each row's nearest centroid."""
    return torch.cat([squared_distances(c, centroids).argmin(1) for c in x.split(chunk)])


def inertia(x, centroids):
    """Sum of squared distances of every row of x to its nearest centroid (what k-means lowers)."""
    return sum(squared_distances(c, centroids).min(1).values.sum().item() for c in x.split(65_536))


def kmeans(x, k, iterations=30, seed=0):
    """Lloyd's k-means with k-means++ seeding: x [N, D] -> centroids [k, D]. iterations=0 returns
    the seeding. HuBERT fits sklearn's MiniBatchKMeans on ~10% of the frames; on a toy corpus
    full-batch Lloyd on a sample is as fast and fits in twenty lines."""
    if len(x) < k:
        raise ValueError(f"k-means needs at least {k} frames, got {len(x)}; use more audio or fewer clusters")
    g = torch.Generator().manual_seed(seed)
    # k-means++: each new centroid is a frame drawn with probability ~ squared distance to the
    # nearest centroid so far, which spreads the seeds over the data (Arthur & Vassilvitskii 2007).
    centroids = x[torch.randint(len(x), (1,), generator=g)]
    d2 = squared_distances(x, centroids)[:, 0]
    for _ in range(1, k):
        if d2.sum() > 0:
            pick = torch.multinomial(d2 / d2.sum(), 1, generator=g)
        else:  # fewer distinct frames than k: any frame will do
            pick = torch.randint(len(x), (1,), generator=g)
        centroids = torch.cat([centroids, x[pick]])
        d2 = torch.minimum(d2, squared_distances(x, x[pick])[:, 0])
    labels = None
    for _ in range(iterations):
        new = assign(x, centroids)
        if labels is not None and torch.equal(new, labels):
            break  # converged: the next update would change nothing
        labels = new
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        # A centroid that lost all its frames stays where it is (rare after k-means++).
        centroids = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None], centroids)
    return centroids


def num_frames(num_samples, layers):
    """CNN output frames for num_samples input samples: floor((n - kernel) / stride) + 1 per layer,
    exactly as torchaudio's ConvLayerBlock counts them."""
    n = num_samples
    for _, kernel, stride in layers:
        n = max(0, (n - kernel) // stride + 1)
    return n


def align_labels(labels, n):
    """Cut, or pad by repeating the last unit, labels [T'] to the CNN's n frames. With HuBERT's CNN
    and 25/10 ms MFCC frames the counts agree exactly; anything beyond one frame is a bug."""
    assert abs(len(labels) - n) <= 1, f"{len(labels)} labels for {n} CNN frames"
    if len(labels) < n:
        labels = torch.cat([labels, labels[-1:].expand(n - len(labels))])
    return labels[:n]


def make_targets(utterances, featurize, stride, clusters, cnn, args, centroids=None, desc="features"):
    """Featurize every utterance once, fit k-means on a sample of frames (unless `centroids` are
    given, as on resume) and label each utterance. Returns ({utterance id: units [T] long}, centroids)."""
    if len({u.id for u in utterances}) != len(utterances):
        raise ValueError("utterance ids repeat across --data; units are looked up by id, so pass each "
                         "corpus once and give different corpora different speaker ids")
    feats = {}
    for u in tqdm(utterances, desc=desc, leave=False):
        wave = data.load_audio(u.path)
        if len(wave) < FRAME_HOP + 80:
            raise ValueError(f"{u.path}: {len(wave)} samples, shorter than the CNN's 400-sample (25 ms) "
                             f"receptive field; drop it from the corpus")
        feats[u.id] = (featurize(wave), num_frames(len(wave), cnn))
    if centroids is None:
        every = torch.cat([f for f, _ in feats.values()])
        g = torch.Generator().manual_seed(args.seed)
        sample = every[torch.randperm(len(every), generator=g)[:args.kmeans_frames]]
        centroids = kmeans(sample, clusters, args.kmeans_iters, args.seed)
        print(f"k-means: {clusters} units on {len(sample)} of {len(every)} {desc} frames, "
              f"inertia per frame {inertia(sample, centroids) / len(sample):.4g}", flush=True)
    labels = {uid: align_labels(assign(f, centroids)[::stride], n) for uid, (f, n) in feats.items()}
    return labels, centroids


def batch_labels(ids, labels):
    """Units of a batch, [B, T_max]; padded frames get unit 0, which no loss ever reads."""
    units = [labels[i] for i in ids]
    out = torch.zeros(len(units), max(len(u) for u in units), dtype=torch.long)
    for row, u in zip(out, units):
        row[:len(u)] = u
    return out


# ----------------------------------------------------------------------------------------------
# Model: torchaudio's HuBERT pre-training model, exported as this project's teacher


def encoder_config(args):
    """The EncoderConfig of the model trained here; the teacher checkpoint stores it."""
    return model.EncoderConfig(conv_layers=model.hubert_cnn(args.conv_dim), dim=args.dim, layers=args.layers,
                               heads=args.heads, ffn=args.ffn, pos_conv_kernel=args.pos_conv_kernel,
                               pos_conv_groups=args.pos_conv_groups, dropout=args.dropout,
                               attention_dropout=args.dropout, layerdrop=args.layerdrop)


def build_hubert(config, num_classes, args):
    """torchaudio.models.hubert_pretrain_model with the shape of `config` and HuBERT's masking."""
    return hubert_pretrain_model(
        **config.torchaudio_args(),
        mask_prob=args.mask_prob, mask_selection="static", mask_other=0.0, mask_length=args.mask_length,
        no_mask_overlap=False, mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static",
        mask_channel_other=0.0, mask_channel_length=10, no_mask_channel_overlap=False,
        mask_channel_min_space=1,
        skip_masked=False, skip_nomask=False, num_classes=num_classes, final_dim=args.final_dim,
        feature_grad_mult=args.feature_grad_mult if args.feature_grad_mult < 1 else None)


def masked_prediction(hubert, waves, lengths, labels):
    """HuBERTPretrainModel.forward line by line, except the logits: one matmul of the normalised
    projections with the normalised codewords over all K units, [N, K], target = the unit.

    torchaudio's _compute_logits builds a (K+1, N, final_dim) tensor of "positive + negatives"
    (positive at index 0, the duplicate set to -inf), most of a CPU step; the cross-entropy is the
    same (test_masked_prediction_matches_torchaudio).
    (waves [B, S], lengths [B], labels [B, T]) -> dict of logits_m [Nm, K], units_m [Nm],
    logits_u [Nu, K], units_u [Nu], feature_penalty [] (mean squared CNN output).
    """
    x, frame_lengths = hubert.wav2vec2.feature_extractor(waves, lengths)
    if hubert.feature_grad_mult is not None:
        x = components.GradMultiply.apply(x, hubert.feature_grad_mult)
    penalty = x.float().pow(2).mean()
    padding = components._get_padding_mask(x, frame_lengths)  # (B, T) True on padding
    x, attention_mask = hubert.wav2vec2.encoder._preprocess(x, frame_lengths)
    x, mask = hubert.mask_generator(x, padding)  # (B, T) True where masked
    x = hubert.wav2vec2.encoder.transformer(x, attention_mask=attention_mask)  # (B, T, D)
    if x.shape[1] != labels.shape[1]:
        raise ValueError(f"{labels.shape[1]} label frames for {x.shape[1]} model frames")
    gen = hubert.logit_generator
    # losses.cosine_logits, written out: the masked and unmasked logits share one normalised codebook
    # (two calls would normalise it twice and change the last bits of its gradient).
    proj = F.normalize(gen.final_proj(x).float(), dim=-1, eps=1e-8)  # (B, T, F)
    codewords = F.normalize(gen.label_embeddings.float(), dim=-1, eps=1e-8)  # (K, F)
    mask_m = mask & ~padding
    mask_u = ~mask & ~padding
    return {"logits_m": proj[mask_m] @ codewords.t() / LOGIT_TEMP, "units_m": labels[mask_m],
            "logits_u": proj[mask_u] @ codewords.t() / LOGIT_TEMP, "units_u": labels[mask_u],
            "feature_penalty": penalty}


def accuracy(logits, units):
    """Share of frames whose highest logit is their unit (0 when there are no such frames)."""
    return (logits.argmax(-1) == units).float().mean().item() if len(units) else 0.0


def teacher_checkpoint(hubert, config, targets, args):
    """This project's teacher checkpoint: an Encoder holding the trained wav2vec2 weights (strict
    load: the names are torchaudio's) plus HuBERT's head (final_proj + codewords)."""
    encoder = model.Encoder(config)
    encoder.load_state_dict({k: v.cpu() for k, v in hubert.wav2vec2.state_dict().items()})
    gen = hubert.logit_generator
    head = {"final_proj.weight": gen.final_proj.weight.detach().cpu().clone(),
            "final_proj.bias": gen.final_proj.bias.detach().cpu().clone(),
            "codewords": gen.label_embeddings.detach().cpu().clone()}
    return checkpoints.encoder_checkpoint(encoder, "teacher", head=head, targets=targets, args=vars(args))


# ----------------------------------------------------------------------------------------------
# Main


@dataclass(kw_only=True)
class Run(RunState):
    """One HuBERT iteration's training: main makes it, train_iteration steps it."""
    hubert: nn.Module                    # torchaudio's HuBERTPretrainModel
    iteration: int                       # 1: MFCC units, 2: units of the iteration-1 model's layer
    config: model.EncoderConfig          # the network's shape, stored in the teacher checkpoint
    targets: dict                        # how the units were made, incl. "centroids" (k-means, [K, F])

    def network(self):
        return self.hubert

    def checkpoint(self, full):
        """The teacher (teacher.pt, iter1.pt); full: the HuBERT pre-training model and its units."""
        if full:
            return {"iteration": self.iteration, "hubert": self.hubert.state_dict(),
                    "centroids": self.targets["centroids"], "args": vars(self.args)}
        return teacher_checkpoint(self.hubert, self.config, self.targets, self.args)


def main(args):
    device, rank, world = setup(args)
    if world > 1:
        raise ValueError("pretrain.py trains on one process; run it without torchrun")
    start_run(args, rank)
    ckpt_path, resume = runtime.find_resume(args, rank, world)
    utterances = data.load_corpus(args.data)
    loader, sampler = data.make_loader(utterances, args.batch_seconds, shuffle=True, seed=args.seed,
                                       num_workers=args.num_workers)
    # Every new DataLoader iterator draws a worker base seed from the global RNG unless the loader
    # has its own generator; the draw would shift the masks after a resume (which starts a new
    # iterator mid-epoch), so the loader gets a private generator and resumes stay exact.
    loader.generator = torch.Generator().manual_seed(args.seed)
    config = encoder_config(args)
    hop = int(np.prod([stride for _, _, stride in config.conv_layers]))
    if hop != FRAME_HOP:
        raise ValueError(f"the CNN hop is {hop} samples; the 50 Hz labels need {FRAME_HOP}")
    hours = sum(u.num_samples for u in utterances) / data.SAMPLE_RATE / 3600
    print(f"{len(utterances)} utterances, {hours:.2f} h, {len(sampler)} batches/epoch | device {device}", flush=True)
    first = resume["iteration"] if resume else 2 if args.iteration1 else 1
    for iteration in range(first, args.iterations + 1):
        state = resume if resume and resume["iteration"] == iteration else None
        labels, targets = iteration_targets(iteration, args, utterances, config.conv_layers, device,
                                            state["centroids"] if state else None)
        hubert = build_hubert(config, len(targets["centroids"]), args).to(device)
        optimizer = torch.optim.AdamW(hubert.parameters(), lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                                      weight_decay=args.weight_decay)
        run = Run(args=args, device=device, rank=rank, world=world, ckpt_path=ckpt_path, optimizer=optimizer,
                  hubert=hubert, iteration=iteration, config=config, targets=targets)
        if state:
            hubert.load_state_dict(state["hubert"])
        runtime.start(run, state, loader, sampler)
        if state:
            print(f"resumed from {ckpt_path} at iteration {iteration}, step {run.step}", flush=True)
        print(f"iteration {iteration}: HuBERT {config.layers}x{config.dim}, CNN {config.conv_layers[0][0]} "
              f"channels, {model.count_parameters(hubert) / 1e6:.2f}M parameters, {len(targets['centroids'])} "
              f"units from {targets['features']}", flush=True)
        train_iteration(run, labels)
        if not reached_max_steps(run):  # --stop-after: checkpoint.pt holds the state
            return
        name = "teacher.pt" if iteration == args.iterations else f"iter{iteration}.pt"
        save(run, os.path.join(args.out_dir, name), full=False)
        print(f"iteration {iteration} done: {os.path.join(args.out_dir, name)}", flush=True)
        resume = None
    print(f"done: {os.path.join(args.out_dir, 'teacher.pt')} (teacher for distill.py --teacher)", flush=True)


def iteration_targets(iteration, args, utterances, cnn, device, saved_centroids=None):
    """The frame labels of one HuBERT iteration: k-means of MFCCs (1), or of the iteration-1 model's
    layer features (2). Returns (labels {utterance id: [T]}, targets record incl. "centroids")."""
    if iteration == 1:
        targets = {"iteration": 1, "features": "mfcc", "mfcc": dict(MFCC, deltas=MFCC_DELTAS),
                   "mfcc_frames_per_label": MFCC_PER_FRAME,
                   "label_rate": data.SAMPLE_RATE // FRAME_HOP}
        labels, centroids = make_targets(utterances, mfcc_features, MFCC_PER_FRAME, args.clusters, cnn,
                                         args, saved_centroids, desc="mfcc")
    else:
        # Iteration 2 clusters the iteration-1 model's features and then trains a fresh model,
        # as HuBERT does: continuing would start from a model fitted to the old units' codewords.
        layer = args.target_layer or max(1, args.layers // 2)
        previous = model.load_teacher(args.iteration1 or os.path.join(args.out_dir, "iter1.pt")).encoder.to(device)
        targets = {"iteration": 2, "features": f"layer {layer}", "layer": layer,
                   "iteration1": args.iteration1 or "iter1.pt",
                   "label_rate": data.SAMPLE_RATE // FRAME_HOP}
        labels, centroids = make_targets(utterances, lambda w: layer_features(previous, layer, w), 1,
                                         args.clusters_iter2, cnn, args, saved_centroids,
                                         desc=f"layer {layer}")
        del previous
    targets["centroids"] = centroids
    return labels, targets


def train_iteration(run, labels):
    """Masked prediction from run.step to --max-steps (or --stop-after), logged, with checkpoints for
    --resume; Ctrl-C stops at the next step with a checkpoint."""
    args, hubert, optimizer, device = run.args, run.hubert, run.optimizer, run.device
    logger = Logger(args.out_dir, args.max_steps, rank=0)
    last_log, interval = run.step, {}  # the logged values: means over the steps since the last line (add_parts)
    stop_at = last_step(run)
    hubert.train()
    with GracefulStop() as stopper:
        while run.step < stop_at:
            stop_if_asked(stopper, run)
            lr = lr_at(run.step, args.max_steps, args.lr, args.warmup)
            set_lr(optimizer, lr)
            batch = read_batch(run)
            waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
            out = masked_prediction(hubert, waves, lengths, batch_labels(batch["ids"], labels).to(device))
            loss_m = F.cross_entropy(out["logits_m"], out["units_m"])
            loss = loss_m + args.feature_penalty * out["feature_penalty"]
            if args.unmasked_weight > 0 and len(out["units_u"]):  # a short utterance can be all masked
                loss = loss + args.unmasked_weight * F.cross_entropy(out["logits_u"], out["units_u"])
            stop_unless_finite(run, loss, {"loss": loss.item(), "iteration": run.iteration}, "Try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(hubert.parameters(), args.clip)
            optimizer.step()
            run.step += 1
            logger.add_audio(lengths.sum().item() / data.SAMPLE_RATE)
            with torch.no_grad():
                values = {"loss": loss.item(), "ce_m": loss_m.item(),
                          "acc_m": accuracy(out["logits_m"], out["units_m"]),
                          "acc_u": accuracy(out["logits_u"], out["units_u"]), "grad_norm": float(grad_norm)}
            add_parts(interval, values)
            if run.step % args.log_every == 0 or run.step == args.max_steps:
                logger.log(run.step, run.step - last_log, iter=run.iteration, **mean_parts(interval), lr=lr)
                last_log, interval = run.step, {}
            if run.step % args.save_every == 0 or run.step == stop_at:
                save(run, run.ckpt_path)


if __name__ == "__main__":
    runtime.run_main(main, parse_args)
