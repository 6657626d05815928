"""Objectives: regression, discriminative (KL over HuBERT's codewords), hard-unit and front-end
losses, as pure functions of tensors (the heads that feed them: distill.DistillHeads).

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
import torch
import torch.nn.functional as F

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
