"""Fbank front-end: batched Kaldi log-mel filterbank, global CMVN, SpecAugment, Conv1d subsampler.

The paper (arXiv 2210.15631, Sec. 3.3) replaces the student's waveform CNN (4.2M parameters,
most of the inference time) by 80-dim log-mel filterbanks and a small convolutional
subsampler. This file computes the filterbank on the input's device for a whole padded batch
at once (no per-utterance loop), with Kaldi's conventions so that it equals
`torchaudio.compliance.kaldi.fbank(wave * 32768, num_mel_bins=80, dither=0.0)` frame for frame:

    wave * 2^15 -> 25 ms frames every 10 ms (snip_edges) -> remove DC -> pre-emphasis 0.97
    -> povey window -> |rfft 512|^2 -> 80 triangular mel bins (20 Hz .. 8 kHz) -> log

then normalises with global mean/std statistics of the training data (stored as buffers, so
they travel in the checkpoint), optionally applies SpecAugment in training (`--specaugment` of
distill.py and finetune.py, stored in the model config), and subsamples to HuBERT's 20 ms frame
rate:

    fbank (B, T10, 80) -> Conv1d(80 -> 2D, kernel 5, stride 2, padding 2) -> GLU -> D
    -> Linear(D, D) -> dropout 0.1 -> (B, T20, D)

With padding 2 the 20 ms frame k is centred on sample 320 k + 200, exactly like the CNN's
frame k, and for every length S >= 400 it yields floor((S - 400) / 320) + 1 frames, the CNN's
count. distill.py still trims student and teacher frames to the shorter of the two, for safety.
distill.py computes the CMVN statistics of a new Fbank student from its training audio.

    frontend = FbankFrontend(480)                     # D&T width
    frontend.set_cmvn(*compute_cmvn(waves))           # global statistics, stored as buffers
    features, frame_lengths = frontend(waves, lengths)  # (B, T, 480) at 20 ms
"""
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Constants (Kaldi defaults at 16 kHz; the paper's Sec. 3.3 settings)

SAMPLE_RATE = 16_000      # Hz
WAVE_SCALE = 32768.0      # 2^15: Kaldi reads 16-bit integer samples, we get floats in [-1, 1]
WIN_LENGTH = 400          # samples, 25 ms
HOP_LENGTH = 160          # samples, 10 ms
N_FFT = 512               # samples: the window zero-padded to the next power of two
PREEMPHASIS = 0.97        # x[t] - 0.97 x[t-1] inside each frame
LOW_FREQ = 20.0           # Hz, lowest mel bin edge (Kaldi --low-freq)
HIGH_FREQ = SAMPLE_RATE / 2  # Hz, highest mel bin edge (Kaldi --high-freq 0 = Nyquist)
N_MELS = 80               # mel bins
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi floors energies at float epsilon before log
SUB_KERNEL, SUB_STRIDE = 5, 2  # subsampler Conv1d: 10 ms frames -> 20 ms frames
FREQ_MASKS, FREQ_MASK_WIDTH = 2, 30  # SpecAugment: masks and max width in mel bins (paper)
TIME_MASKS, TIME_MASK_WIDTH = 2, 40  # SpecAugment: masks and max width in 10 ms frames (paper)
SPECAUGMENT_HELP = (f"Fbank students only: SpecAugment on the fbank features in training (the authors' "
                    f"{FREQ_MASKS} frequency masks <= {FREQ_MASK_WIDTH} bins, {TIME_MASKS} time masks <= "
                    f"{TIME_MASK_WIDTH} frames of 10 ms)")  # the --specaugment flag of distill.py and finetune.py


def num_fbank_frames(lengths):
    """Samples -> 10 ms frames with snip_edges: 1 + (S - 400) // 160, and 0 below 400 samples."""
    return torch.where(lengths >= WIN_LENGTH, 1 + (lengths - WIN_LENGTH).clamp(min=0) // HOP_LENGTH,
                       torch.zeros_like(lengths))


def num_subsampled_frames(fbank_frames):
    """10 ms frames -> 20 ms frames of the subsampler (kernel 5, stride 2, padding 2): ceil(n / 2)."""
    return (fbank_frames + 1) // 2


# ----------------------------------------------------------------------------------------------
# Kaldi filterbank, batched


def mel_scale(freq):
    """Hz -> mel, Kaldi's (HTK) formula."""
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(n_mels=N_MELS, n_fft=N_FFT, sample_rate=SAMPLE_RATE, low=LOW_FREQ, high=HIGH_FREQ):
    """Triangular filters equally spaced on the mel scale, [n_mels, n_fft // 2 + 1].

    Kaldi's MelBanks: n_mels + 2 equally spaced mel points; filter i rises from point i to
    point i + 1 and falls to point i + 2, evaluated at each FFT bin's mel frequency. The
    Nyquist bin gets weight 0 (Kaldi ignores it). Same values as
    torchaudio.compliance.kaldi.get_mel_banks (tested).
    """
    mel_low, mel_high = mel_scale(torch.tensor(low, dtype=torch.float64)), \
        mel_scale(torch.tensor(high, dtype=torch.float64))
    points = mel_low + (mel_high - mel_low) / (n_mels + 1) * torch.arange(n_mels + 2, dtype=torch.float64)
    left, centre, right = points[:-2, None], points[1:-1, None], points[2:, None]  # (n_mels, 1)
    bin_mel = mel_scale(torch.arange(n_fft // 2, dtype=torch.float64) * sample_rate / n_fft)[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = torch.minimum(up, down).clamp(min=0.0)               # (n_mels, n_fft // 2)
    return F.pad(banks, (0, 1)).float()                          # + Nyquist bin with weight 0


def povey_window(length=WIN_LENGTH):
    """Kaldi's default window: a symmetric Hann window to the power 0.85 (zero at both ends)."""
    return torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85).float()


def kaldi_fbank(waves, lengths=None, mel_banks=None, window=None):
    """Log-mel filterbank of a padded batch: (waves [B, S] in [-1, 1], lengths [B]) ->
    (fbank [B, T, n_mels], frames [B]); padded frames hold zeros.

    Frame t of an utterance only reads samples [160 t, 160 t + 400) of that utterance and
    only frames that fit entirely inside its real samples are counted (snip_edges), so
    padding a batch never changes a real frame.
    """
    B, S = waves.shape
    if lengths is None:
        lengths = torch.full((B,), S, dtype=torch.long, device=waves.device)
    frames = num_fbank_frames(lengths.to(waves.device))
    if mel_banks is None:
        mel_banks = kaldi_mel_banks().to(waves.device)
    if window is None:
        window = povey_window().to(waves.device)
    if S < WIN_LENGTH:
        return waves.new_zeros(B, 0, mel_banks.shape[0]), frames
    # Logs of tiny energies must not go through fp16/bf16 autocast: compute in fp32 always.
    with torch.autocast(device_type=waves.device.type, enabled=False):
        x = waves.float() * WAVE_SCALE
        x = x.unfold(1, WIN_LENGTH, HOP_LENGTH)                     # (B, T, 400), a view
        x = x - x.mean(dim=-1, keepdim=True)                         # remove DC offset per frame
        # Pre-emphasis inside each frame; the first sample is its own predecessor (Kaldi).
        prev = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
        x = (x - PREEMPHASIS * prev) * window
        power = torch.fft.rfft(x, n=N_FFT).abs().pow(2)              # (B, T, 257)
        fbank = (power @ mel_banks.t()).clamp(min=LOG_FLOOR).log()   # (B, T, n_mels)
    pad = torch.arange(fbank.shape[1], device=waves.device)[None, :] >= frames[:, None]
    return fbank.masked_fill(pad[..., None], 0.0), frames


# ----------------------------------------------------------------------------------------------
# Global CMVN statistics


def compute_cmvn(items, n_mels=N_MELS):
    """Global mean and std [n_mels] of the log-mel features over all real frames.

    items: an iterable of waveforms (1-D tensors or arrays at 16 kHz). Sums are kept in float64 so that
    hundreds of hours of frames do not lose precision.
    """
    banks, window = kaldi_mel_banks(n_mels=n_mels), povey_window()
    total = torch.zeros(n_mels, dtype=torch.float64)
    total_sq = torch.zeros(n_mels, dtype=torch.float64)
    count = 0
    for item in items:
        wave = torch.as_tensor(item, dtype=torch.float32).reshape(1, -1)
        fb, frames = kaldi_fbank(wave, mel_banks=banks, window=window)
        fb = fb[0, : int(frames[0])].double()
        total += fb.sum(0)
        total_sq += (fb ** 2).sum(0)
        count += fb.shape[0]
    if count == 0:
        raise ValueError("compute_cmvn: no frames (every utterance is shorter than 25 ms, or none given)")
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp(min=0.0).sqrt()
    return mean.float(), std.float()


# ----------------------------------------------------------------------------------------------
# SpecAugment


def spec_augment(x, frames, generator=None):
    """Zero 2 frequency bands (width <= 30 bins) and 2 time spans (width <= 40 frames) per
    utterance, inside its real frames; x [B, T, n_mels] (already normalised: 0 = the mean)."""
    B, T, C = x.shape
    dev = x.device

    def band_mask(count, max_width, size, limit):  # (B, size) True inside any of `count` bands
        width = torch.randint(0, max_width + 1, (B, count), generator=generator).to(dev)
        room = (limit[:, None] - width).clamp(min=0)                       # (B, count)
        start = (torch.rand(B, count, generator=generator).to(dev) * (room + 1)).long()
        pos = torch.arange(size, device=dev)[None, None, :]
        return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(1)

    freq = band_mask(FREQ_MASKS, FREQ_MASK_WIDTH, C, torch.full((B,), C, device=dev))
    time = band_mask(TIME_MASKS, TIME_MASK_WIDTH, T, frames.to(dev))
    return x.masked_fill(freq[:, None, :] | time[:, :, None], 0.0)


# ----------------------------------------------------------------------------------------------
# The front-end module


class FbankFrontend(nn.Module):
    """Fbank + CMVN (+ SpecAugment) + Conv1d/GLU subsampler + Linear: a drop-in replacement for
    torchaudio's FeatureExtractor *and* the feature projection (the Encoder sets that to
    Identity). Parameters: 80*2D*5 + 2D + D*D + D (615,840 for D=480). As in the authors'
    FbankExtractor: the Linear starts xavier-normal with zero bias (the conv: PyTorch's default,
    as fairseq's Conv1dSubsampler), and SpecAugment, when on, masks only in training mode."""

    def __init__(self, dim, n_mels=N_MELS, specaugment=False, dropout=0.1):
        super().__init__()
        self.n_mels = n_mels
        self.specaugment = specaugment
        self.conv = nn.Conv1d(n_mels, 2 * dim, SUB_KERNEL, stride=SUB_STRIDE, padding=SUB_KERNEL // 2)
        self.proj = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.proj.weight)  # the authors' FbankExtractor.linear
        nn.init.zeros_(self.proj.bias)
        self.dropout = nn.Dropout(dropout)
        # Buffers, not parameters: they go into state_dict (the checkpoint) but never train.
        self.register_buffer("cmvn_mean", torch.zeros(n_mels))
        self.register_buffer("cmvn_std", torch.ones(n_mels))
        self.register_buffer("mel_banks", kaldi_mel_banks(n_mels=n_mels), persistent=False)
        self.register_buffer("window", povey_window(), persistent=False)

    def set_cmvn(self, mean, std):
        """Store global statistics (from compute_cmvn); std floored at 1e-5."""
        self.cmvn_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.cmvn_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-5))

    def fbank(self, waves, lengths=None):
        """(waves [B, S], lengths [B]) -> normalised fbank [B, T10, n_mels] (padding 0), frames [B]."""
        fb, frames = kaldi_fbank(waves, lengths, self.mel_banks, self.window)
        fb = (fb - self.cmvn_mean) / self.cmvn_std
        if self.specaugment and self.training:
            fb = spec_augment(fb, frames)
        # Zero padded frames *after* CMVN: the conv's right edge then sees the same zeros in a
        # padded batch as a single utterance sees from the conv's own zero padding.
        pad = torch.arange(fb.shape[1], device=fb.device)[None, :] >= frames[:, None]
        return fb.masked_fill(pad[..., None], 0.0), frames

    def forward(self, waves, lengths=None):
        """(waves [B, S], lengths [B] or None) -> (features [B, T, D], frame_lengths [B]); 20 ms frames."""
        fb, frames = self.fbank(waves, lengths)
        x = F.glu(self.conv(fb.transpose(1, 2)), dim=1)            # (B, D, T20)
        x = self.dropout(self.proj(x.transpose(1, 2)))             # (B, T20, D)
        out_frames = num_subsampled_frames(frames)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= out_frames[:, None]
        return x.masked_fill(pad[..., None], 0.0), out_frames
