"""Frozen work done once: the teacher's hidden states and a frozen front-end's output, per utterance.

Distillation reads the same frozen teacher on the same audio every epoch, and fine-tuning (and
distillation with a frozen CNN, the authors' feature_grad_mult 0) runs the same frozen CNN on the
same utterances every epoch. Both caches compute that work once per utterance and read it back:

- TeacherCache (distill.py --teacher-cache): the teacher's hidden states of every training
  utterance, in a file (fp16, memory-mapped), shared by every student distilled from the same
  teacher on the same data;
- FrontendCache (distill.py and finetune.py --cache-frontend): a frozen CNN's output, in memory.

Each utterance is computed alone, without padding: with HuBERT Base's GroupNorm CNN its states
differ a little from those in a padded batch (README, "Padding and GroupNorm"), the same for every
epoch. Only CNN front-ends are cached: the Fbank front-end's dropout and SpecAugment differ every step.

    cache = FrontendCache(student)                     # a CNN student whose CNN stays frozen
    features = cache(batch["ids"], waves, lengths)     # (features [B, T, C], frame_lengths [B])
    hidden, frame_lengths = student(waves, lengths, features=features)
"""
import contextlib
import hashlib
import os
import shutil
import time

import torch
from torch import nn

import checkpoints
import data

# ----------------------------------------------------------------------------------------------
# A frozen front-end's output, in memory


class FrontendCache:
    """A frozen CNN front-end's output for each utterance it is given, computed on first use."""

    def __init__(self, encoder):
        if encoder.config.frontend != "cnn":
            raise ValueError("--cache-frontend: only CNN front-ends (the Fbank front-end has dropout/SpecAugment)")
        self.encoder, self.store = encoder, {}

    @torch.no_grad()
    def __call__(self, ids, waves, lengths):
        """The batch's front-end output (features [B, T, C], frame_lengths [B]), zero-padded, on waves' device."""
        for uid, wave, n in zip(ids, waves, lengths.tolist()):
            if uid not in self.store:
                feats, _ = self.encoder.frontend(wave[None, :n], torch.tensor([n], device=waves.device))
                self.store[uid] = feats[0].float()  # (T, C)
        feats = [self.store[uid] for uid in ids]
        frame_lengths = torch.tensor([len(f) for f in feats], device=waves.device)
        return nn.utils.rnn.pad_sequence(feats, batch_first=True), frame_lengths


# ----------------------------------------------------------------------------------------------
# The teacher's hidden states, in a file


class TeacherCache:
    """The frozen teacher's hidden states of every training utterance, computed once and kept in a
    file, so that each distillation step (and each student distilled from the same teacher on the
    same data) skips the teacher's forward pass. Stored in fp16, read memory-mapped (runs side by
    side share the pages), returned in fp32. The file holds a fingerprint of the teacher's weights
    and every utterance's id and length: one made for another teacher or other audio is refused."""

    FORMAT = "hubert-distill/teacher-cache/1"

    def __init__(self, path, teacher, utterances, device, quiet=False):
        fingerprint = weights_fingerprint(teacher)
        with file_lock(path, quiet):  # the first run to name the file makes it; others wait, then read
            if not os.path.exists(path):
                check_room(path, teacher.config, utterances)
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


def cache_bytes(config, utterances):
    """About the bytes of a teacher cache: fp16 states of every layer and its input (L + 1 x D) for
    each 20 ms frame (HuBERT's CNN stride: 320 samples): 2 x 13 x 768 x 180,000 frames = 3.6 GB an
    hour for HuBERT Base, 3.4 TB for LibriSpeech's 960 h."""
    frames = sum(u.num_samples // 320 for u in utterances)
    return 2 * (config.layers + 1) * config.dim * frames


def check_room(path, config, utterances):
    """Refuse, before any work, a cache that would not fit on its disk, or in memory (it is put
    together in memory, then written)."""
    need, hours = cache_bytes(config, utterances), sum(u.num_samples for u in utterances) / data.SAMPLE_RATE / 3600
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") \
        if "SC_AVPHYS_PAGES" in getattr(os, "sysconf_names", {}) else None  # Linux; not macOS, Windows
    for room, where in ((free, "free on its disk"), (memory, "of free memory, where it is put together")):
        if room is not None and need > room:
            raise ValueError(f"--teacher-cache {path} needs ~{need / 1e9:.1f} GB ({hours:.1f} h of audio x "
                             f"{config.layers + 1} layers x {config.dim} x fp16), {room / 1e9:.1f} GB {where}; "
                             f"run without it (the teacher then runs every step) or on less audio")
    return need


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
