"""Networks: HuBERT teachers from every checkpoint format, the paper's students, the CTC model.

Every network here is torchaudio's wav2vec2/HuBERT encoder (torchaudio.models.wav2vec2_model,
whose arguments are tied one to one to fairseq's names), wrapped so that one obvious call
returns all hidden states:

    hidden_states, frame_lengths = encoder(waves, lengths)
    # hidden_states[0]: transformer input (after CNN, projection, positional conv, and the
    #                   layer norm of post-LN models); hidden_states[k]: output of layer k

Students follow the paper (arXiv 2210.15631, Sec. 3): "S&W" = shallow and wide, DistilHuBERT
(2 x 768, predicting teacher layers 4, 8, 12 from its last layer) and "D&T" = deep and thin,
FitHuBERT (12 x 480, FFN 480, layer to layer), optionally with the Fbank front-end.

    python model.py                      # the preset table with parameter counts
"""
import argparse
import os
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torchaudio.models import wav2vec2_model

import checkpoints
import fbank_frontend
from losses import cosine_logits

# ----------------------------------------------------------------------------------------------
# Configuration


def hubert_cnn(channels=512):
    """HuBERT's waveform CNN with `channels` filters per layer: (channels, kernel, stride) per
    layer; 400-sample receptive field and a 320-sample (20 ms) hop at 16 kHz. HuBERT has 512;
    the demo's toy teacher 128 (pretrain.py --conv-dim 128).

    >>> hubert_cnn(128)[:3]
    [(128, 10, 5), (128, 3, 2), (128, 3, 2)]
    """
    return [(channels, 10, 5)] + [(channels, 3, 2)] * 4 + [(channels, 2, 2)] * 2


@dataclass
class EncoderConfig:
    """Shape of one encoder; every field maps to a torchaudio.models.wav2vec2_model argument."""
    frontend: str = "cnn"                # "cnn" (HuBERT's waveform CNN) or "fbank" (fbank_frontend.py)
    extractor_mode: str = "group_norm"   # CNN norm: "group_norm" (Base, first layer) or "layer_norm" (Large)
    conv_layers: list = field(default_factory=hubert_cnn)  # [(channels, kernel, stride)]
    conv_bias: bool = False              # CNN conv bias (True for Large)
    dim: int = 768                       # transformer width (encoder_embed_dim)
    layers: int = 12                     # transformer layers
    heads: int = 12                      # attention heads
    ffn: int = 3072                      # feed-forward inner width (encoder_ff_interm_features)
    pos_conv_kernel: int = 128           # positional conv kernel, frames
    pos_conv_groups: int = 16            # positional conv groups
    layer_norm_first: bool = False       # pre-LN transformer (Large) instead of post-LN (Base)
    feature_layer_norm: bool = True      # LayerNorm on CNN features before the projection (HuBERT; students: none)
    normalize_waveform: bool = False     # zero-mean unit-variance per utterance (Large does, Base not)
    dropout: float = 0.1                 # dropout after projection / attention / FFN blocks
    attention_dropout: float = 0.1       # dropout on attention weights
    activation_dropout: float = 0.0      # dropout inside the FFN
    layerdrop: float = 0.0               # probability of skipping a layer in training
    n_mels: int = 80                     # fbank front-end only: mel bins
    specaugment: bool = False            # fbank front-end only: SpecAugment in training (2 x F=30, 2 x T=40)

    def torchaudio_args(self):
        """The arguments of torchaudio.models.wav2vec2_model (and hubert_pretrain_model) for this shape."""
        c = self
        return dict(
            extractor_mode=c.extractor_mode, extractor_conv_layer_config=[tuple(x) for x in c.conv_layers],
            extractor_conv_bias=c.conv_bias, encoder_embed_dim=c.dim, encoder_projection_dropout=c.dropout,
            encoder_pos_conv_kernel=c.pos_conv_kernel, encoder_pos_conv_groups=c.pos_conv_groups,
            encoder_num_layers=c.layers, encoder_num_heads=c.heads, encoder_attention_dropout=c.attention_dropout,
            encoder_ff_interm_features=c.ffn, encoder_ff_interm_dropout=c.activation_dropout,
            encoder_dropout=c.dropout, encoder_layer_norm_first=c.layer_norm_first, encoder_layer_drop=c.layerdrop)

    @classmethod
    def from_dict(cls, d):
        """Rebuild from asdict(config); unknown keys are an error, tuples come back as lists."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown encoder config keys {sorted(unknown)}")
        d = dict(d)
        d["conv_layers"] = [tuple(c) for c in d.get("conv_layers", hubert_cnn())]
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Encoder: torchaudio's wav2vec2 with all hidden states


def normalize_waveform(waves, lengths):
    """Layer-norm each utterance over its real samples (fairseq `normalize: true`); [B, S] -> [B, S]."""
    mask = torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]
    n = lengths.clamp(min=1).to(waves.dtype)[:, None]
    mean = (waves * mask).sum(1, keepdim=True) / n
    var = (((waves - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return ((waves - mean) / torch.sqrt(var + 1e-5)) * mask


class Encoder(nn.Module):
    """HuBERT-style encoder: a front-end (`feature_extractor`: HuBERT's CNN or the Fbank front-end;
    `frontend()` runs it) and a transformer (`encoder`). The two attributes keep torchaudio's
    Wav2Vec2Model names so that its state_dict loads here unchanged."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c = config
        w2v = wav2vec2_model(**c.torchaudio_args(), aux_num_out=None)
        self.feature_extractor = w2v.feature_extractor
        self.encoder = w2v.encoder
        if c.frontend == "fbank":
            # The Fbank front-end ends in its own Linear(D, D), so it replaces both the CNN and
            # the CNN's feature projection: that is how the paper's 19.11M count comes out.
            self.feature_extractor = fbank_frontend.FbankFrontend(c.dim, n_mels=c.n_mels, specaugment=c.specaugment)
            self.encoder.feature_projection = nn.Identity()
        elif c.frontend != "cnn":
            raise ValueError(f"unknown front-end {c.frontend!r}; choose 'cnn' or 'fbank'")
        elif not c.feature_layer_norm:
            self.encoder.feature_projection.layer_norm = nn.Identity()

    def frontend(self, waves, lengths):
        """The front-end alone, CNN or Fbank: (waves [B, S], lengths [B]) -> (features [B, T, C], frame_lengths [B])."""
        if self.config.normalize_waveform:
            waves = normalize_waveform(waves, lengths)
        return self.feature_extractor(waves, lengths)

    def transformer_input(self, waves, lengths, features=None):
        """(waves [B, S], lengths [B]) -> transformer input [B, T, D] (padding zeroed), frame_lengths [B].
        features: the front-end's output (features, frame_lengths) when already computed (caches.FrontendCache)."""
        feats, frame_lengths = features if features is not None else self.frontend(waves, lengths)
        x = self.encoder.feature_projection(feats)  # layer norm, Linear(C -> D), dropout (Identity for Fbank)
        x = x.masked_fill(padding_mask(frame_lengths, x.shape[1])[..., None], 0.0)  # (B, T, D)
        return x, frame_lengths

    def forward(self, waves, lengths, num_layers=None, features=None):
        """(waves [B, S], lengths [B]) -> (hidden_states: list of L+1 x [B, T, D], frame_lengths [B]);
        features: see transformer_input."""
        x, frame_lengths = self.transformer_input(waves, lengths, features)
        return self.transformer_layers(x, frame_lengths, num_layers)

    def transformer_layers(self, x, frame_lengths, num_layers=None):
        """Run the transformer on its input x [B, T, D]; returns (hidden_states, frame_lengths)."""
        t = self.encoder.transformer
        T = x.shape[1]
        pad = padding_mask(frame_lengths, T)  # (B, T) True on padding
        attn_mask = (-10000.0 * pad[:, None, None, :].to(x.dtype)).expand(-1, 1, T, T)
        x = x + t.pos_conv_embed(x)  # relative position: grouped Conv1d over time, GELU
        # torchaudio's Transformer.layer_norm_first is True for post-LN models (HuBERT Base):
        # their only input layer norm comes here, before the first layer.
        if t.layer_norm_first:
            x = t.layer_norm(x)
        x = t.dropout(x)  # hidden_states[0]: the transformer input
        hidden = [x]
        for i, layer in enumerate(t.layers):
            if num_layers is not None and i >= num_layers:
                break
            if self.training and t.layer_drop > 0 and torch.rand(1).item() < t.layer_drop:
                hidden.append(x)  # a dropped layer passes its input through
                continue
            x, _ = layer(x, attn_mask)
            hidden.append(x)
        # torchaudio's Transformer flag is the inverse of the layer's: False here = pre-LN model,
        # whose final layer norm comes after the last layer (as in transformers' hidden_states).
        if not t.layer_norm_first and len(hidden) == len(t.layers) + 1:
            hidden[-1] = t.layer_norm(x)
        return hidden, frame_lengths


def padding_mask(frame_lengths, T):
    """frame_lengths [B] -> bool [B, T], True on padding (the convention of every loss here)."""
    return torch.arange(T, device=frame_lengths.device)[None, :] >= frame_lengths[:, None]


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# HuBERT's prediction head and the frozen teacher


class PredictionHead(nn.Module):
    """HuBERT's head: final_proj (D -> F) and the codeword embeddings (K x F; fairseq
    `label_embs_concat`, 504 x 256 for hubert_base_ls960). logits = cos(final_proj(h), e_k) / tau,
    the function the students' "cos" and "hard" heads share (losses.cosine_logits)."""

    def __init__(self, dim, final_dim, num_codewords):
        super().__init__()
        self.final_proj = nn.Linear(dim, final_dim)
        self.codewords = nn.Parameter(torch.zeros(num_codewords, final_dim))

    def logits(self, h, tau=0.1):
        """h [B, T, D] -> cosine logits [B, T, K] / tau (HuBERT's own tau is 0.1)."""
        return cosine_logits(self.final_proj(h), self.codewords, tau)


class Teacher(nn.Module):
    """A frozen encoder (always in eval mode: no dropout, no layerdrop) plus its optional head."""

    def __init__(self, encoder: Encoder, head: PredictionHead = None):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.requires_grad_(False)
        self.eval()

    @property
    def config(self):
        return self.encoder.config

    def train(self, mode=True):  # a teacher never trains; model.train() elsewhere must not flip it
        return super().train(False)

    @torch.no_grad()
    def forward(self, waves, lengths):
        """(waves [B, S], lengths [B]) -> (hidden_states: list of L+1 x [B, T, D], frame_lengths [B])."""
        return self.encoder(waves, lengths)


# ----------------------------------------------------------------------------------------------
# Networks from checkpoint data (checkpoints.py reads and writes the files)


def encoder_from_checkpoint(ckpt, path="checkpoint"):
    """Rebuild an Encoder from a project checkpoint dict."""
    if ckpt.get("format") != checkpoints.CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a checkpoint of this project (no format {checkpoints.CHECKPOINT_FORMAT!r})")
    return load_encoder_state(EncoderConfig.from_dict(ckpt["config"]), ckpt["encoder"], path)


def head_from_state(state, dim):
    """PredictionHead from {"final_proj.weight", "final_proj.bias", "codewords"}, or None."""
    if not state:
        return None
    head = PredictionHead(dim, state["codewords"].shape[1], state["codewords"].shape[0])
    head.load_state_dict(state)
    return head


def state_dict_error(e):  # the informative part of load_state_dict's RuntimeError, on one line
    return " ".join(str(e).split()).replace("Error(s) in loading state_dict for ", "")[:300]


def load_encoder_state(config, state, path):
    """Encoder(config) with `state` (torchaudio names) loaded strictly; one-line error on mismatch."""
    encoder = Encoder(config)
    try:
        encoder.load_state_dict(checkpoints.refold_pos_conv(state))
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the architecture in its config "
                         f"({state_dict_error(e)})") from None
    return encoder


def load_teacher(src: str) -> Teacher:
    """A frozen teacher (eval mode, no gradients) from a fairseq HuBERT checkpoint (pre-trained, with
    its prediction head, or fine-tuned), a Hugging Face folder (config.json + weights), a torchaudio
    bundle already in the torch hub cache (torchaudio:HUBERT_BASE; nothing is downloaded), or a
    checkpoint of this project (kind teacher, student or ctc)."""
    if src.startswith("torchaudio:"):
        foreign = checkpoints.read_torchaudio(src[len("torchaudio:"):])
    elif os.path.isdir(src):
        foreign = checkpoints.read_huggingface(src)
    elif not os.path.exists(src):
        raise FileNotFoundError(f"{src}: no such file or folder; pass a fairseq .pt, a Hugging Face "
                                f"folder, torchaudio:HUBERT_BASE or a checkpoint of this project")
    else:
        ckpt = checkpoints.load_checkpoint(src, allow=checkpoints.pickle_allow_list())
        if isinstance(ckpt, dict) and "format" in ckpt:
            encoder = encoder_from_checkpoint(ckpt, src)
            return Teacher(encoder, head_from_state(ckpt.get("head"), encoder.config.dim))
        elif isinstance(ckpt, dict) and "model" in ckpt and ("cfg" in ckpt or "args" in ckpt):
            foreign = checkpoints.read_fairseq(ckpt, src)
        else:
            found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{src}: unknown checkpoint layout ({found}); expected a fairseq checkpoint "
                             f"('model' with 'cfg' or 'args') or a checkpoint of this project")
    encoder = load_encoder_state(EncoderConfig.from_dict(foreign["config"]), foreign["encoder"], foreign["file"])
    try:
        head = head_from_state(foreign["head"], encoder.config.dim)  # only fairseq files carry one
    except RuntimeError as e:
        raise ValueError(f"{foreign['file']}: final_proj does not fit label_embs_concat "
                         f"({state_dict_error(e)})") from None
    return Teacher(encoder, head)


# ----------------------------------------------------------------------------------------------
# Students


@dataclass
class Preset:
    """A student recipe: its shape, how it is initialised, which teacher layers it predicts."""
    config: dict                  # EncoderConfig overrides
    style: str                    # "last": heads on the last layer (S&W); "layerwise": layer i -> layer i (D&T)
    init: str                     # INITS: "layers": teacher CNN + first L layers; "cnn": CNN only; "none"
    note: str = ""


# Dropout inside the students' FFN: the authors' distiller default (upstream/distiller/model.py of their
# s3prl fork, no YAML overrides it) and DistilHuBERT's. Teachers keep their checkpoint's value.
STUDENT_ACTIVATION_DROPOUT = 0.1
INITS = ("layers", "cnn", "none")

PRESETS = {
    "distilhubert": Preset(dict(dim=768, layers=2, ffn=3072, heads=12), "last", "layers",
                           "S&W, DistilHuBERT"),
    "fithubert": Preset(dict(dim=480, layers=12, ffn=480, heads=12), "layerwise", "cnn",
                        "D&T, FitHuBERT (the paper's main student)"),
    "distilhubert-fbank": Preset(dict(dim=768, layers=2, ffn=3072, heads=12, frontend="fbank"),
                                 "last", "layers", "S&W with Fbank front-end"),
    "fithubert-fbank": Preset(dict(dim=480, layers=12, ffn=480, heads=12, frontend="fbank"),
                              "layerwise", "none", "D&T with Fbank front-end"),
    "tiny": Preset(dict(dim=64, layers=2, ffn=128, heads=2, pos_conv_kernel=16, pos_conv_groups=4),
                   "last", "cnn", "for tests and quick CPU runs"),
    # The demo's students, in the paper's proportions to its toy teacher (12 x 160, FFN 640, CNN 128):
    # S&W = 2 teacher layers, D&T = 12 layers at 0.6 x the width with FFN = width (480 / 768).
    "toy-distilhubert": Preset(dict(dim=160, layers=2, ffn=640, heads=4, conv_layers=hubert_cnn(128)), "last", "layers",
                               "S&W for demo.py's toy teacher (26% of its 4.20M)"),
    "toy-fithubert": Preset(dict(dim=96, layers=12, ffn=96, heads=4, conv_layers=hubert_cnn(128)), "layerwise", "cnn",
                            "D&T for demo.py's toy teacher (24%)"),
    "toy-fithubert-fbank": Preset(dict(dim=96, layers=12, ffn=96, heads=4, frontend="fbank"), "layerwise", "none",
                                  "D&T with Fbank front-end for the toy teacher (-19%)"),
}


def distill_pairs(style, student_layers, teacher_layers, target_layers=None):
    """(student layer, teacher layer) pairs the regression heads predict.

    >>> distill_pairs("last", 2, 12)       # DistilHuBERT: last layer predicts 4, 8, 12
    [(2, 4), (2, 8), (2, 12)]
    >>> distill_pairs("layerwise", 4, 12)  # proportional when depths differ
    [(1, 3), (2, 6), (3, 9), (4, 12)]
    """
    if style == "last":
        targets = target_layers or [round(teacher_layers * k / 3) for k in (1, 2, 3)]
        pairs = [(student_layers, t) for t in targets]
    elif style == "layerwise":
        if target_layers:
            if len(target_layers) != student_layers:
                raise ValueError(f"--target-layers needs one teacher layer per student layer "
                                 f"({student_layers}), got {len(target_layers)}")
            pairs = list(zip(range(1, student_layers + 1), target_layers))
        else:
            pairs = [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
    else:
        raise ValueError(f"unknown distillation style {style!r}")
    bad = [t for _, t in pairs if not 0 <= t <= teacher_layers]
    if bad:
        raise ValueError(f"teacher has layers 0..{teacher_layers}; cannot target {bad}")
    return pairs


def build_student(preset, teacher=None, init=None, **overrides) -> Encoder:
    """A student encoder from a preset name, initialised from `teacher` as `init` (INITS) or the preset says.

    With a teacher, the student takes the teacher's CNN shape (it is copied) and waveform
    normalisation, and S&W presets the teacher's width (their layers are copied); `overrides`
    (e.g. layers=4, dim=256) win over all of these. FFN dropout is STUDENT_ACTIVATION_DROPOUT and,
    as in the authors' distiller, no LayerNorm on the CNN features, unless overridden.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    cfg = dict(activation_dropout=STUDENT_ACTIVATION_DROPOUT, feature_layer_norm=False, **p.config)
    if teacher is not None:
        t = teacher.config
        cfg.update(extractor_mode=t.extractor_mode, conv_layers=list(t.conv_layers),
                   conv_bias=t.conv_bias, normalize_waveform=t.normalize_waveform)
        if p.init == "layers":  # S&W copies whole teacher layers: it has the teacher's width
            cfg.update(dim=t.dim, ffn=t.ffn, heads=t.heads, pos_conv_kernel=t.pos_conv_kernel,
                       pos_conv_groups=t.pos_conv_groups, layer_norm_first=t.layer_norm_first)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    student = Encoder(EncoderConfig(**cfg))
    init = init or p.init
    if teacher is not None and init != "none":
        init_from_teacher(student, teacher.encoder, copy_layers=(init == "layers"))
    return student


def init_from_teacher(student: Encoder, teacher: Encoder, copy_layers: bool):
    """Copy the teacher's CNN and, for S&W, its projection Linear, positional conv and first L layers,
    as the authors' distiller (pretrain/distiller/pretrain_expert.py); the input LayerNorm stays fresh."""
    s, t = student.config, teacher.config
    if s.frontend == "cnn":
        student.feature_extractor.load_state_dict(teacher.feature_extractor.state_dict())
    if not copy_layers:
        return
    if (s.dim, s.ffn, s.heads) != (t.dim, t.ffn, t.heads) or s.layers > t.layers:
        raise ValueError(
            f"cannot initialise a {s.layers}x{s.dim} (FFN {s.ffn}, {s.heads} heads) student from "
            f"the layers of a {t.layers}x{t.dim} (FFN {t.ffn}, {t.heads} heads) teacher; "
            f"match --dim/--ffn/--heads to the teacher or pick a preset that copies only the CNN")
    if s.frontend == "cnn":
        student.encoder.feature_projection.projection.load_state_dict(
            teacher.encoder.feature_projection.projection.state_dict())
    st, tt = student.encoder.transformer, teacher.encoder.transformer
    st.pos_conv_embed.load_state_dict(tt.pos_conv_embed.state_dict())
    for i in range(s.layers):
        st.layers[i].load_state_dict(tt.layers[i].state_dict())


# ----------------------------------------------------------------------------------------------
# CTC model


@dataclass
class CTCConfig:
    """The CTC head and its fine-tuning masks (fairseq's hubert_ctc names in brackets)."""
    vocab_size: int = 32              # output symbols incl. the blank (id 0): len(data.VOCAB)
    final_dropout: float = 0.0        # dropout before the head [final_dropout]
    mask_prob: float = 0.0            # share of real frames that start a masked time span [mask_prob]
    mask_length: int = 10             # time span, frames of 20 ms [mask_length]
    mask_channel_prob: float = 0.0    # share of channels that start a zeroed channel span [mask_channel_prob]
    mask_channel_length: int = 64     # channel span, channels [mask_channel_length]


def span_mask(lengths, size, prob, span, min_spans=0):
    """Random spans to mask, like fairseq's compute_mask_indices with "static" spans: lengths [B]
    long -> bool [B, size], True = masked. Row b gets prob * lengths[b] / span spans (rounded at
    random, at least min_spans) of `span` positions, starting uniformly inside its real positions;
    padding is never masked. Spans overlap, so about 1 - exp(-prob) of a long row is masked. Unlike
    fairseq, rows keep their own span counts and a count of zero masks nothing (no IndexError)."""
    device = lengths.device
    num = (prob * lengths / span + torch.rand(lengths.shape, device=device)).long().clamp(min=min_spans)  # (B,)
    N = max(int(num.max()), 1)
    room = (lengths - span + 1).clamp(min=1)  # possible start positions per row
    starts = (torch.rand(len(lengths), N, device=device) * room[:, None]).long()  # (B, N)
    used = torch.arange(N, device=device)[None, :] < num[:, None]  # (B, N)
    offset = torch.arange(size, device=device)[None, None, :] - starts[..., None]  # (B, N, size)
    masked = ((offset >= 0) & (offset < span) & used[..., None]).any(dim=1)  # (B, size)
    return masked & ~padding_mask(lengths, size)


class CTCModel(nn.Module):
    """An encoder with a linear CTC head over the characters (fairseq's HubertCtc, transformers'
    HubertForCTC). In training the transformer input is masked as in fairseq's fine-tuning: time
    spans of real frames take a learned embedding, channel spans are zeroed."""

    def __init__(self, encoder: Encoder, config: CTCConfig = None):
        super().__init__()
        self.config = config or CTCConfig()
        self.encoder = encoder
        dim = encoder.config.dim
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())  # fairseq's initialisation
        self.dropout = nn.Dropout(self.config.final_dropout)
        self.proj = nn.Linear(dim, self.config.vocab_size)
        nn.init.xavier_uniform_(self.proj.weight)  # fairseq's Linear() for the CTC head
        nn.init.zeros_(self.proj.bias)

    def apply_mask(self, x, frame_lengths):
        """x [B, T, D] -> x with time spans (real frames only) set to the mask embedding and channel
        spans set to 0, as fairseq's HubertModel.apply_mask."""
        B, T, D = x.shape
        c = self.config
        if c.mask_prob > 0:
            time = span_mask(frame_lengths, T, c.mask_prob, c.mask_length, min_spans=2)  # (B, T)
            x = torch.where(time[..., None], self.mask_embedding.to(x.dtype), x)
        if c.mask_channel_prob > 0:
            all_channels = torch.full_like(frame_lengths, D)
            channels = span_mask(all_channels, D, c.mask_channel_prob, c.mask_channel_length)  # (B, D)
            x = x.masked_fill(channels[:, None, :], 0.0)
        return x

    def forward(self, waves, lengths, features=None):
        """(waves [B, S], lengths [B]) -> (log-probs [B, T, V], frame_lengths [B]); features: see
        Encoder.transformer_input."""
        x, frame_lengths = self.encoder.transformer_input(waves, lengths, features)  # (B, T, D)
        if self.training:
            x = self.apply_mask(x, frame_lengths)
        hidden, frame_lengths = self.encoder.transformer_layers(x, frame_lengths)
        logits = self.proj(self.dropout(hidden[-1]))  # (B, T, V)
        return logits.log_softmax(-1), frame_lengths


# ----------------------------------------------------------------------------------------------
# CLI: the preset table


def preset_table():
    rows = [f"{'preset':<20} {'layers':>6} {'dim':>5} {'FFN':>5} {'heads':>5} {'front-end':>9} "
            f"{'params (M)':>10}  note"]
    for name, p in PRESETS.items():
        student = build_student(name)
        c, n = student.config, count_parameters(student) / 1e6
        rows.append(f"{name:<20} {c.layers:>6} {c.dim:>5} {c.ffn:>5} {c.heads:>5} {c.frontend:>9} "
                    f"{n:>10.2f}  {p.note}")
    return "\n".join(rows)


def main(argv=None):
    argparse.ArgumentParser(description="Print the student presets (encoder parameters, HuBERT CNN, distillation "
                            "heads not counted).", epilog="example: python model.py").parse_args(argv)
    print(preset_table())


if __name__ == "__main__":
    main()
