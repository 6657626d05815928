"""Audio and text in: corpora, the character vocabulary, length-bucketed batches, a toy corpus.

    utterances = load_corpus(["data/toy/train"])     # LibriSpeech folders or fairseq .tsv files
    loader, sampler = make_loader(utterances, batch_seconds=80, shuffle=True, seed=0)
    batch = next(iter(loader))  # waves [B, S] zero-padded, lengths [B], targets [B, L] (-100 pad)

Audio is 16 kHz mono float32 (HuBERT's input). Text uses the character vocabulary of
facebook/hubert-large-ls960-ft (fairseq's letter dictionary, "|" between words, "<pad>" as the
CTC blank). Batching follows fairseq: sort by length, cut batches of a fixed *padded* size.
The toy corpus is English synthesized offline by eSpeak NG voices (espeak_ng.py), in LibriSpeech
layout:

    python data.py synth --out data/toy --hours 2
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset, Sampler

from espeak_ng import Espeak

# ----------------------------------------------------------------------------------------------
# Constants

SAMPLE_RATE = 16_000  # Hz, what every HuBERT checkpoint expects
MIN_SAMPLES = 400  # 25 ms: HuBERT's CNN receptive field and one fbank window; shorter audio has no frame
AUDIO_SUFFIXES = (".flac", ".wav")  # audio files read_librispeech looks for
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D",
         "L", "U", "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]
BLANK = 0  # "<pad>" is the CTC blank, as in fairseq and transformers
WORD_SEP = "|"  # stands for the space between words
TARGET_PAD = -100  # padding value of CTC targets (PyTorch's ignore_index convention)
# What stops a run at its next step (runtime.GracefulStop); SIGBREAK: Windows' Ctrl-Break
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ())
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB) if len(c) == 1 and c != WORD_SEP}

# ----------------------------------------------------------------------------------------------
# Text <-> ids


def normalize_text(text):
    """Upper-case and collapse whitespace: "  it's  ok " -> "IT'S OK"."""
    return " ".join(text.upper().split())


def encode(text):
    """Characters to ids, "|" between words: "HI YOU" -> ids of H I | Y O U."""
    ids = []
    for c in normalize_text(text):
        if c == " ":
            ids.append(VOCAB.index(WORD_SEP))
        elif c in _CHAR_TO_ID:
            ids.append(_CHAR_TO_ID[c])
        else:
            raise ValueError(f"character {c!r} in {text!r} is not in the vocabulary "
                             "(letters A-Z, apostrophe, space); normalise the transcript first")
    return ids


def decode(ids):
    """Inverse of encode: "|" -> space, specials dropped, spaces collapsed; no CTC collapsing."""
    chars = [VOCAB[int(i)] for i in ids]
    text = "".join(" " if c == WORD_SEP else c for c in chars if len(c) == 1)
    return " ".join(text.split())

# ----------------------------------------------------------------------------------------------
# Corpora: LibriSpeech folders and fairseq manifests


@dataclass
class Utterance:
    id: str               # e.g. "103-1240-0000"
    path: str             # audio file
    num_samples: int      # length in samples at 16 kHz, after any resampling by load_audio
    text: str = None      # upper-case transcript, None for unlabelled audio
    text_source: str = None  # "FILE:LINE" the transcript came from, for error messages


def first_few(names, n=3):
    """"a, b, c, ..." for an error message: the first n names, "..." when there are more."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def read_librispeech(root):
    """Every .flac/.wav under root (recursive, sorted by path), texts from the *.trans.txt files.

    A trans.txt line is "ID TRANSCRIPT" for the audio file ID.flac in the same folder; audio
    without a transcript line gets text None (fine for distillation, which needs no labels).
    """
    root = Path(root)
    texts = {}  # id -> (text, "FILE:LINE")
    for trans in sorted(root.rglob("*.trans.txt")):
        for number, line in enumerate(trans.read_text().splitlines(), 1):
            if line.strip():
                utt_id, _, text = line.strip().partition(" ")
                texts[utt_id] = (normalize_text(text), f"{trans}:{number}")
    utterances, unreadable = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            info = sf.info(path)  # header only; the length load_audio returns (resample rounds up)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            unreadable.append(f"{path} ({e})")
            continue
        num_samples = math.ceil(info.frames * SAMPLE_RATE / info.samplerate)
        utterances.append(Utterance(path.stem, str(path), num_samples, *texts.get(path.stem, (None, None))))
    if unreadable:  # stop before any work rather than fail in the middle of training
        raise ValueError(f"{len(unreadable)} unreadable audio file(s): {first_few(unreadable)}; "
                         "delete or re-encode them (FLAC or WAV)")
    return utterances


def read_manifest(tsv):
    """A fairseq manifest: first line the audio root, then "relative_path<TAB>num_samples".

    num_samples is taken as written (fairseq manifests of LibriSpeech are at 16 kHz). Labels
    come from the same-stem .wrd (one transcript a line) or .ltr ("H I | Y O U |") file.
    """
    tsv = Path(tsv)
    lines = tsv.read_text().splitlines()
    root = Path(lines[0].strip())
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    texts, sources = [None] * len(rows), [None] * len(rows)
    for suffix in (".wrd", ".ltr"):
        label_file = tsv.with_suffix(suffix)
        if label_file.exists():
            labels = label_file.read_text().splitlines()
            if len(labels) != len(rows):
                raise ValueError(f"{label_file}: {len(labels)} lines but {tsv} lists {len(rows)} "
                                 "files; regenerate the labels from the same manifest")
            if suffix == ".ltr":  # "H I | Y O U |" -> "HI YOU"
                labels = [line.replace(" ", "").replace(WORD_SEP, " ") for line in labels]
            texts = [normalize_text(t) for t in labels]
            sources = [f"{label_file}:{number}" for number in range(1, len(labels) + 1)]
            break
    missing = [str(root / rel) for rel, *_ in rows if not (root / rel).is_file()]  # headers: too slow here
    if missing:
        raise ValueError(f"{tsv}: {len(missing)} listed audio file(s) missing: {first_few(missing)}; "
                         "fix the root on its first line or the paths")
    return [Utterance(Path(rel).stem, str(root / rel), int(n), text, source)
            for (rel, n, *_), text, source in zip(rows, texts, sources)]


# Libri-light's limited-resource sets (librispeech_finetuning/: 1h/{0..5}/{clean,other}, 9h/{clean,other}) by
# the names of the low-resource results: 10 h is 9h plus 1h; 10 min is 1h/0, the first of 1h's six parts.
LIBRILIGHT_SPLITS = {"10h": ("9h", "1h"), "1h": ("1h",), "10min": ("1h/0",)}


def load_corpus(paths):
    """Utterances of corpora: LibriSpeech-layout folders, fairseq .tsv files, Libri-light splits (ROOT/10min)."""
    hint = ("pass a LibriSpeech-style folder (SPEAKER/CHAPTER/*.flac + *.trans.txt) or a fairseq "
            ".tsv manifest, e.g. make one with `python data.py synth --out data/toy`")
    utterances = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        if os.path.isfile(os.path.join(path, "synth.json")):  # the toy root holds all splits
            raise ValueError(f"{path}: a whole toy corpus; pass one split, e.g. {path}/train")
        root, name = os.path.split(os.path.normpath(path))
        if name in LIBRILIGHT_SPLITS and all(os.path.isdir(os.path.join(root, d)) for d in ("1h", "9h")):
            found = [u for d in LIBRILIGHT_SPLITS[name] for u in read_librispeech(os.path.join(root, d))]
        elif os.path.isdir(path):
            found = read_librispeech(path)
        elif os.path.isfile(path) and str(path).endswith(".tsv"):
            found = read_manifest(path)
        elif os.path.exists(path):
            raise ValueError(f"{path}: neither a folder nor a .tsv manifest; {hint}")
        else:
            raise ValueError(f"{path}: no such file or folder; {hint}")
        if not found:
            raise ValueError(f"{path}: holds no audio (.flac/.wav); {hint}")
        utterances += found
    return utterances


def drop_short(utterances, quiet=False):
    """Leave out utterances shorter than MIN_SAMPLES (they give no frame), naming them."""
    kept = [u for u in utterances if u.num_samples >= MIN_SAMPLES]
    short = [u.path for u in utterances if u.num_samples < MIN_SAMPLES]
    if not kept:
        raise ValueError(f"every utterance is shorter than {MIN_SAMPLES} samples (25 ms); nothing to use")
    if short and not quiet:
        print(f"warning: leaving out {len(short)} of {len(utterances)} utterances shorter than 25 ms "
              f"(no CNN/fbank frame): {first_few(short, 5)}",
              file=sys.stderr, flush=True)
    return kept


class AudioError(ValueError):
    """An audio file that cannot be decoded; the message names the file and the fix. A DataLoader
    worker re-raises it with its traceback in front: the last line is the message."""


def load_audio(path):
    """Any audio file soundfile reads -> float32 [S] at 16 kHz mono (channels averaged). Headers are
    checked when a corpus is read; broken data (truncated, NaN) raises AudioError here."""
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)  # (S, channels)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: cannot read audio ({e}); delete or re-encode it (FLAC or WAV)") from None
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples; delete or re-encode it")
    wave = torch.from_numpy(wave).mean(dim=1)
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, rate, SAMPLE_RATE)
    return wave

# ----------------------------------------------------------------------------------------------
# Batching: dataset, length-bucketed batch sampler, collate


class AudioDataset(Dataset):
    def __init__(self, utterances):
        self.utterances = list(utterances)

    def __len__(self):
        return len(self.utterances)

    def __getitem__(self, i):
        u = self.utterances[i]
        return {"id": u.id, "wave": load_audio(u.path), "text": u.text}


class BucketBatchSampler(Sampler):
    """Batches of similar length whose padded size (longest x count) fits a budget.

    Example: lengths [1, 2, 2, 3, 9] s with batch_seconds=6 give [[0, 1, 2], [3], [4]]
    ([0, 1, 2, 3] would pad to 4 x 3 s = 12 s; 9 s alone exceeds the budget: its own batch).
    Batches are fixed once; their order is drawn per epoch from (seed, epoch), the same on
    every rank and every resumed run, then dealt round-robin to the ranks, repeating batches
    from the start so that all ranks take the same number of steps (DDP needs that).
    """

    def __init__(self, num_samples, batch_seconds, shuffle=True, seed=0, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        budget = batch_seconds * SAMPLE_RATE  # padded samples per batch
        order = sorted(range(len(num_samples)), key=lambda i: (num_samples[i], i))
        self.batches, batch = [], []
        for i in order:  # ascending, so utterance i is the longest of the batch it joins
            if batch and num_samples[i] * (len(batch) + 1) > budget:
                self.batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            self.batches.append(batch)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        """Select the epoch's order; skip = batches this rank already consumed (exact resume)."""
        self.epoch, self.skip = epoch, skip

    def _rank_batches(self):
        n = len(self.batches)
        order = list(range(n))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n).tolist()
        per_rank = math.ceil(n / self.world_size)
        order = (order * self.world_size)[:per_rank * self.world_size]  # pad by repeating
        return [self.batches[b] for b in order[self.rank::self.world_size]]

    def __iter__(self):
        yield from self._rank_batches()[self.skip:]

    def __len__(self):
        return max(0, math.ceil(len(self.batches) / self.world_size) - self.skip)


def collate(items):
    """List of AudioDataset items -> one zero-padded batch with lengths (and CTC targets)."""
    lengths = torch.tensor([len(x["wave"]) for x in items], dtype=torch.long)
    waves = torch.zeros(len(items), int(lengths.max()))  # (B, S_max)
    for b, x in enumerate(items):
        waves[b, :len(x["wave"])] = x["wave"]
    batch = {"waves": waves, "lengths": lengths,
             "ids": [x["id"] for x in items], "texts": [x["text"] for x in items]}
    if all(t is not None for t in batch["texts"]):
        ids = [torch.tensor(encode(t), dtype=torch.long) for t in batch["texts"]]
        batch["targets"] = torch.nn.utils.rnn.pad_sequence(
            ids, batch_first=True, padding_value=TARGET_PAD)  # (B, L_max)
        batch["target_lengths"] = torch.tensor([len(t) for t in ids], dtype=torch.long)
    return batch


def ignore_stop_signals(worker_id):
    """DataLoader workers ignore Ctrl-C and SIGTERM: the main process ends its step, saves, stops them."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def make_loader(utterances, batch_seconds, shuffle, seed, rank=0, world_size=1, num_workers=0):
    """DataLoader over length-bucketed batches, and its sampler (call sampler.set_epoch)."""
    sampler = BucketBatchSampler([u.num_samples for u in utterances], batch_seconds,
                                 shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    # Its own generator: each new epoch iterator draws a worker seed, which must not advance the
    # global RNG (dropout, masks), or a resumed run would drift from an uninterrupted one.
    loader = DataLoader(AudioDataset(utterances), batch_sampler=sampler, collate_fn=collate,
                        num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                        worker_init_fn=ignore_stop_signals if num_workers else None)
    return loader, sampler

# ----------------------------------------------------------------------------------------------
# Toy corpus: sentences from templates, spoken by eSpeak NG voices

SYNTH_VERSION = 1  # bump when the synthesis changes, so old corpora are not taken as current
SPLIT_SHARES = {"train": 0.8, "dev": 0.1, "test": 0.1}  # of --hours
MIN_UTTERANCES = 5  # per split, so that a tiny --hours still gives a usable dev and test set
MIN_SECONDS, MAX_SECONDS = 2.2, 5.6  # planned utterance duration; real ones fall in ~2-6 s
# characters (with space) per "word" of eSpeak's words-per-minute rate, measured on its output
# (results/NOTES.md, eSpeak speaking rate)
CHARS_PER_WORD = 6.6
PEAK = 0.5  # peak amplitude after normalisation, -6 dBFS
PROGRESS_EVERY = 250  # utterances between progress lines

# Speakers are (accent, voice variant, pitch, intonation, rate). All splits share the four
# accents; the voice variants (timbre, formants) are held out, so dev and test speakers are
# unseen in train, as in LibriSpeech. Variant files live in espeak-ng-data/voices/!v.
ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-us-nyc"]  # "en" is British English
SPLIT_VARIANTS = {"train": ["m1", "m2", "m4", "m5", "m7", "f1", "f2", "f4"],
                  "dev": ["m3", "f3"], "test": ["m6", "f5"]}
PITCH_RANGE = (30, 70)  # eSpeak base pitch, 0-100 (default 50)
INTONATION_RANGE = (30, 80)  # eSpeak pitch range, 0-100 (default 50); 0 = monotone
RATE_RANGE = (140, 200)  # words per minute (eSpeak default 175)

WORDS = {
    "adj": "BIG SMALL OLD YOUNG RED GREEN BLUE BLACK WHITE YELLOW BROWN HAPPY SAD QUIET LOUD FAST SLOW WARM COLD "
           "DARK BRIGHT HEAVY LIGHT SOFT HARD CLEAN DIRTY EMPTY FULL TALL SHORT LONG STRONG WEAK RICH POOR NEW FRESH "
           "SWEET BITTER STRANGE FAMOUS GENTLE CLEVER BRAVE LAZY BUSY TINY HUGE ROUND SHARP WILD CALM PROUD KIND "
           "FRIENDLY HUNGRY TIRED GOLDEN",
    "noun": "DOG CAT HORSE BIRD FISH COW SHEEP FOX RABBIT MOUSE LION TIGER BEAR WOLF DUCK GOOSE BOY GIRL MAN WOMAN "
            "CHILD FARMER DOCTOR TEACHER SAILOR KING QUEEN BAKER DRIVER WRITER PAINTER NEIGHBOR BOOK LETTER TABLE "
            "CHAIR WINDOW DOOR HOUSE GARDEN TREE FLOWER STONE RIVER MOUNTAIN SHIP BOAT TRAIN CAR WAGON BASKET BOX "
            "BOTTLE CUP PLATE KNIFE SPOON LAMP CANDLE CLOCK BELL HAT COAT SHOE GLOVE RING KEY BREAD APPLE ORANGE "
            "CHEESE CAKE SOUP MILK WATER MAP PICTURE SONG STORY DREAM IDEA GIFT BALL KITE DRUM PIANO",
    "verb": "SAW FOUND TOOK BROUGHT CARRIED PAINTED OPENED CLOSED WASHED CLEANED BOUGHT SOLD BUILT BROKE FIXED MOVED "
            "PUSHED PULLED DROPPED CAUGHT THREW KICKED HELD LIFTED WATCHED FOLLOWED CHASED HELPED CALLED VISITED MET "
            "KNEW LIKED LOVED WANTED NEEDED FORGOT REMEMBERED HID STOLE GAVE SENT WROTE DREW COOKED ATE TOUCHED "
            "COUNTED FILLED COVERED",
    "adv": "QUICKLY SLOWLY QUIETLY LOUDLY CAREFULLY SUDDENLY GENTLY HAPPILY SADLY PROUDLY EASILY NEARLY ALMOST "
           "ALWAYS NEVER OFTEN SOMETIMES RARELY FINALLY SECRETLY",
    "place": "KITCHEN MARKET STATION VILLAGE CITY FOREST FIELD BEACH HARBOR CHURCH SCHOOL LIBRARY HOSPITAL PARK "
             "ISLAND VALLEY HILL FARM CASTLE CELLAR ATTIC OFFICE SHOP BAKERY STREET",
    "name": "ANNA JOHN MARY PETER LUCY JAMES EMMA HENRY ALICE GEORGE SARAH THOMAS MARTHA DAVID ROSE WILLIAM CLARA "
            "ARTHUR HELEN FRANK GRACE OLIVER EDITH SAMUEL",
    "prep": "IN NEAR BEHIND UNDER ABOVE BESIDE INSIDE OUTSIDE ACROSS AROUND",
    "conj": "AND BUT BECAUSE SO WHILE THEN",
}
TEMPLATES = [
    "THE {adj} {noun} {verb} THE {noun}",
    "{name} {verb} A {adj} {noun} {prep} THE {place}",
    "THE {noun} {prep} THE {place} WAS {adv} {adj}",
    "{name} {adv} {verb} THE {noun} AND THE {noun}",
    "I DON'T THINK THE {noun} {verb} {name}'S {noun}",
    "{name}'S {adj} {noun} {verb} THE {adj} {noun}",
    "IT'S A {adj} {noun} SAID {name}",
    "WE {verb} THE {noun} {prep} THE {adj} {place}",
    "WHO {verb} THE {adj} {noun} {prep} THE {place}",
    "THEY {adv} {verb} THE {noun} BEFORE THE {noun} {verb} IT",
]


def make_sentence(rng):
    """One or two template clauses with random words, e.g. "THE TALL FOX SAW AN OLD BOAT"."""
    def clause():
        return re.sub(r"\{(\w+)\}", lambda m: rng.choice(WORDS[m.group(1)].split()),
                      rng.choice(TEMPLATES))
    text = clause()
    if rng.random() < 0.5:
        text += " " + rng.choice(WORDS["conj"].split()) + " " + clause()
    return re.sub(r"\bA (?=[AEIOU])", "AN ", text)


def make_speakers(split, seed):
    """[(speaker_id, voice, pitch, intonation, rate)] of a split; ids 100+ train, 200+ dev, ..."""
    rng = random.Random(f"{seed}/{split}/speakers")
    first_id = 100 * (1 + list(SPLIT_SHARES).index(split))
    voices = [f"{a}+{v}" for v in SPLIT_VARIANTS[split] for a in ACCENTS]
    return [(str(first_id + k), voice, rng.randint(*PITCH_RANGE), rng.randint(*INTONATION_RANGE),
             rng.randint(*RATE_RANGE)) for k, voice in enumerate(voices)]


def planned_seconds(text, rate):
    """Seconds eSpeak takes to say text at rate (words per minute), estimated from its length."""
    return len(text) * 60 / (rate * CHARS_PER_WORD)


def synth_split(out, split, seconds, seed):
    """Write about `seconds` of speech (at least MIN_UTTERANCES) into out/split; returns counts.

    Sentences are chosen and counted by their planned duration, not the synthesized one: eSpeak
    keeps state from one utterance to the next (phase, gain), so audio durations vary by a few
    ms with what was synthesized before, and the transcripts must not depend on that.
    """
    espeak, rng = Espeak.get(), random.Random(f"{seed}/{split}/sentences")
    # Kernel computed once: functional.resample recomputes it on every call
    # (results/NOTES.md, Toy corpus synthesis speed).
    resample = torchaudio.transforms.Resample(espeak.sample_rate, SAMPLE_RATE)
    speakers = make_speakers(split, seed)
    transcripts = {}  # chapter folder -> lines of its trans.txt
    planned, total, count, start = 0.0, 0.0, 0, time.time()
    while planned < seconds or count < MIN_UTTERANCES:
        spk, voice, pitch, intonation, rate = speakers[count % len(speakers)]
        text = make_sentence(rng)
        while not MIN_SECONDS <= planned_seconds(text, rate) <= MAX_SECONDS:
            text = make_sentence(rng)
        espeak.set_voice(voice, pitch, intonation, rate)
        wave = resample(torch.from_numpy(espeak.synth(text, noise_seed=rng.randrange(2**31))))
        wave = wave * (PEAK / wave.abs().max().clamp(min=1e-6))
        chapter = spk + "0"
        folder = out / split / spk / chapter
        folder.mkdir(parents=True, exist_ok=True)
        utt_id = f"{spk}-{chapter}-{count // len(speakers):04d}"
        sf.write(folder / f"{utt_id}.flac", wave.numpy(), SAMPLE_RATE, subtype="PCM_16")
        transcripts.setdefault(folder, []).append(f"{utt_id} {text}")
        planned, total = planned + planned_seconds(text, rate), total + len(wave) / SAMPLE_RATE
        count += 1
        if count % PROGRESS_EVERY == 0:
            print(f"{split}: {count} utterances, {total / 3600:.2f} of {seconds / 3600:.2f} h, "
                  f"{total / (time.time() - start):.0f} s of audio per s", flush=True)
    for folder, lines in transcripts.items():
        trans = folder / f"{folder.parent.name}-{folder.name}.trans.txt"
        trans.write_text("\n".join(lines) + "\n")
    return {"utterances": count, "hours": round(total / 3600, 4), "speakers": len(speakers)}


def synth_corpus(out, hours, seed):
    """The toy corpus in out/{train,dev,test}; does nothing if out already holds the same one.

    Writes into out.partial and renames it at the end, so an interrupted run never leaves a
    half corpus that looks complete; synth.json records the arguments.
    """
    out = Path(out)
    wanted = {"version": SYNTH_VERSION, "hours": hours, "seed": seed}
    if (out / "synth.json").exists():
        done = json.loads((out / "synth.json").read_text())
        if {k: done.get(k) for k in wanted} == wanted:
            print(f"{out}: already there (hours {hours}, seed {seed})")
            return done
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty, and no toy corpus of --hours {hours} --seed {seed}; "
                         "delete it or pass another --out")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():  # our own leftover from an interrupted run
        shutil.rmtree(partial)
    start, threads = time.time(), torch.get_num_threads()
    # Tiny tensors: more threads slow resampling down (results/NOTES.md, Toy corpus synthesis speed).
    torch.set_num_threads(1)
    try:
        summary = dict(wanted, splits={})
        for split, share in SPLIT_SHARES.items():
            summary["splits"][split] = synth_split(partial, split, hours * 3600 * share, seed)
    finally:
        torch.set_num_threads(threads)
    (partial / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)
    for split, s in summary["splits"].items():
        print(f"{split:5s}: {s['utterances']:5d} utterances, {s['hours']:.3f} h, {s['speakers']} speakers")
    audio, took = 3600 * sum(s["hours"] for s in summary["splits"].values()), time.time() - start
    print(f"wrote {out} in {took:.1f} s ({audio / took:.0f} s of audio per s)")
    return summary

# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    example = "example: " + __doc__.strip().split("\n")[-1].strip()  # the docstring's last line
    fmt, about = argparse.ArgumentDefaultsHelpFormatter, "synthesize the toy corpus with eSpeak NG, in LibriSpeech layout"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=example, formatter_class=fmt)
    synth = parser.add_subparsers(dest="command", required=True).add_parser(
        "synth", help=about, description=about, epilog=example, formatter_class=fmt)
    synth.add_argument("--out", required=True, default=argparse.SUPPRESS,  # required: no default to show
                       help="output folder (missing or empty); the drivers take its train, dev and test subfolders")
    synth.add_argument("--hours", type=float, default=2.0, help="total hours of speech, split 80/10/10 into "
                       "train/dev/test")
    synth.add_argument("--seed", type=int, default=0, help="seed of sentences and speakers")
    return parser.parse_args(argv)


def main(args):
    if args.command == "synth":
        synth_corpus(args.out, args.hours, args.seed)


if __name__ == "__main__":
    main(parse_args())
