"""Objectives: regression, discriminative (KL over HuBERT's codewords), hard-unit and front-end
losses, plus the student-side heads that exist only to feed them.

Follows arXiv 2210.15631, Sec. 3.1-3.3, and DistilHuBERT (arXiv 2110.01900, Eq. 1). The objective
of one batch, computed by distillation_loss:

    L      = L_reg + disc_weight * L_disc     (L_hard instead of L_disc for the "hard" head)
    L      = L_fe                             (Fbank stage 1: the first --frontend-steps steps)

    L_reg  = mean over the N predicted layers of
             w_l1 * mean|pred - target| + w_cos * mean(-log sigmoid(cos(pred, target)))
    L_disc = mean over frames of KL(p_T || p_S),   p = softmax(logits) over the K codewords,
             p_T = softmax(cos(final_proj(h_T), e_k) / tau)   (teacher: model.PredictionHead)
    L_hard = mean over frames of CE(cos(proj(h_S), e_k) / tau, argmax_k p_T)   (authors' type3)
    L_fe   = mean|Linear(frontend(x)) - teacher hidden_states[0]|   (Fbank stage 1)

DistilHuBERT's paper writes L_reg as a sum over layers; its code and the authors' code take one
`.mean()` over (B x N x T), i.e. average over layers, which keeps the regression's scale (and so
the meaning of --disc-weight) the same for 3 S&W heads and 12 D&T layers. Every mean runs over
real frames only: padding_mask [B, T] is True on padding, and padded frames are dropped by
boolean selection (never multiplied by 0, so NaN/inf garbage in padding cannot leak in). The
cosine term is not shifted: equal inputs give -log sigmoid(1) = 0.3133, as in the paper's
formula and the authors' code.

    loss, parts = distillation_loss(pred, target, padding_mask, s_logits, t_logits, disc_weight=0.5)
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

COS_FLOOR = math.log1p(math.exp(-1.0))  # -log sigmoid(1) = 0.3133: the cosine term's minimum (cos = 1)
HEAD_TYPES = ("cos", "linear", "hard")  # student discriminative heads, see DistillHeads
HEAD_STYLES = ("last", "layerwise")  # regression heads, model.Preset.style, see DistillHeads

# ----------------------------------------------------------------------------------------------
# Masked selection


def _real(x, padding_mask, frame_dims=0):
    """Keep real frames: x [*lead, B, T, ...] with `frame_dims` leading dims -> [*lead, R, ...]."""
    if padding_mask is None:
        return x.flatten(frame_dims, frame_dims + 1)
    if padding_mask.shape != x.shape[frame_dims:frame_dims + 2]:
        raise ValueError(f"padding_mask {tuple(padding_mask.shape)} does not match frames "
                         f"{tuple(x.shape[frame_dims:frame_dims + 2])} of a tensor {tuple(x.shape)}")
    index = (slice(None),) * frame_dims + (~padding_mask,)
    return x[index]


# ----------------------------------------------------------------------------------------------
# Regression (DistilHuBERT / FitHuBERT)


def regression_loss(pred, target, padding_mask, l1_weight=1.0, cos_weight=1.0):
    """L1 + cosine regression to teacher hidden states over real frames.

    pred, target: [B, T, C] (one layer) or [N, B, T, C] (N predicted layers); padding_mask
    [B, T] True on padding (None: all frames real). Per layer, l1 = mean over real frames and
    channels of |pred - target|, cos = mean over real frames of -log sigmoid(cos_sim); the
    layers are AVERAGED, as the authors' `.mean()` over (B x N x T) does, so 12 FitHuBERT
    layers weigh as much as 3 DistilHuBERT heads against the discriminative term.

    Returns (total, parts): total a scalar tensor with grad; parts holds detached tensors
    "l1", "cos" (means over layers) and "l1_layers", "cos_layers" [N].
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    target = target.detach()
    p = _real(pred, padding_mask, frame_dims=1).float()      # (N, R, C)
    t = _real(target, padding_mask, frame_dims=1).float()
    if p.shape[1] == 0:  # no real frame at all: nothing to learn, but keep the graph
        zero = p.sum() * 0.0  # 0 with a graph; pred.sum() could be NaN from padding
        z = torch.zeros(pred.shape[0], device=pred.device)
        return zero, {"l1": z.mean(), "cos": z.mean(), "l1_layers": z, "cos_layers": z}
    l1 = (p - t).abs().mean(dim=(1, 2))                          # (N,)
    cos = -F.logsigmoid(F.cosine_similarity(p, t, dim=-1)).mean(dim=1)  # (N,)
    total = (l1_weight * l1 + cos_weight * cos).mean()
    parts = {"l1": l1.mean().detach(), "cos": cos.mean().detach(),
             "l1_layers": l1.detach(), "cos_layers": cos.detach()}
    return total, parts


def frontend_loss(pred, target, padding_mask):
    """Fbank stage 1: mean |pred - target| over real frames and channels; [B, T, C] -> scalar."""
    p = _real(pred, padding_mask).float()
    t = _real(target.detach(), padding_mask).float()
    if p.shape[0] == 0:
        return p.sum() * 0.0
    return (p - t).abs().mean()


# ----------------------------------------------------------------------------------------------
# Discriminative: match the teacher's distribution over HuBERT's codewords


def cosine_logits(x, codewords, tau):
    """HuBERT's codeword logits cos(x, e_k) / tau: x [..., F], codewords [K, F] -> [..., K].

    The one formula behind the teacher's head (model.PredictionHead.logits) and the student's
    "cos" and "hard" heads; eps 1e-8 as in torch.cosine_similarity, which the authors call."""
    x = F.normalize(x, dim=-1, eps=1e-8)
    return x @ F.normalize(codewords, dim=-1, eps=1e-8).t() / tau


def discriminative_loss(student_logits, teacher_logits, padding_mask):
    """KL(p_T || p_S) summed over the K codewords, averaged over real frames.

    student_logits, teacher_logits: [B, T, K] (temperatures already applied by the heads);
    the teacher side is detached. Uses log_softmax on both sides, in fp32, so that
    near-zero probabilities stay finite: KL = sum_k p_T (log p_T - log p_S).
    """
    s = _real(student_logits, padding_mask).float()             # (R, K)
    t = _real(teacher_logits.detach(), padding_mask).float()
    if s.shape[0] == 0:
        return s.sum() * 0.0
    log_ps = F.log_softmax(s, dim=-1)
    log_pt = F.log_softmax(t, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


def hard_unit_loss(student_logits, teacher_logits, padding_mask):
    """Cross-entropy to the teacher's most likely unit (argmax over K) on real frames.

    With the "hard" head's cosine logits this is the authors' type3: their CE over [positive,
    every codeword with the positive's copy set to -inf] with target 0 has the same value.
    """
    s = _real(student_logits, padding_mask).float()             # (R, K)
    units = _real(teacher_logits.detach(), padding_mask).argmax(-1)
    if s.shape[0] == 0:
        return s.sum() * 0.0
    return F.cross_entropy(s, units)


# ----------------------------------------------------------------------------------------------
# The objective: L of one batch


def distillation_loss(pred, target, padding_mask, student_logits=None, teacher_logits=None, l1_weight=1.0,
                      cos_weight=1.0, disc_weight=0.0, disc_head="cos", frontend_only=False):
    """L = L_reg + disc_weight * L_disc (L_hard for disc_head "hard"), or L_fe when frontend_only.

    pred, target: [N, B, T, C] student predictions and the teacher layers they regress to (for
    frontend_only: [B, T, C], the projected front-end output and teacher hidden_states[0]);
    student_logits, teacher_logits: [B, T, K] codeword logits (used when disc_weight > 0; the
    teacher's from model.PredictionHead.logits); padding_mask [B, T] True on padding.
    Returns (L, parts): L a scalar tensor with grad; parts the logged floats: "l1", "cos" (means
    over layers), "l1_layers", "cos_layers" (lists, per layer), "disc"; or "frontend_l1".
    """
    if frontend_only:
        loss = frontend_loss(pred, target, padding_mask)
        return loss, {"frontend_l1": loss.item()}
    loss, parts = regression_loss(pred, target, padding_mask, l1_weight, cos_weight)
    parts = {k: v.tolist() for k, v in parts.items()}
    if disc_weight > 0:
        disc_fn = hard_unit_loss if disc_head == "hard" else discriminative_loss
        disc = disc_fn(student_logits, teacher_logits, padding_mask)
        loss = loss + disc_weight * disc
        parts["disc"] = disc.item()
    return loss, parts


# ----------------------------------------------------------------------------------------------
# Student-side heads


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
                cosine_logits, the function of HuBERT's own head (model.PredictionHead.logits);
      "hard":   the same cosine logits, trained with cross-entropy to the teacher's argmax unit
                (hard_unit_loss): the authors' type3;
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
            x = F.gelu(self.expand(student_hidden[self.pairs[0][0]]))  # (B, T, N*D)
            x = x.unflatten(-1, (len(self.pairs), self.student_dim))  # (B, T, N, D)
            return torch.stack([proj(x[..., k, :]) for k, proj in enumerate(self.proj)])
        return torch.stack([proj(student_hidden[s]) for proj, (s, _) in zip(self.proj, self.pairs)])

    def disc_logits(self, h):
        """Student codeword logits from its last hidden state: [B, T, D] -> [B, T, K]."""
        if self.disc_head == "linear":
            return self.disc(h) / self.tau
        return cosine_logits(self.disc(h), self.codewords, self.tau)  # "cos" and "hard"

    def forward(self, student_hidden):
        """student_hidden: list of [B, T, D] -> (pred [N, B, T, teacher_dim] or None, disc_logits [B, T, K] or None)."""
        pred = self.regress(student_hidden) if self.pairs else None
        logits = self.disc_logits(student_hidden[-1]) if self.disc is not None else None
        return pred, logits
