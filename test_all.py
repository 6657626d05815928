"""Tests: one file, one section per concept in the README's reading order, CPU only, tiny
models and seconds of audio.

Trust comes from comparisons with reference implementations (transformers' HubertModel and
HubertForCTC, torchaudio's kaldi fbank and fairseq key mapping, the paper's formulas) and from
properties stated in each test's name. Sections: shared fixtures; data; model (students, then
teachers from foreign checkpoints); losses; Fbank front-end; pretrain; distill; finetune; the
CLI chain; demo; then the infrastructure (torchrun, resume and Ctrl-C, checkpoint safety, bad
inputs, the benchmark).

    python -m pytest -q test_all.py          # or: make test
"""
import argparse
import dataclasses
import json
import math
import os
import pickle
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.compliance.kaldi as kaldi
from torchaudio.models import wav2vec2_model

import caches
import checkpoints
import data
import demo
import demo_parts.results as results
import demo_parts.stages as stages
import distill
import fbank_frontend as fbf
import finetune
import losses
import model
import pretrain
import runtime
import scoring
import study
import tools.bench as bench
from data import (BLANK, BucketBatchSampler, MIN_UTTERANCES, SAMPLE_RATE, SPLIT_SHARES, VOCAB,
                  collate, decode, encode, load_audio, load_corpus, make_loader, make_speakers,
                  read_librispeech, read_manifest, synth_corpus)
from distill import DistillHeads
from losses import discriminative_loss, frontend_loss, hard_unit_loss, regression_loss
from model import (Encoder, EncoderConfig, build_student, distill_pairs, load_teacher,
                   normalize_waveform)


# ----------------------------------------------------------------------------------------------
# Shared fixtures and helpers: one corpus of speech, one of tones, one teacher, one student


HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER = dict(dim=32, layers=4, heads=2, ffn=64, pos_conv_kernel=8, pos_conv_groups=4,
               conv_layers=model.hubert_cnn(32))  # HuBERT's strides, narrow channels
TONE_WORDS = "THE CAT SAW A DOG IT'S RED AND BLUE".split()


def _mask(lengths, T):
    """Padding mask [B, T], True on padding, from per-utterance lengths."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def _prediction_head(dim, final_dim, k):
    """HuBERT's head (model.PredictionHead) with random codewords: the teacher side of the tests."""
    head = model.PredictionHead(dim, final_dim, k)
    torch.nn.init.normal_(head.codewords)
    return head


def tiny_teacher(nan=False, **overrides):
    """The test teacher, in memory: a seeded 4 x 32 encoder on HuBERT's CNN geometry (32 channels)
    with a prediction head (16-dim projection, 12 random codewords). nan=True breaks one weight."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**{**TEACHER, **overrides}, dropout=0.0, attention_dropout=0.0))
    head = _prediction_head(32, 16, 12)
    if nan:
        with torch.no_grad():
            enc.encoder.transformer.layers[0].feed_forward.output_dense.weight.fill_(float("nan"))
    return model.Teacher(enc, head)


def save_teacher(path, nan=False):
    """tiny_teacher() as a checkpoint of this project, as pretrain.py writes one; returns str(path)."""
    teacher = tiny_teacher(nan)
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(teacher.encoder, "teacher",
                                                               head=teacher.head.state_dict()), path)
    return str(path)


def tiny_student(**overrides):
    """The test student, in memory: the seeded "tiny" preset on the teacher's CNN geometry."""
    torch.manual_seed(0)
    return model.build_student("tiny", conv_layers=TEACHER["conv_layers"], **overrides)


def write_tone_corpus(root, utterances=8, speakers=1, seconds=(0.5, 1.0), seed=0):
    """A LibriSpeech-layout folder (speakers 100, 101, ..., chapter 1) of tone-in-noise
    utterances with random transcripts of TONE_WORDS; returns root."""
    rng = np.random.default_rng(seed)
    for spk in range(speakers):
        folder = os.path.join(root, str(100 + spk), "1")
        os.makedirs(folder, exist_ok=True)
        lines = []
        for k in range(utterances):
            utt = f"{100 + spk}-1-{k:04d}"
            n = int(rng.uniform(*seconds) * data.SAMPLE_RATE)
            t = np.arange(n) / data.SAMPLE_RATE
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
            sf.write(os.path.join(folder, utt + ".flac"), wave.astype(np.float32), data.SAMPLE_RATE)
            lines.append(utt + " " + " ".join(rng.choice(TONE_WORDS, size=3)))
        with open(os.path.join(folder, f"{100 + spk}-1.trans.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """The demo's toy corpus (eSpeak speech, train/dev/test splits, about 36 s in all), as
    `python data.py synth --hours 0.01 --seed 0` writes it: for data.py, pretrain and distill."""
    out = tmp_path_factory.mktemp("toy") / "corpus"
    synth_corpus(out, hours=0.01, seed=0)
    return out


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory):
    """(train, dev) folders of tones: 8 utterances of 0.5-1 s (4 batches of 2 s an epoch) and
    3 for dev. Fast enough for fine-tuning, torchrun, resume and bad-input runs."""
    root = tmp_path_factory.mktemp("tones")
    return write_tone_corpus(str(root / "train")), write_tone_corpus(str(root / "dev"), utterances=3, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The path of the test teacher's checkpoint (save_teacher)."""
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The path of a student checkpoint to fine-tune: tiny_student() as distill.py saves one."""
    path = str(tmp_path_factory.mktemp("student") / "student.pt")
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(tiny_student(), "student", preset="tiny"), path)
    return path


@pytest.fixture(scope="module")
def distill_straight(tone_corpus, teacher, tmp_path_factory):
    """The checkpoint after 4 steps of 2 batches in one go (4 batches an epoch: the run crosses an
    epoch boundary), the reference of the exact-resume tests."""
    out = tmp_path_factory.mktemp("straight")
    distill.main(distill_args(tone_corpus, teacher, out, "--max-steps", "4", "--grad-accum", "2"))
    return checkpoints.load_checkpoint(out / "checkpoint.pt")


@pytest.fixture
def fake_fairseq(monkeypatch):
    """Importable stand-ins for fairseq modules, so that a fixture can pickle a
    fairseq.data.dictionary.Dictionary the way hubert_base_ls960.pt does."""
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class Dictionary:
        def __init__(self, symbols):
            self.symbols, self.indices = symbols, {s: i for i, s in enumerate(symbols)}

    Dictionary.__module__, Dictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
    sys.modules["fairseq.data.dictionary"].Dictionary = Dictionary
    return Dictionary


class RunsCode:
    """A pickle that runs a shell command when unpickled without weights_only."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def distill_args(corpus, teacher, out, *flags):
    """distill.py's arguments for a fast run of the tiny student on corpus[0] (2 s batches)."""
    return distill.parse_args(["--teacher", teacher, "--data", corpus[0], "--out-dir", str(out),
                               "--student", "tiny", "--dim", "32", "--ffn", "32", "--heads", "2",
                               "--batch-seconds", "2", "--log-every", "1", "--device", "cpu",
                               "--disc-weight", "0.5", "--lr", "1e-3", *flags])


def finetune_args(corpus, student, out, *flags):
    """finetune.py's arguments for a fast run on (train, dev) = corpus (2 s batches, 2 frozen steps)."""
    return finetune.parse_args(["--init", student, "--train", corpus[0], "--valid", corpus[1],
                                "--out-dir", str(out), "--device", "cpu", "--lr", "1e-3", "--stages", "0.5,0,0.5",
                                "--batch-seconds", "2", "--log-every", "1", "--mask-channel-length", "8",
                                "--freeze-steps", "2", "--eval-every", "2", *flags])


def run_cli(script, *argv, timeout=120):
    """Runs `python script argv...` in this folder with one thread; returns the CompletedProcess."""
    return subprocess.run([sys.executable, script, *argv], cwd=HERE, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ----------------------------------------------------------------------------------------------
# data.py: vocabulary, corpora, audio loading, bucketing, collate, toy corpus synthesis


def _transcripts(root):
    return {p.relative_to(root): p.read_text() for p in sorted(root.rglob("*.trans.txt"))}


def test_vocabulary_is_hubert_letter_dictionary_with_blank_first():
    assert len(VOCAB) == 32 and VOCAB[BLANK] == "<pad>" and VOCAB[4] == "|"


def test_encode_puts_word_separator_between_words_and_decode_inverts_it():
    ids = encode("HI YOU")
    assert [VOCAB[i] for i in ids] == ["H", "I", "|", "Y", "O", "U"]
    assert decode(ids) == "HI YOU"
    assert decode(encode("  it's   a\tTEST ")) == "IT'S A TEST"  # upper-cased, spaces collapsed
    assert decode([BLANK, *encode("A B"), BLANK]) == "A B"  # specials dropped


def test_encode_rejects_out_of_vocabulary_character_by_name():
    with pytest.raises(ValueError, match=re.escape("'7'")):
        encode("ROOM 7")


def test_bucketing_keeps_every_utterance_once_within_padded_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(SAMPLE_RATE, 15 * SAMPLE_RATE, size=300).tolist()
    lengths[7] = 40 * SAMPLE_RATE  # longer than the budget: a batch of its own
    sampler = BucketBatchSampler(lengths, batch_seconds=30, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert len(batches) == len(sampler)
    for b in batches:
        padded = max(lengths[i] for i in b) * len(b)
        assert padded <= 30 * SAMPLE_RATE or len(b) == 1
    assert [7] in batches


def test_bucketing_example_from_docstring():
    lengths = [s * SAMPLE_RATE for s in (1, 2, 2, 3, 9)]
    sampler = BucketBatchSampler(lengths, batch_seconds=6, shuffle=False)
    assert list(sampler) == [[0, 1, 2], [3], [4]]


def test_batch_order_depends_only_on_seed_and_epoch():
    lengths = list(range(SAMPLE_RATE, 2 * SAMPLE_RATE, 1000))
    a, b = (BucketBatchSampler(lengths, batch_seconds=5, seed=3) for _ in range(2))
    for s in (a, b):
        s.set_epoch(2)
    assert list(a) == list(b)
    a.set_epoch(3)
    assert list(a) != list(b)


@pytest.mark.parametrize("num_utterances", [40, 43])
def test_distributed_ranks_get_distinct_batches_and_equal_counts(num_utterances):
    lengths = [SAMPLE_RATE] * num_utterances  # 4 per batch of 4 s: 10 or 11 batches
    ranks = [BucketBatchSampler(lengths, batch_seconds=4, seed=0, rank=r, world_size=2)
             for r in range(2)]
    for s in ranks:
        s.set_epoch(5)
    got = [list(s) for s in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0])
    assert {i for g in got for b in g for i in b} == set(range(num_utterances))
    shared = {tuple(b) for b in got[0]} & {tuple(b) for b in got[1]}
    assert len(shared) == (0 if len(ranks[0].batches) % 2 == 0 else 1)  # only the padding


def test_set_epoch_skip_resumes_the_exact_same_sequence():
    lengths = list(range(SAMPLE_RATE, 3 * SAMPLE_RATE, 997))
    full = BucketBatchSampler(lengths, batch_seconds=6, seed=9)
    full.set_epoch(4)
    resumed = BucketBatchSampler(lengths, batch_seconds=6, seed=9)
    resumed.set_epoch(4, skip=5)
    assert list(resumed) == list(full)[5:] and len(resumed) == len(full) - 5


def test_collate_zero_pads_waves_and_pads_targets_with_minus_100():
    items = [{"id": "a", "wave": torch.ones(5), "text": "HI"},
             {"id": "b", "wave": torch.ones(3), "text": "A B C"}]
    batch = collate(items)
    assert batch["waves"].shape == (2, 5) and batch["lengths"].tolist() == [5, 3]
    assert batch["waves"][1, 3:].abs().sum() == 0 and batch["ids"] == ["a", "b"]
    assert batch["target_lengths"].tolist() == [2, 5]
    assert batch["targets"][0].tolist() == encode("HI") + [-100] * 3
    unlabelled = collate([{"id": "c", "wave": torch.ones(2), "text": None}])
    assert "targets" not in unlabelled and unlabelled["texts"] == [None]


def test_load_audio_resamples_8khz_stereo_to_16khz_mono(tmp_path):
    t = np.arange(8000 * 3 // 2) / 8000  # 1.5 s
    left, right = np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    path = tmp_path / "spk" / "1" / "spk-1-0000.wav"
    path.parent.mkdir(parents=True)
    sf.write(path, np.stack([left, right], axis=1) * 0.5, 8000)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (24000,)
    assert 0.2 < wave.abs().max() < 0.3  # mean of the two channels
    (utt,) = read_librispeech(tmp_path)  # header-only length agrees with the decoded one
    assert utt.num_samples == 24000 and utt.text is None


def test_load_audio_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_text("not audio")
    with pytest.raises(ValueError, match="bad.flac"):
        load_audio(bad)


def test_read_manifest_takes_labels_from_ltr_file(tmp_path):
    for name, n in [("a.flac", 16000), ("b.flac", 8000)]:
        sf.write(tmp_path / name, np.zeros(n), SAMPLE_RATE)
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.flac\t16000\nb.flac\t8000\n")
    (tmp_path / "train.ltr").write_text("H I | Y O U |\nO K |\n")
    utts = load_corpus([str(tmp_path / "train.tsv")])
    assert [(u.id, u.num_samples, u.text) for u in utts] == [("a", 16000, "HI YOU"),
                                                            ("b", 8000, "OK")]
    assert utts == read_manifest(tmp_path / "train.tsv")
    assert load_audio(utts[1].path).shape == (8000,)


def test_load_corpus_says_which_path_is_missing_or_empty(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: holds no audio.*data.py synth"):
        load_corpus([str(tmp_path)])
    with pytest.raises(ValueError, match="nowhere: no such file or folder"):
        load_corpus(["nowhere"])


def test_librilight_splits_read_as_the_low_resource_results_name_them(tmp_path, tone_corpus, teacher, capsys):
    """Libri-light's librispeech_finetuning layout, made small: 10min is 1h/0, 1h all six parts of 1h,
    10h is 9h plus 1h; the path a user takes is finetune.py --train ROOT/10min."""
    root = tmp_path / "librispeech_finetuning"
    parts = [f"1h/{k}/{kind}" for k in range(6) for kind in ("clean", "other")] + ["9h/clean", "9h/other"]
    for seed, part in enumerate(parts):
        write_tone_corpus(str(root / part), utterances=2 if part.startswith("9h") else 1, seed=seed)
    count = {name: len(data.load_corpus([str(root / name)])) for name in ("10min", "1h", "10h")}
    assert count == {"10min": 2, "1h": 12, "10h": 16}
    assert {os.path.relpath(u.path, root).split("/")[1] for u in data.load_corpus([str(root / "10min")])} == {"0"}
    with pytest.raises(ValueError, match="no such file or folder"):
        data.load_corpus([str(tmp_path / "elsewhere" / "10min")])  # only inside a librispeech_finetuning root
    finetune.main(finetune_args((str(root / "10min"), tone_corpus[1]), teacher, tmp_path / "ctc", "--max-steps", "1"))
    assert "train: 2 utterances" in capsys.readouterr().out


def test_load_corpus_refuses_the_toy_root_that_mixes_splits(toy_corpus):
    with pytest.raises(ValueError, match="pass one split"):
        load_corpus([str(toy_corpus)])


def test_synth_writes_librispeech_layout_of_16khz_mono_flac(toy_corpus):
    for split in SPLIT_SHARES:
        utts = load_corpus([str(toy_corpus / split)])
        assert len(utts) >= MIN_UTTERANCES
        for u in utts:
            spk, chap, _ = u.id.split("-")
            path = toy_corpus / split / spk / chap / f"{u.id}.flac"
            info = sf.info(path)
            assert str(path) == u.path and (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
            assert (info.format, info.subtype) == ("FLAC", "PCM_16")
            assert u.text == u.text.upper() and encode(u.text)
            assert 1.2 * SAMPLE_RATE < u.num_samples < 7 * SAMPLE_RATE
            assert (path.parent / f"{spk}-{chap}.trans.txt").exists()


def test_synth_dev_and_test_speakers_are_unseen_in_train(toy_corpus):
    def speakers(split):
        return {p.name for p in (toy_corpus / split).iterdir()}
    assert not speakers("train") & (speakers("dev") | speakers("test"))
    assert not speakers("dev") & speakers("test")
    voices = {s: {v for _, v, *_ in make_speakers(s, seed=0)} for s in SPLIT_SHARES}
    assert not voices["train"] & (voices["dev"] | voices["test"])


def test_synth_is_deterministic_given_the_seed(toy_corpus, tmp_path):
    synth_corpus(tmp_path / "again", hours=0.01, seed=0)
    assert _transcripts(tmp_path / "again") == _transcripts(toy_corpus)
    # Audio is byte-identical only between fresh processes (eSpeak keeps state between calls).
    synth_corpus(tmp_path / "other", hours=0.01, seed=1)
    assert _transcripts(tmp_path / "other") != _transcripts(toy_corpus)


def test_synth_skips_existing_corpus_and_refuses_foreign_folder(toy_corpus, tmp_path, capsys):
    synth_corpus(toy_corpus, hours=0.01, seed=0)
    assert "already there" in capsys.readouterr().out
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        synth_corpus(tmp_path, hours=0.01, seed=0)


def test_make_loader_batches_the_toy_corpus(toy_corpus):
    utts = load_corpus([str(toy_corpus / "dev")])
    loader, sampler = make_loader(utts, batch_seconds=20, shuffle=True, seed=0)
    sampler.set_epoch(1)
    batches = list(loader)
    assert sum(len(b["ids"]) for b in batches) == len(utts)
    for b in batches:
        assert b["waves"].shape[1] == b["lengths"].max() and "targets" in b


# ----------------------------------------------------------------------------------------------
# model.py: student presets, the encoder, students initialised from the teacher


def test_paper_students_have_the_papers_parameter_counts():
    """The paper (Table 1) and the authors' code: 23.49M, 22.94M, 20.10M, 19.11M encoders."""
    counts = {name: round(model.count_parameters(build_student(name)) / 1e6, 2)
              for name in ("distilhubert", "fithubert", "distilhubert-fbank", "fithubert-fbank")}
    assert counts == {"distilhubert": 23.49, "fithubert": 22.94, "distilhubert-fbank": 20.10,
                      "fithubert-fbank": 19.11}
    fbank_saving = 1 - counts["fithubert-fbank"] / counts["fithubert"]
    assert fbank_saving == pytest.approx(0.167, abs=0.001)  # the paper's "17% fewer parameters"


def test_preset_table_prints_every_preset():
    table = model.preset_table()
    for name in model.PRESETS:
        assert name in table
    assert "22.94" in table and "23.49" in table


def test_conv_output_lengths_equal_actual_frame_counts():
    """Frame lengths reported for a padded batch equal the frames each utterance gets alone."""
    enc = Encoder(EncoderConfig(**TEACHER, extractor_mode="layer_norm")).eval()
    lengths = [400, 719, 720, 1999, 3200]
    waves = torch.randn(len(lengths), max(lengths))
    _, frame_lengths = enc.frontend(waves, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, _ = enc.frontend(waves[i:i + 1, :n], torch.tensor([n]))
        assert frame_lengths[i].item() == alone.shape[1] == (n - 400) // 320 + 1


def test_padding_does_not_change_real_frames_of_layer_norm_encoders():
    """With a layer-norm CNN (HuBERT Large style) padding never leaks into real frames. Base's
    first-layer GroupNorm normalises over the whole padded sequence (as fairseq and
    transformers do), so this property is tested on the layer-norm layout only."""
    enc = Encoder(EncoderConfig(**TEACHER, extractor_mode="layer_norm", conv_bias=True)).eval()
    short = torch.randn(1, 4000)
    batch = torch.cat([short, torch.zeros(1, 2400)], 1)
    batch = torch.cat([batch, torch.randn(1, 6400)])
    with torch.no_grad():
        alone, _ = enc(short, torch.tensor([4000]))
        padded, frame_lengths = enc(batch, torch.tensor([4000, 6400]))
    T = frame_lengths[0].item()
    for a, p in zip(alone, padded):
        torch.testing.assert_close(p[0, :T], a[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_front_written_out_equals_torchaudios_preprocess(layer_norm_first):
    """Encoder.transformer_input (projection, padded frames zeroed) and hidden_states[0] (+ positional
    conv, layer norm for post-LN, dropout) equal torchaudio's private Encoder._preprocess and
    Transformer._preprocess exactly, dropout included (same seed, training mode)."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**TEACHER, layer_norm_first=layer_norm_first)).train()
    waves, lengths = torch.randn(3, 6400), torch.tensor([6400, 4000, 2500])
    feats, frame_lengths = enc.frontend(waves, lengths)
    for mode in ("eval", "train"):
        getattr(enc, mode)()
        torch.manual_seed(1)
        x, _ = enc.transformer_input(waves, lengths, (feats, frame_lengths))
        hidden, _ = enc.transformer_layers(x, frame_lengths, num_layers=0)
        torch.manual_seed(1)
        ref, _ = enc.encoder._preprocess(feats, frame_lengths)
        assert torch.equal(x, ref)
        assert torch.equal(hidden[0], enc.encoder.transformer._preprocess(ref))


def test_distill_pairs_follow_distilhubert_and_fithubert():
    assert distill_pairs("last", 2, 12) == [(2, 4), (2, 8), (2, 12)]
    assert distill_pairs("layerwise", 12, 12) == [(i, i) for i in range(1, 13)]
    assert distill_pairs("layerwise", 4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    with pytest.raises(ValueError, match="cannot target"):
        distill_pairs("last", 2, 4, [4, 8])


def test_sw_student_copies_what_the_authors_distiller_copies(toy_corpus, tmp_path):
    """`distill.py --student distilhubert --max-steps 0`: the teacher's CNN, feature projection Linear,
    positional conv and first two layers, as the authors' init; the input LayerNorm stays fresh and
    there is no LayerNorm on the CNN features (their student has none)."""
    teacher = tiny_teacher()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01)  # not a fresh initialisation anywhere (fresh layer norms would match)
    path = tmp_path / "teacher.pt"
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(teacher.encoder, "teacher",
                                                               head=teacher.head.state_dict()), path)
    run_distill(["--student", "distilhubert", "--max-steps", "0"], toy_corpus, str(path), tmp_path / "sw")
    student = load_teacher(str(tmp_path / "sw" / "student.pt")).encoder
    assert (student.config.layers, student.config.dim) == (2, teacher.config.dim)
    assert not student.config.feature_layer_norm and teacher.encoder.config.feature_layer_norm
    copied = ("feature_extractor.", "encoder.feature_projection.projection.", "encoder.transformer.pos_conv_embed.",
              "encoder.transformer.layers.0.", "encoder.transformer.layers.1.")
    t_state = teacher.encoder.state_dict()
    for k, v in student.state_dict().items():
        assert torch.equal(v, t_state[k]) == k.startswith(copied), k
    assert not any(k.startswith("encoder.feature_projection.layer_norm") for k in student.state_dict())
    ln = student.encoder.transformer.layer_norm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    # --student-init cnn: the S&W shape on a random transformer (the D&T init), the study's control;
    # --feature-layer-norm: HuBERT's LayerNorm on the CNN features, fresh (the demo's from-scratch row)
    run_distill(["--student", "distilhubert", "--student-init", "cnn", "--feature-layer-norm", "--max-steps", "0"],
                toy_corpus, str(path), tmp_path / "sw-random")
    random = load_teacher(str(tmp_path / "sw-random" / "student.pt")).encoder
    assert (random.config.layers, random.config.dim) == (2, teacher.config.dim)
    assert random.config.feature_layer_norm and "encoder.feature_projection.layer_norm.weight" in random.state_dict()
    for k, v in random.state_dict().items():
        assert torch.equal(v, t_state[k]) == k.startswith("feature_extractor."), k


def test_fithubert_copies_only_the_cnn_and_mismatched_init_is_a_clear_error():
    teacher = tiny_teacher()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01)  # not a fresh initialisation anywhere (fresh layer norms would match)
    # the teacher's own shape, so that a copied projection or layer would be visible
    student = build_student("fithubert", teacher, layers=2, dim=32, ffn=64, heads=2, pos_conv_kernel=8,
                            pos_conv_groups=4)
    t_state = teacher.encoder.state_dict()
    for k, v in student.state_dict().items():
        assert v.shape == t_state[k].shape, k
        assert torch.equal(v, t_state[k]) == k.startswith("feature_extractor."), k  # CNN only
    assert any(k.startswith("encoder.feature_projection.") for k in t_state)
    with pytest.raises(ValueError, match="cannot initialise a 2x48"):
        build_student("distilhubert", teacher, dim=48, ffn=64, heads=2)


def test_students_have_the_authors_ffn_dropout_and_teachers_keep_their_own():
    """activation_dropout 0.1 (s3prl distiller default, DistilHuBERT); a teacher's stays as loaded."""
    teacher = tiny_teacher()
    for preset in ("distilhubert", "fithubert", "tiny"):
        student = build_student(preset, teacher, layers=2)
        ffn_dropouts = {layer.feed_forward.intermediate_dropout.p for layer in student.encoder.transformer.layers}
        assert student.config.activation_dropout == 0.1 and ffn_dropouts == {0.1}, preset
    assert teacher.config.activation_dropout == 0.0 == EncoderConfig().activation_dropout
    assert build_student("tiny", activation_dropout=0.0).config.activation_dropout == 0.0


def test_teacher_stays_frozen_in_eval_mode():
    teacher = tiny_teacher()
    teacher.train()
    assert not teacher.training and not teacher.encoder.training
    assert not any(p.requires_grad for p in teacher.parameters())


# ----------------------------------------------------------------------------------------------
# model.py: teachers from foreign checkpoints (model.load_teacher) against transformers and torchaudio
# (tiny random models with perturbed norms and biases: a missing or swapped layer-norm parameter
# cannot hide behind weight 1 / bias 0)

TINY_CNN = [(16, 10, 5), (16, 3, 2), (16, 2, 2)]  # 20-sample hop keeps the sequences short
TINY = dict(dim=32, layers=2, heads=4, ffn=48, pos_conv_kernel=8, pos_conv_groups=4)
LENGTHS = torch.tensor([4000, 2900])  # a padded batch of two utterances


def perturb_(module, seed=0, scale=0.2):
    """Add noise to every parameter: layer norms move away from 1/0, biases away from 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def padded_waves(seed=0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    waves = std * torch.randn(len(LENGTHS), int(LENGTHS.max()), generator=g)
    return waves * (torch.arange(waves.shape[1])[None, :] < LENGTHS[:, None])  # zero padding


def max_diff_on_real_frames(ours, reference, frame_lengths):
    """Largest |difference| over all layers, counting only each utterance's real frames."""
    assert len(ours) == len(reference)
    worst = 0.0
    for a, b in zip(ours, reference):
        for i, n in enumerate(frame_lengths.tolist()):
            worst = max(worst, (a[i, :n] - b[i, :n]).abs().max().item())
    return worst


# ---- Hugging Face folders vs transformers' HubertModel


def hf_hubert(tmp_path, stable_layer_norm, seed=0):
    """A tiny random transformers HubertModel saved with save_pretrained (safetensors)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=[c for c, _, _ in TINY_CNN], conv_kernel=[k for _, k, _ in TINY_CNN],
        conv_stride=[s for _, _, s in TINY_CNN], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=stable_layer_norm, feat_extract_norm="layer" if stable_layer_norm else "group",
        conv_bias=stable_layer_norm)
    torch.manual_seed(seed)
    hf = perturb_(transformers.HubertModel(cfg), seed).eval()
    hf.save_pretrained(tmp_path)
    return hf


def hf_reference(hf, input_values, attention_mask):
    """transformers' hidden states in this project's convention: the last one after the final
    layer norm of pre-LN models (transformers 5 reports it before; last_hidden_state is after)."""
    with torch.no_grad():
        out = hf(input_values, attention_mask=attention_mask, output_hidden_states=True)
    return list(out.hidden_states[:-1]) + [out.last_hidden_state]


def test_huggingface_post_ln_base_layout_matches_transformers(tmp_path):
    # HF documents that group-norm (Base) models be called WITHOUT attention_mask; we call both
    # models the same way, with the mask (= fairseq's padding_mask), and compare real frames.
    # The first CNN layer's GroupNorm still sees the whole padded sequence, in both models.
    hf = hf_hubert(tmp_path, stable_layer_norm=False)
    teacher = load_teacher(str(tmp_path))
    assert teacher.config.extractor_mode == "group_norm" and not teacher.config.layer_norm_first
    assert not teacher.config.normalize_waveform and teacher.head is None
    waves = padded_waves()
    ours, frame_lengths = teacher(waves, LENGTHS)
    mask = (torch.arange(waves.shape[1])[None, :] < LENGTHS[:, None]).long()
    assert torch.equal(frame_lengths, hf._get_feat_extract_output_lengths(LENGTHS))
    assert max_diff_on_real_frames(ours, hf_reference(hf, waves, mask), frame_lengths) < 1e-4


def test_huggingface_pre_ln_large_layout_with_normalisation_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_hubert(tmp_path, stable_layer_norm=True, seed=1)
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    extractor.save_pretrained(tmp_path)  # preprocessor_config.json: do_normalize true
    teacher = load_teacher(str(tmp_path))
    c = teacher.config
    layout = (c.extractor_mode, c.layer_norm_first, c.conv_bias, c.normalize_waveform)
    assert layout == ("layer_norm", True, True, True)
    waves = 3.0 * padded_waves(seed=1) + 0.5  # not zero-mean, not unit-variance: normalisation matters
    ours, frame_lengths = teacher(waves, LENGTHS)
    # the reference normalises with transformers' own feature extractor (its eps is 1e-7, ours 1e-5)
    batch = extractor([w[:n].numpy() for w, n in zip(waves, LENGTHS)], sampling_rate=16_000,
                      padding=True, return_tensors="pt")
    reference = hf_reference(hf, batch["input_values"], batch["attention_mask"])
    assert max_diff_on_real_frames(ours, reference, frame_lengths) < 1e-4


def test_huggingface_ctc_folder_with_pytorch_model_bin_and_legacy_weight_norm_names(tmp_path):
    hf = hf_hubert(tmp_path / "ref", stable_layer_norm=False, seed=2)
    folder = tmp_path / "ctc"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    # as older HubertForCTC files: "hubert." prefix, weight_g / weight_v, an lm_head to ignore
    state = {"hubert." + k.replace("parametrizations.weight.original0", "weight_g")
             .replace("parametrizations.weight.original1", "weight_v"): v for k, v in hf.state_dict().items()}
    state.update({"lm_head.weight": torch.zeros(32, 32), "lm_head.bias": torch.zeros(32)})
    torch.save(state, folder / "pytorch_model.bin")
    teacher = load_teacher(str(folder))
    waves = padded_waves(seed=2)
    ours, frame_lengths = teacher(waves, LENGTHS)
    mask = (torch.arange(waves.shape[1])[None, :] < LENGTHS[:, None]).long()
    assert max_diff_on_real_frames(ours, hf_reference(hf, waves, mask), frame_lengths) < 1e-4


# ---- fairseq checkpoints vs torchaudio's model and torchaudio's own key mapping


# torchaudio name -> fairseq name: the inverse of checkpoints.FAIRSEQ_KEYS, written out independently
TO_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0",
     "encoder.pos_conv.0.weight_g"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1",
     "encoder.pos_conv.0.weight_v"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]


def torchaudio_reference(layer_norm_layout, seed=0):
    """A tiny random torchaudio Wav2Vec2Model (Base layout, or Large layout with conv bias)."""
    params = dict(
        extractor_mode="layer_norm" if layer_norm_layout else "group_norm",
        extractor_conv_layer_config=TINY_CNN,
        extractor_conv_bias=layer_norm_layout, encoder_embed_dim=32, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=layer_norm_layout, encoder_layer_drop=0.0,
        aux_num_out=None)
    torch.manual_seed(seed)
    return perturb_(wav2vec2_model(**params), seed).eval(), params


def to_fairseq(state, layer_norm_layout):
    out = {}
    for key, value in state.items():
        if key.startswith("feature_extractor.conv_layers.") and ".layer_norm." in key:
            i, name = re.match(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)", key).groups()
            out[f"feature_extractor.conv_layers.{i}.2.{'1.' if layer_norm_layout else ''}{name}"] = value
            continue
        pattern, repl = next(r for r in TO_FAIRSEQ if re.match(r[0], key))
        out[re.sub(pattern, repl, key, count=1)] = value
    return out


def fairseq_model_cfg(layer_norm_layout):
    return {"_name": "hubert", "extractor_mode": "layer_norm" if layer_norm_layout else "default",
            "conv_feature_layers": "[(16, 10, 5)] + [(16,3,2)] * 1 + [(16,2,2)]",
            "conv_bias": layer_norm_layout, "encoder_embed_dim": 32, "encoder_layers": 2,
            "encoder_attention_heads": 4, "encoder_ffn_embed_dim": 48,
            "conv_pos": 8, "conv_pos_groups": 4, "layer_norm_first": layer_norm_layout, "final_dim": 12,
            "activation_fn": "gelu", "dropout": 0.1, "encoder_layerdrop": 0.05, "mask_prob": 0.8}


def head_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"final_proj.weight": torch.randn(12, 32, generator=g),
            "final_proj.bias": torch.randn(12, generator=g),
            "label_embs_concat": torch.randn(7, 12, generator=g), "mask_emb": torch.randn(32, generator=g)}


def assert_matches_torchaudio(teacher, reference, normalize):
    """Exact equality with torchaudio's own forward (extract_features) on the same weights, and of
    hidden_states[0] with the transformer input built from torchaudio's modules step by step."""
    waves = padded_waves()
    ours, frame_lengths = teacher(waves, LENGTHS)
    inputs = normalize_waveform(waves, LENGTHS) if normalize else waves
    with torch.no_grad():
        layers, ref_lengths = reference.extract_features(inputs, LENGTHS)
        t = reference.encoder.transformer
        post_ln = t.layer_norm_first  # torchaudio's Transformer flag is True for post-LN models (Base)
        if not post_ln:  # pre-LN: final norm after the last layer
            layers[-1] = t.layer_norm(layers[-1])
        # hidden_states[0], fairseq's order: CNN, layer norm + projection, padded frames zeroed,
        # + positional conv, then (post-LN only) the encoder's layer norm
        features, _ = reference.feature_extractor(inputs, LENGTHS)
        projection = reference.encoder.feature_projection
        x = projection.projection(projection.layer_norm(features))
        x = x * (torch.arange(x.shape[1])[None, :] < ref_lengths[:, None])[..., None]
        x = x + t.pos_conv_embed(x)
        first = t.layer_norm(x) if post_ln else x
        # it is what torchaudio's first layer takes (the input of get_intermediate_outputs' loop)
        assert torch.equal(first, t._preprocess(reference.encoder._preprocess(features, ref_lengths)[0]))
    assert torch.equal(frame_lengths, ref_lengths)
    assert len(ours) == len(layers) + 1
    assert torch.equal(ours[0], first)
    for a, b in zip(ours[1:], layers):
        assert torch.equal(a, b)


def test_fairseq_checkpoint_matches_torchaudio_exactly_and_carries_the_prediction_head(tmp_path):
    reference, params = torchaudio_reference(layer_norm_layout=False)
    fairseq_state = {**to_fairseq(reference.state_dict(), False), **head_weights()}
    # cross-check of the test's own inverse mapping with torchaudio's fairseq importer
    converted = torchaudio.models.wav2vec2.utils.import_fairseq._convert_state_dict(fairseq_state)
    assert torch.equal(converted.pop("label_embs_concat"), fairseq_state["label_embs_concat"])
    fresh = wav2vec2_model(**params)
    fresh.load_state_dict(converted)  # strict: every key mapped, none left over
    for k, v in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    path = tmp_path / "hubert_base_tiny.pt"
    task = {"_name": "hubert_pretraining", "normalize": False}
    torch.save({"cfg": {"model": fairseq_model_cfg(False), "task": task},
                "args": None, "model": fairseq_state, "extra_state": {"epoch": 3}}, path)
    teacher = load_teacher(str(path))
    assert not teacher.config.normalize_waveform and teacher.config.conv_layers == TINY_CNN
    assert_matches_torchaudio(teacher, reference, normalize=False)
    assert torch.equal(teacher.head.codewords, fairseq_state["label_embs_concat"])
    assert torch.equal(teacher.head.final_proj.weight, fairseq_state["final_proj.weight"])
    assert torch.equal(teacher.head.final_proj.bias, fairseq_state["final_proj.bias"])


def test_legacy_fairseq_args_checkpoint_with_numpy_and_dictionary_loads_without_fairseq(
        tmp_path, fake_fairseq, monkeypatch):
    reference, _ = torchaudio_reference(layer_norm_layout=True, seed=3)
    cfg = fairseq_model_cfg(True)
    del cfg["_name"], cfg["conv_pos_groups"]  # legacy args may leave out fields: fairseq's defaults apply
    reference_groups = reference.encoder.transformer.pos_conv_embed.conv.groups
    assert reference_groups != checkpoints.FAIRSEQ_DEFAULTS["conv_pos_groups"]
    args = argparse.Namespace(**cfg, conv_pos_groups=reference_groups, normalize=True, arch="hubert_large",
                              best_checkpoint_metric="loss", seed=np.int64(1))
    path = tmp_path / "hubert_large_tiny_legacy.pt"
    torch.save({"args": args, "model": {**to_fairseq(reference.state_dict(), True), **head_weights(3)},
                "task_state": {"dictionaries": [fake_fairseq(["<s>", "<pad>", "</s>", "<unk>", "1", "2"])]},
                "extra_state": {"val_loss": np.float64(2.5), "num_updates": np.int64(400_000),
                                "lr": np.array([1e-4, 5e-5]), "dtype": np.dtype("float32")},
                "optimizer_history": [{"num_updates": 400_000}]}, path)
    for name in ("fairseq.data.dictionary", "fairseq.data", "fairseq"):  # the loader must not need them
        monkeypatch.delitem(sys.modules, name)
    teacher = load_teacher(str(path))
    c = teacher.config
    layout = (c.extractor_mode, c.conv_bias, c.layer_norm_first, c.normalize_waveform)
    assert layout == ("layer_norm", True, True, True)
    assert_matches_torchaudio(teacher, reference, normalize=True)
    assert teacher.head.codewords.shape == (7, 12)


def test_fine_tuned_fairseq_checkpoint_loads_its_encoder_and_has_no_head(tmp_path):
    reference, _ = torchaudio_reference(layer_norm_layout=True, seed=4)
    state = {"w2v_encoder.w2v_model." + k: v for k, v in to_fairseq(reference.state_dict(), True).items()}
    state.update({"w2v_encoder.w2v_model.label_embs_concat": torch.zeros(7, 12),  # final_proj is gone
                  "w2v_encoder.proj.weight": torch.zeros(32, 32), "w2v_encoder.proj.bias": torch.zeros(32)})
    cfg = {"model": {"_name": "hubert_ctc", "w2v_path": "/gone/hubert_large_ll60k.pt",
                     "w2v_args": {"model": fairseq_model_cfg(True), "task": {"normalize": True}}},
           "task": {"_name": "audio_finetuning", "normalize": True}}
    path = tmp_path / "hubert_large_tiny_ft.pt"
    torch.save({"cfg": cfg, "model": state}, path)
    teacher = load_teacher(str(path))
    assert teacher.head is None and teacher.config.normalize_waveform
    assert_matches_torchaudio(teacher, reference, normalize=True)


def test_fairseq_weights_that_do_not_fit_the_config_give_a_clear_error(tmp_path):
    reference, _ = torchaudio_reference(layer_norm_layout=False)
    cfg = {**fairseq_model_cfg(False), "encoder_ffn_embed_dim": 64}
    path = tmp_path / "mismatch.pt"
    torch.save({"cfg": {"model": cfg, "task": {}}, "model": to_fairseq(reference.state_dict(), False)}, path)
    with pytest.raises(ValueError, match=r"mismatch\.pt: weights do not fit .*size mismatch"):
        load_teacher(str(path))


def test_positional_conv_stored_as_a_plain_weight_is_refolded_into_weight_norm():
    reference, params = torchaudio_reference(layer_norm_layout=False, seed=6)
    state = reference.state_dict()
    prefix = "encoder.transformer.pos_conv_embed.conv."
    for name in ("original0", "original1"):
        del state[f"{prefix}parametrizations.weight.{name}"]
    state[prefix + "weight"] = reference.encoder.transformer.pos_conv_embed.conv.weight.detach()
    config = EncoderConfig(conv_layers=TINY_CNN, **TINY)
    encoder = model.load_encoder_state(config, state, "plain-weight.pt")
    ours = encoder.encoder.transformer.pos_conv_embed.conv.weight
    assert torch.allclose(ours, state[prefix + "weight"], atol=1e-6)


def test_conv_feature_layers_are_parsed_without_eval():
    assert checkpoints.parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == model.hubert_cnn(512)
    with pytest.raises(ValueError, match="cannot parse conv_feature_layers"):
        checkpoints.parse_conv_layers("__import__('os').system('true')")


# ---- torchaudio bundles, this project's checkpoints


def test_torchaudio_bundle_loads_from_the_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    reference, params = torchaudio_reference(layer_norm_layout=True, seed=5)
    bundle = torchaudio.pipelines.Wav2Vec2Bundle("tiny_hubert.pth", params, _sample_rate=16_000,
                                                 _normalize_waveform=True, _model_type="Wav2Vec2")
    monkeypatch.setattr(torchaudio.pipelines, "TINY_HUBERT", bundle, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("download attempted"))
    (tmp_path / "checkpoints").mkdir()
    state = {k.replace("parametrizations.weight.original0", "weight_g").replace(  # as the published .pth
             "parametrizations.weight.original1", "weight_v"): v for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "checkpoints" / "tiny_hubert.pth")
    teacher = load_teacher("torchaudio:TINY_HUBERT")
    assert teacher.config.normalize_waveform and teacher.head is None
    assert_matches_torchaudio(teacher, reference, normalize=True)
    with pytest.raises(FileNotFoundError, match=r"HUBERT_BASE: weights not in the torch hub cache .*local"):
        load_teacher("torchaudio:HUBERT_BASE")  # tmp_path/checkpoints has no hubert_fairseq_base_ls960.pth
    with pytest.raises(ValueError, match="not a torchaudio wav2vec2/HuBERT bundle"):
        load_teacher("torchaudio:NO_SUCH_BUNDLE")


def test_project_teacher_checkpoint_round_trips_through_load_teacher(tmp_path):
    encoder = perturb_(Encoder(EncoderConfig(conv_layers=TINY_CNN, **TINY)))
    head = {"final_proj.weight": torch.randn(12, 32), "final_proj.bias": torch.randn(12),
            "codewords": torch.randn(7, 12)}
    path = tmp_path / "teacher.pt"
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(encoder, "teacher", head=head), path)
    teacher = load_teacher(str(path))
    teacher.train()  # must stay in eval mode
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    encoder.eval()
    with torch.no_grad():
        expected, _ = encoder(padded_waves(), LENGTHS)
    ours, _ = teacher(padded_waves(), LENGTHS)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))
    assert torch.equal(teacher.head.codewords, head["codewords"])


# ----------------------------------------------------------------------------------------------
# losses.py: regression, discriminative, hard-unit and front-end losses; distillation heads


def test_regression_of_equal_inputs_is_zero_l1_and_the_cosine_floor():
    x = torch.randn(2, 5, 8)
    total, parts = regression_loss(x, x.clone(), _mask([5, 3], 5))
    assert parts["l1"].item() == 0.0
    cos_floor = math.log1p(math.exp(-1.0))  # -log sigmoid(1) = 0.3133, not subtracted
    assert parts["cos"].item() == pytest.approx(cos_floor, abs=1e-6)
    assert total.item() == pytest.approx(cos_floor, abs=1e-6)


def test_regression_matches_hand_computed_example():
    # one utterance, two real frames and one padded frame full of NaN
    pred = torch.tensor([[[1.0, 2.0], [0.0, 3.0], [math.nan, math.nan]]])
    target = torch.tensor([[[2.0, 0.0], [0.0, -3.0], [math.inf, 7.0]]])
    mask = _mask([2], 3)
    # l1: (|1-2| + |2-0| + |0-0| + |3+3|) / 4 = 9 / 4
    # cos: frame 1 = (1*2 + 2*0) / (sqrt(5) * 2) = 1/sqrt(5); frame 2 = -9 / 9 = -1
    l1 = 9 / 4
    cos = (math.log1p(math.exp(-1 / math.sqrt(5))) + math.log1p(math.exp(1.0))) / 2
    assert cos == pytest.approx((0.49434 + 1.31326) / 2, abs=1e-4)
    total, parts = regression_loss(pred, target, mask, l1_weight=0.5, cos_weight=2.0)
    assert parts["l1"].item() == pytest.approx(l1)
    assert parts["cos"].item() == pytest.approx(cos, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * l1 + 2.0 * cos, rel=1e-6)


def test_regression_stack_averages_the_per_layer_losses():
    """The authors' `.mean()` over (B x N x T): N layers weigh as one, not N times one."""
    pred, target = torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    mask = _mask([6, 4], 6)
    total, parts = regression_loss(pred, target, mask, l1_weight=0.5, cos_weight=2.0)
    singles = [regression_loss(pred[i], target[i], mask, l1_weight=0.5, cos_weight=2.0)[0] for i in range(3)]
    assert total.item() == pytest.approx(sum(s.item() for s in singles) / 3, rel=1e-6)
    real = ~mask  # the authors' form: one mean over every (layer, real frame)
    l1 = (pred - target).abs()[:, real].mean()
    cos = -F.logsigmoid(F.cosine_similarity(pred, target, dim=-1))[:, real].mean()
    assert total.item() == pytest.approx((0.5 * l1 + 2.0 * cos).item(), rel=1e-6)
    assert parts["l1_layers"].shape == (3,) and parts["cos_layers"].shape == (3,)
    assert parts["l1"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert parts["cos"].item() == pytest.approx(cos.item(), rel=1e-6)
    assert parts["l1"].item() == pytest.approx(parts["l1_layers"].mean().item(), rel=1e-6)


def test_losses_ignore_padding_garbage_including_nan():
    torch.manual_seed(0)
    mask = _mask([7, 4], 7)
    pred, target = torch.randn(2, 2, 7, 5), torch.randn(2, 2, 7, 5)
    s_logits, t_logits = torch.randn(2, 7, 11), torch.randn(2, 7, 11)
    dirty = [t.clone() for t in (pred, target, s_logits, t_logits)]
    for t in dirty:
        t[..., 1, 4:, :] = torch.tensor([math.nan, math.inf, -math.inf]).repeat(t.shape[-1])[: t.shape[-1]]
    clean_vals = [regression_loss(pred, target, mask)[0], discriminative_loss(s_logits, t_logits, mask),
                  hard_unit_loss(s_logits, t_logits, mask), frontend_loss(pred[0], target[0], mask)]
    p, t, s, tl = [d.requires_grad_() for d in dirty]
    dirty_vals = [regression_loss(p, t, mask)[0], discriminative_loss(s, tl, mask),
                  hard_unit_loss(s, tl, mask), frontend_loss(p[0], t[0], mask)]
    for c, d in zip(clean_vals, dirty_vals):
        assert torch.isfinite(d) and d.item() == pytest.approx(c.item(), rel=1e-6)
    sum(dirty_vals).backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(s.grad).all()
    assert (p.grad[..., 1, 4:, :] == 0).all()  # padded frames get exactly no gradient


def test_losses_of_an_all_padding_batch_are_zero_not_nan():
    mask = torch.ones(2, 3, dtype=torch.bool)
    x = torch.full((2, 3, 4), math.nan, requires_grad=True)
    assert regression_loss(x, x.detach(), mask)[0].item() == 0.0
    assert discriminative_loss(x, x.detach(), mask).item() == 0.0
    assert frontend_loss(x, x.detach(), mask).item() == 0.0


def test_discriminative_loss_is_zero_for_equal_logits():
    logits = torch.randn(2, 5, 9) * 5
    assert discriminative_loss(logits, logits.clone(), _mask([5, 2], 5)).item() == pytest.approx(0.0, abs=1e-6)


def test_discriminative_loss_matches_torch_kl_div_over_real_frames():
    torch.manual_seed(1)
    s, t = torch.randn(3, 6, 10) * 3, torch.randn(3, 6, 10) * 3
    mask = _mask([6, 1, 4], 6)
    rows_s, rows_t = s[~mask], t[~mask]  # (11, 10)
    ref = F.kl_div(F.log_softmax(rows_s, -1), F.log_softmax(rows_t, -1), log_target=True,
                   reduction="batchmean")
    assert discriminative_loss(s, t, mask).item() == pytest.approx(ref.item(), rel=1e-5)


def test_hard_unit_loss_is_cross_entropy_to_the_teacher_argmax():
    s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = _mask([4, 3], 4)
    ref = F.cross_entropy(s[~mask], t[~mask].argmax(-1))
    assert hard_unit_loss(s, t, mask).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("disc_head", ["cos", "hard"])
def test_distillation_loss_is_regression_plus_weighted_disc_or_frontend_l1(disc_head):
    """losses.distillation_loss: L = L_reg + disc_weight * L_disc (L_hard for "hard"), or L_fe."""
    torch.manual_seed(0)
    pred, target, mask = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8), _mask([5, 3], 5)
    s_logits, t_logits = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    total, parts = losses.distillation_loss(pred, target, mask, s_logits, t_logits, l1_weight=0.5,
                                            cos_weight=2.0, disc_weight=0.3, disc_head=disc_head)
    reg, _ = regression_loss(pred, target, mask, 0.5, 2.0)
    disc = (hard_unit_loss if disc_head == "hard" else discriminative_loss)(s_logits, t_logits, mask)
    assert torch.equal(total, reg + 0.3 * disc) and parts["disc"] == disc.item()
    assert len(parts["l1_layers"]) == 3
    fe, parts = losses.distillation_loss(pred[0], target[0], mask, frontend_only=True)
    assert torch.equal(fe, frontend_loss(pred[0], target[0], mask)) and parts == {"frontend_l1": fe.item()}


def test_frontend_loss_is_l1_over_real_frames():
    pred = torch.tensor([[[1.0, -1.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert frontend_loss(pred, target, _mask([1], 2)).item() == pytest.approx(1.5)  # (1 + 2) / 2


@pytest.mark.parametrize("disc_head", ["cos", "linear", "hard", None])
def test_distill_heads_output_shapes(disc_head):
    teacher = _prediction_head(12, 6, 9)
    heads = DistillHeads(8, 12, [(1, 1), (2, 2), (2, 3)], disc_head, teacher.codewords, tau=0.5)
    hidden = [torch.randn(2, 5, 8) for _ in range(3)]
    pred, logits = heads(hidden)
    assert pred.shape == (3, 2, 5, 12)
    assert (logits is None) if disc_head is None else (logits.shape == (2, 5, 9))
    assert torch.allclose(pred[0], heads.proj[0](hidden[1]))


def test_sw_heads_are_distilhuberts_expand_last_and_dt_heads_one_linear_per_layer():
    """S&W: Linear(D -> N*D), GELU, one Linear(D -> C) per target layer, equal to s3prl's
    output_layer (Linear, GELU, SplitLinear; upstream/distiller) run with the same weights."""
    torch.manual_seed(0)
    D, C, N, B, T = 8, 12, 3, 2, 5
    heads = DistillHeads(D, C, [(2, 4), (2, 8), (2, 12)], style="last")
    assert heads.expand.weight.shape == (N * D, D)
    assert [tuple(p.weight.shape) for p in heads.proj] == [(C, D)] * N
    hidden = [torch.randn(B, T, D) for _ in range(3)]
    pred, _ = heads(hidden)
    # s3prl: x = GELU(Linear(h)) reshaped to (B, T, N, 1, D); SplitLinear's weight [N, D, C] and
    # bias [1, 1, N, C]; then (B, T, N, C) -> (B, N, T, C). Ours stacks N first: (N, B, T, C).
    weight = torch.stack([p.weight.t() for p in heads.proj])
    bias = torch.stack([p.bias for p in heads.proj])[None, None]
    x = torch.nn.GELU()(hidden[2] @ heads.expand.weight.t() + heads.expand.bias).reshape(B, T, N, 1, D)
    ref = torch.einsum("...klm,kmn->...kln", x, weight).squeeze(3) + bias
    torch.testing.assert_close(pred, ref.permute(2, 0, 1, 3))
    assert not torch.allclose(pred, torch.stack([p(hidden[2]) for p in heads.proj]))  # not plain Linear heads
    dt = DistillHeads(D, C, [(1, 1), (2, 2)], style="layerwise")  # D&T: layer i -> Linear -> teacher layer i
    assert dt.expand is None
    torch.testing.assert_close(dt(hidden)[0], torch.stack([dt.proj[0](hidden[1]), dt.proj[1](hidden[2])]))
    with pytest.raises(ValueError, match="one student layer"):
        DistillHeads(D, C, [(1, 4), (2, 8)], style="last")


def test_distiller_gives_each_preset_its_head_style():
    teacher = tiny_teacher()
    args = distill.parse_args(["--teacher", "-", "--data", "-", "--out-dir", "-", "--disc-weight", "0.5"])
    for preset, style, n_proj in (("distilhubert", "last", 3), ("fithubert", "layerwise", 4)):
        student = build_student(preset, teacher, layers=2 if style == "last" else 4)
        heads = distill.make_distiller(args, preset, student, teacher)[0].heads
        assert heads.config()["style"] == style and len(heads.proj) == n_proj
        assert (heads.expand is not None) == (style == "last")


@pytest.mark.parametrize("disc_head", ["cos", "hard"])
def test_cos_and_hard_heads_equal_the_teachers_prediction_head_and_codewords_are_frozen(disc_head):
    """Same weights in a student head and in model.PredictionHead give the same logits."""
    teacher = _prediction_head(8, 6, 9).requires_grad_(False)
    heads = DistillHeads(8, 12, [(1, 1)], disc_head, teacher.codewords, tau=0.1)
    heads.disc.load_state_dict(teacher.final_proj.state_dict())  # Linear(D -> F), F = 6, not K = 9
    assert "codewords" not in dict(heads.named_parameters()) and "codewords" in heads.state_dict()
    h = torch.randn(2, 5, 8)
    _, logits = heads([h, h])
    torch.testing.assert_close(logits, teacher.logits(h, 0.1))
    assert discriminative_loss(logits, teacher.logits(h, 0.1), None).item() == pytest.approx(0.0, abs=1e-5)


def test_hard_head_loss_is_the_authors_type3_cross_entropy_over_cosine_logits():
    """pretrain/distillFBANK (type3): CE over cos(student proj, [positive, all codewords]) / tau,
    the positive's copy among the codewords set to -inf, target 0; the positive is the
    codeword of the teacher's argmax unit."""
    torch.manual_seed(0)
    teacher = _prediction_head(8, 6, 9).requires_grad_(False)
    heads = DistillHeads(8, 12, [], "hard", teacher.codewords, tau=0.1)
    h_s, h_t, mask = torch.randn(2, 5, 8), torch.randn(2, 5, 8), _mask([5, 3], 5)
    _, s_logits = heads([h_s])
    loss = hard_unit_loss(s_logits, teacher.logits(h_t, 0.1), mask)
    emb = heads.disc(h_s)[~mask]                                        # (R, F)
    label = teacher.logits(h_t, 0.1)[~mask].argmax(-1)                  # (R,)
    cw = teacher.codewords
    pos, negs = cw[label], cw[:, None].expand(-1, len(label), -1)       # (R, F), (K, R, F)
    neg_is_pos = (pos == negs).all(-1)
    logits = torch.cosine_similarity(emb, torch.cat([pos[None], negs]), dim=-1) / 0.1  # (K + 1, R)
    logits[1:][neg_is_pos] = -math.inf
    ref = F.cross_entropy(logits.t(), torch.zeros(len(label), dtype=torch.long))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_gradients_reach_the_student_only():
    teacher = _prediction_head(8, 6, 9)  # codewords and final_proj require grad on purpose
    student = torch.nn.Linear(4, 8)
    heads = DistillHeads(8, 8, [(1, 1)], "cos", teacher.codewords, tau=1.0)
    x = torch.randn(2, 5, 4)
    h_s = student(x)
    h_t = torch.randn(2, 5, 8, requires_grad=True)
    pred, logits = heads([x, h_s])
    mask = _mask([5, 3], 5)
    loss = regression_loss(pred, torch.stack([h_t]), mask)[0] + \
        discriminative_loss(logits, teacher.logits(h_t, 1.0), mask)
    loss.backward()
    assert student.weight.grad is not None and heads.disc.weight.grad is not None
    assert heads.proj[0].weight.grad is not None
    assert h_t.grad is None and teacher.codewords.grad is None and teacher.final_proj.weight.grad is None
    assert not heads.codewords.requires_grad


@pytest.mark.parametrize("style,disc_head", [("last", "cos"), ("last", "hard"), ("layerwise", "linear")])
def test_distill_heads_rebuild_from_config_and_state_dict(style, disc_head):
    heads = DistillHeads(8, 12, [(2, 4), (2, 8)], disc_head, torch.randn(9, 6), tau=0.3, style=style)
    cfg = heads.config()
    assert all(not isinstance(v, torch.Tensor) for v in cfg.values())
    again = DistillHeads(**cfg)
    again.load_state_dict(heads.state_dict())
    hidden = [torch.randn(1, 4, 8) for _ in range(3)]
    for a, b in zip(heads(hidden), again(hidden)):
        assert torch.equal(a, b)
    assert again.teacher_layers == [4, 8]
    with pytest.raises(ValueError, match="codewords"):
        DistillHeads(8, 12, [], "linear")


# ----------------------------------------------------------------------------------------------
# fbank_frontend.py: Kaldi fbank, CMVN, SpecAugment, subsampler, frame alignment


# Max |ours - kaldi.fbank| measured on random audio: 8e-5 on log-mel values up to ~26 (both
# float32; the mel matrix is built in float64 here, in float32 in torchaudio).
FBANK_ATOL = 2e-4


def _waves(lengths, seed=0, pad_value=0.0):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    w = torch.randn(len(lengths), S, generator=g) * 0.1 * torch.linspace(0.01, 1, S)
    for i, n in enumerate(lengths):
        w[i, n:] = pad_value
    return w, torch.tensor(lengths)


def test_mel_banks_equal_torchaudio_kaldi_get_mel_banks():
    ref, _ = kaldi.get_mel_banks(80, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    ours = fbf.kaldi_mel_banks()
    assert ours.shape == (80, 257) and (ours[:, -1] == 0).all()
    assert torch.allclose(ours[:, :256], ref, atol=5e-5)


def test_fbank_matches_kaldi_per_utterance_in_a_padded_batch():
    lengths = [16000, 12345, 400, 401, 560, 399, 7000]
    waves, lens = _waves(lengths, pad_value=math.nan)  # NaN padding must not reach real frames
    fb, frames = fbf.kaldi_fbank(waves, lens)
    assert frames.tolist() == [1 + (n - 400) // 160 if n >= 400 else 0 for n in lengths]
    for i, n in enumerate(lengths):
        if n < 400:
            assert (fb[i] == 0).all()
            continue
        ref = kaldi.fbank(waves[i, :n][None] * 32768, num_mel_bins=80, dither=0.0, energy_floor=0.0,
                          sample_frequency=16000)
        assert ref.shape[0] == frames[i]
        assert (fb[i, : frames[i]] - ref).abs().max().item() < FBANK_ATOL
        assert (fb[i, frames[i]:] == 0).all()


def test_fbank_stays_fp32_under_autocast():
    waves, lens = _waves([4000, 3000])
    ref, _ = fbf.kaldi_fbank(waves, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fbf.kaldi_fbank(waves, lens)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_frontend_parameter_counts_match_the_paper_budget():
    for dim, expected in [(480, 615_840), (768, 1_206_528)]:
        fe = fbf.FbankFrontend(dim)
        assert sum(p.numel() for p in fe.parameters()) == expected
        assert {"cmvn_mean", "cmvn_std"} <= set(fe.state_dict())  # CMVN: buffers in the checkpoint


def test_frontend_projection_starts_xavier_normal_with_zero_bias():
    """The authors' FbankExtractor.linear (nn.init.xavier_normal_, zeros_), seen in a built student:
    std sqrt(2 / (fan_in + fan_out)) = 0.046 for 480 -> 480, where PyTorch's default uniform init
    has 1 / sqrt(3 fan_in) = 0.026 and kurtosis 1.8 (a normal's: 3)."""
    torch.manual_seed(0)
    proj = build_student("fithubert-fbank").feature_extractor.proj
    w = proj.weight.detach().double()
    assert torch.equal(proj.bias, torch.zeros_like(proj.bias))
    assert w.std().item() == pytest.approx(math.sqrt(2 / (w.shape[0] + w.shape[1])), rel=0.01)
    assert abs(w.mean().item()) < 1e-3
    kurtosis = ((w - w.mean()) ** 4).mean() / w.var(unbiased=False) ** 2
    assert kurtosis.item() == pytest.approx(3.0, abs=0.1)


def test_padding_does_not_change_real_frames_of_the_frontend():
    torch.manual_seed(0)  # the front-end's weights and CMVN below: the same in any test order
    fe = fbf.FbankFrontend(16).eval()
    fe.set_cmvn(torch.randn(80), torch.rand(80) + 0.5)
    lengths = [9000, 5000, 3333, 400]
    waves, lens = _waves(lengths, seed=3, pad_value=math.nan)
    out, out_lens = fe(waves, lens)
    assert out_lens.tolist() == [(1 + (n - 400) // 160 + 1) // 2 for n in lengths]
    for i, n in enumerate(lengths):
        alone, alone_len = fe(waves[i:i + 1, :n], None)
        assert alone_len.item() == out_lens[i] == alone.shape[1]
        assert torch.allclose(out[i, : out_lens[i]], alone[0], atol=1e-5)
        assert (out[i, out_lens[i]:] == 0).all()


def _cnn_frames(n):
    """Reference: run the lengths through HuBERT's CNN layer by layer (torchaudio's formula)."""
    for _, k, s in model.hubert_cnn(512):
        n = (n - k) // s + 1
    return n


def _hubert_cnn():
    """HuBERT's CNN geometry (kernels, strides) with 16 channels and per-frame layer norms, so
    that no normalisation mixes frames and a frame's gradient shows exactly what it reads."""
    config = EncoderConfig(extractor_mode="layer_norm", conv_layers=model.hubert_cnn(16),
                           dim=16, layers=1, heads=2, ffn=16)
    return Encoder(config).feature_extractor


def _read_span_centres(fn, num_samples):
    """Centre (in samples) of the input span that each output frame of fn([1, S]) -> [1, T, C]
    reads, found by backpropagating from each frame in turn: (first + last nonzero gradient) / 2."""
    x = (0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))).requires_grad_()
    out = fn(x)
    centres = []
    for k in range(out.shape[1]):
        grad, = torch.autograd.grad(out[0, k].sum(), x, retain_graph=True)
        read = grad[0].nonzero()
        centres.append((read.min().item() + read.max().item()) / 2)
    return torch.tensor(centres, dtype=torch.float64)


def test_fbank_frames_match_the_cnn_frames_and_centres_align():
    """The Fbank student's 20 ms frame k covers the same audio as HuBERT's CNN frame k: equal
    counts for every length, and equal centres measured on the modules themselves."""
    lengths = torch.arange(8000, 160_001, 37)  # 0.5 s .. 10 s, every 37 samples
    fbank_frames = fbf.num_subsampled_frames(fbf.num_fbank_frames(lengths))
    cnn = torch.tensor([_cnn_frames(int(n)) for n in lengths])
    assert torch.equal(fbank_frames, cnn)
    fe, cnn_module = fbf.FbankFrontend(8).eval(), _hubert_cnn().eval()
    with torch.no_grad():  # the formulas are what the modules really output, near every boundary
        for n in [400, 719, 720, 1039, 1040, 1359, 1360, 4321, 16_000]:
            w = torch.randn(1, n)
            formula = int(fbf.num_subsampled_frames(fbf.num_fbank_frames(torch.tensor(n))))
            assert fe(w)[0].shape[1] == cnn_module(w, None)[0].shape[1] == _cnn_frames(n) == formula
    # Centres, in samples. CNN frame k: measured. Fbank 10 ms frame t: measured on kaldi_fbank; the
    # subsampler's frame k is centred on the 10 ms frame under its middle tap (read from its conv).
    S = 8000
    cnn_centres = _read_span_centres(lambda x: cnn_module(x, None)[0], S)
    fbank10_centres = _read_span_centres(lambda x: fbf.kaldi_fbank(x)[0], S)
    (kernel,), (stride,), (padding,) = fe.conv.kernel_size, fe.conv.stride, fe.conv.padding
    middle_tap = [k * stride - padding + (kernel - 1) // 2 for k in range(len(cnn_centres))]
    assert kernel % 2 == 1 and middle_tap[-1] < len(fbank10_centres)
    assert torch.equal(fbank10_centres[middle_tap], cnn_centres)
    assert cnn_centres[1] - cnn_centres[0] == 320  # and both move by one 20 ms hop per frame


def test_cmvn_normalises_the_features_it_was_computed_on():
    waves, lens = _waves([6000, 9000, 4000], seed=5)
    mean, std = fbf.compute_cmvn(waves[i, :n] for i, n in enumerate(lens.tolist()))
    assert mean.shape == std.shape == (80,)
    fe = fbf.FbankFrontend(8).eval()
    fe.set_cmvn(mean, std)
    feats, frames = fe.fbank(waves, lens)
    real = feats[~_mask(frames.tolist(), feats.shape[1])]
    assert real.mean(0).abs().max().item() < 1e-3
    assert (real.std(0, unbiased=False) - 1).abs().max().item() < 1e-3


def test_specaugment_masks_only_in_training_with_the_flag():
    waves, lens = _waves([8000, 6000], seed=7)
    plain = fbf.FbankFrontend(8).train()
    aug = fbf.FbankFrontend(8, specaugment=True)
    clean, frames = plain.fbank(waves, lens)  # training mode but flag off: untouched
    assert torch.equal(aug.eval().fbank(waves, lens)[0], clean)
    masked, _ = aug.train().fbank(waves, lens)
    assert ((masked == 0) & (clean != 0)).any()


def test_specaugment_masks_at_most_2x30_bins_and_2x40_real_frames():
    frames = torch.tensor([100, 85, 50, 0])
    for seed in range(20):
        out = fbf.spec_augment(torch.ones(4, 100, 80), frames, torch.Generator().manual_seed(seed))
        for i, n in enumerate(frames.tolist()):
            x = out[i, :n]
            bins, times = (x == 0).all(0), (x == 0).all(1)
            assert ((x == 0) == (bins[None, :] | times[:, None])).all()  # only whole bands
            assert times.sum() <= 2 * fbf.TIME_MASK_WIDTH
            if n > 2 * fbf.TIME_MASK_WIDTH:  # some frame is left unmasked in time
                assert bins.sum() <= 2 * fbf.FREQ_MASK_WIDTH
            # time masks start inside the real frames and end within them when they fit
            assert not (out[i, n:] == 0).all(1).any() or n < fbf.TIME_MASK_WIDTH


# ----------------------------------------------------------------------------------------------
# pretrain.py: MFCC k-means targets, masked prediction, teacher export (on the toy corpus)

TINY_PRETRAIN = ["--layers", "2", "--dim", "32", "--ffn", "64", "--heads", "2", "--conv-dim", "32",
                 "--pos-conv-kernel", "8", "--pos-conv-groups", "4", "--final-dim", "16", "--clusters", "8",
                 "--batch-seconds", "6", "--log-every", "1"]


def run_pretrain(corpus, out, *extra):
    pretrain.main(pretrain.parse_args(["--data", str(corpus / "train"), "--out-dir", str(out), *TINY_PRETRAIN, *extra]))


def test_kmeans_assigns_every_frame_to_its_nearest_centroid_and_lowers_inertia():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 5, generator=g) + 6 * torch.randn(1, 5, generator=g) for _ in range(4)])
    seeding = pretrain.kmeans(x, 6, iterations=0, seed=0)
    centroids = pretrain.kmeans(x, 6, iterations=50, seed=0)
    brute = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1).argmin(1)
    labels = pretrain.assign(x, centroids)
    assert torch.equal(labels, brute)
    assert pretrain.inertia(x, centroids) < pretrain.inertia(x, seeding)
    for k in labels.unique():  # converged Lloyd: every centroid is the mean of its frames
        assert torch.allclose(centroids[k], x[labels == k].mean(0), atol=1e-4)
    assert torch.equal(centroids, pretrain.kmeans(x, 6, iterations=50, seed=0))  # seeded


def test_mfcc_label_count_equals_cnn_frame_count_for_many_lengths():
    layers = model.hubert_cnn(8)
    cnn = model.Encoder(model.EncoderConfig(conv_layers=layers, dim=16, layers=1, heads=2, ffn=16,
                                            pos_conv_kernel=4, pos_conv_groups=2)).feature_extractor
    for n in range(400, 12_000, 83):
        wave = torch.randn(n)
        with torch.no_grad():
            T = cnn(wave[None], None)[0].shape[1]
        assert pretrain.num_frames(n, layers) == T
        units = torch.arange(len(pretrain.mfcc_features(wave)))[::pretrain.MFCC_PER_FRAME]
        assert len(pretrain.mfcc_features(wave)) == (n - 400) // 160 + 1  # 25 ms / 10 ms kaldi frames
        assert abs(len(units) - T) <= 1
        assert len(pretrain.align_labels(units, T)) == T


def test_masked_prediction_matches_torchaudio_hubert_pretrain_forward():
    args = pretrain.parse_args(["--data", "x", "--out-dir", "x", *TINY_PRETRAIN])
    hubert = pretrain.build_hubert(pretrain.encoder_config(args), 8, args).eval()
    lengths = torch.tensor([16_000, 11_000])
    waves = torch.randn(2, 16_000) * (torch.arange(16_000)[None] < lengths[:, None])
    T = pretrain.num_frames(16_000, model.hubert_cnn(args.conv_dim))
    labels = torch.randint(8, (2, T))
    torch.manual_seed(1)  # the same random mask in both calls
    logit_m, logit_u, penalty = hubert(waves, labels, lengths)
    torch.manual_seed(1)
    out = pretrain.masked_prediction(hubert, waves, lengths, labels)
    for ref, ours, units in [(logit_m, out["logits_m"], out["units_m"]), (logit_u, out["logits_u"], out["units_u"])]:
        assert ref.shape == (len(units), 8 + 1)  # torchaudio: positive at 0, then all units
        assert torch.allclose(ref[:, 0], ours.gather(1, units[:, None])[:, 0], atol=1e-4)
        target0 = torch.zeros(len(ref), dtype=torch.long)
        assert torch.allclose(F.cross_entropy(ref, target0), F.cross_entropy(ours, units), atol=1e-5)
    assert torch.allclose(penalty, out["feature_penalty"])


def test_pretrain_cli_writes_a_teacher_with_a_head_that_loads_weights_only(toy_corpus, tmp_path):
    run_pretrain(toy_corpus, tmp_path, "--max-steps", "3")
    ckpt = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert ckpt["kind"] == "teacher" and ckpt["targets"]["features"] == "mfcc"
    assert ckpt["targets"]["centroids"].shape == (8, 39)
    teacher = model.load_teacher(str(tmp_path / "teacher.pt"))
    assert teacher.head is not None and teacher.head.codewords.shape == (8, 16)
    # The exported encoder computes exactly what torchaudio's trained wav2vec2 computes.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    args = pretrain.parse_args(["--data", "x", "--out-dir", "x", *TINY_PRETRAIN])
    hubert = pretrain.build_hubert(pretrain.encoder_config(args), 8, args).eval()
    hubert.load_state_dict(state["hubert"])
    waves, lengths = torch.randn(2, 12_000), torch.tensor([12_000, 9_000])
    hidden, frame_lengths = teacher(waves, lengths)
    with torch.no_grad():
        ref, ref_lengths = hubert.wav2vec2(waves, lengths)
    assert torch.equal(frame_lengths, ref_lengths)
    assert torch.allclose(hidden[-1], ref, atol=1e-5)
    logs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in logs] == [1, 2, 3] and all(0 <= r["acc_m"] <= 1 for r in logs)


def test_second_iteration_clusters_a_middle_layer_of_the_first_model(toy_corpus, tmp_path):
    run_pretrain(toy_corpus, tmp_path, "--max-steps", "2", "--iterations", "2", "--clusters-iter2", "12")
    assert os.path.exists(tmp_path / "iter1.pt")
    ckpt = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert ckpt["targets"]["iteration"] == 2 and ckpt["targets"]["features"] == "layer 1"
    assert ckpt["targets"]["centroids"].shape == (12, 32) and ckpt["head"]["codewords"].shape == (12, 16)


def test_iteration1_flag_runs_the_second_iteration_on_a_given_teacher(toy_corpus, tmp_path):
    """--iteration1 T: HuBERT's second iteration on units from T's layer (e.g. the shipped teacher),
    without training a first one; the units are those a two-iteration run makes from its own iter1.pt."""
    run_pretrain(toy_corpus, tmp_path / "both", "--max-steps", "2", "--iterations", "2", "--clusters-iter2", "12")
    given = str(tmp_path / "both" / "iter1.pt")
    run_pretrain(toy_corpus, tmp_path / "given", "--max-steps", "2", "--iteration1", given, "--clusters-iter2", "12",
                 "--unmasked-weight", "0")
    assert not os.path.exists(tmp_path / "given" / "iter1.pt")
    both, ckpt = (torch.load(tmp_path / d / "teacher.pt", weights_only=True) for d in ("both", "given"))
    assert ckpt["targets"]["iteration"] == 2 and ckpt["targets"]["iteration1"] == given
    assert torch.equal(ckpt["targets"]["centroids"], both["targets"]["centroids"])
    logs = [json.loads(line) for line in open(tmp_path / "given" / "log.jsonl")]
    assert [r["iter"] for r in logs] == [2, 2]


# ----------------------------------------------------------------------------------------------
# distill.py: the distillation driver end to end (the test teacher on the toy corpus)


def run_distill(args, corpus, teacher, out):
    return distill.main(distill.parse_args(
        ["--teacher", teacher, "--data", str(corpus / "train"), "--out-dir", str(out),
         "--batch-seconds", "12", "--log-every", "1", "--device", "cpu"] + args))


@pytest.mark.parametrize("head", ["cos", "linear", "hard"])
def test_two_step_distill_with_each_discriminative_head(head, toy_corpus, teacher, tmp_path, monkeypatch):
    """Each logged disc is the head's loss (KL, or for "hard" CE to the teacher's argmax) of its
    logits: HuBERT's cosine logits / tau for "cos" and "hard" (model.PredictionHead with the
    head's weights), Linear / tau for "linear"; and the heads train."""
    tau, calls = 0.1, []
    head_logits = distill.DistillHeads.disc_logits
    loss_name = "hard_unit_loss" if head == "hard" else "discriminative_loss"
    loss_fn = getattr(losses, loss_name)

    def spy_logits(self, h):  # records the weights before this step's update
        out = head_logits(self, h)
        calls.append({"state": {k: v.detach().clone() for k, v in self.state_dict().items()},
                      "h": h.detach().clone(), "head_out": out.detach().clone()})
        return out

    def spy_loss(s, t, mask):
        value = loss_fn(s, t, mask)
        calls[-1].update(s=s.detach().clone(), t=t.detach().clone(), real=~mask, value=value.item())
        return value

    monkeypatch.setattr(distill.DistillHeads, "disc_logits", spy_logits)
    monkeypatch.setattr(losses, loss_name, spy_loss)
    run_distill(["--student", "tiny", "--max-steps", "2", "--disc-weight", "0.5", "--disc-head", head,
              "--tau", str(tau)], toy_corpus, teacher, tmp_path)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2] and len(calls) == 2
    assert [r["disc"] for r in log] == pytest.approx([c["value"] for c in calls], rel=1e-6)
    for c in calls:
        s, t, real = c["s"], c["t"], c["real"]
        assert torch.equal(s, c["head_out"][:, :s.shape[1]])
        assert t.abs().max() <= 1 / tau + 1e-4 and t.abs().max() > 1  # teacher: cosines / tau
        if head == "hard":
            ref = F.cross_entropy(s[real], t[real].argmax(-1))
        else:
            ref = F.kl_div(F.log_softmax(s[real], -1), F.log_softmax(t[real], -1), log_target=True,
                           reduction="batchmean")
        assert c["value"] == pytest.approx(ref.item(), rel=1e-5)
        w, b = c["state"]["disc.weight"], c["state"]["disc.bias"]
        if head == "linear":
            expected = F.linear(c["h"], w, b) / tau
        else:  # Linear(D -> F) then the teacher's own head formula with its frozen codewords
            ph = model.PredictionHead(w.shape[1], w.shape[0], len(c["state"]["codewords"]))
            ph.load_state_dict({"final_proj.weight": w, "final_proj.bias": b, "codewords": c["state"]["codewords"]})
            expected = ph.logits(c["h"], tau)
        torch.testing.assert_close(c["head_out"], expected)
    ckpt = checkpoints.load_checkpoint(tmp_path / "student.pt")
    assert ckpt["kind"] == "student" and ckpt["heads_config"]["disc_head"] == head
    assert ckpt["heads_config"]["style"] == "last"  # tiny is an S&W preset: expand-last heads
    before = calls[0]["state"]
    for k in ("disc.weight", "expand.weight", "proj.0.weight"):
        assert not torch.equal(ckpt["heads"][k], before[k]), k  # trained
    if head != "linear":
        assert torch.equal(ckpt["heads"]["codewords"], before["codewords"])  # frozen
    assert json.load(open(tmp_path / "args.json"))["disc_head"] == head


def test_disc_head_defaults_to_the_authors_cosine_head(toy_corpus, teacher, tmp_path):
    """`--disc-weight` alone gives the authors' default head (their type1): a Linear to the codeword
    width, cosine to the teacher's frozen codewords; not a free linear head over the units."""
    assert distill.parse_args(["--teacher", "t", "--data", "d", "--out-dir", "o"]).disc_head == "cos"
    run_distill(["--student", "tiny", "--max-steps", "1", "--disc-weight", "0.5"], toy_corpus, teacher, tmp_path)
    ckpt = checkpoints.load_checkpoint(tmp_path / "student.pt")
    codewords = load_teacher(teacher).head.codewords
    assert ckpt["heads_config"]["disc_head"] == "cos"
    assert ckpt["heads"]["disc.weight"].shape[0] == codewords.shape[1]  # D -> F, not D -> K
    assert torch.equal(ckpt["heads"]["codewords"], codewords)


def test_distill_decays_weights_and_not_biases_as_the_authors(toy_corpus, teacher, tmp_path, monkeypatch):
    """The authors' s3prl parameter groups: weight decay 0.01 on every trainable parameter whose name
    holds no "bias" (layer-norm weights included), none on biases; checked on distill.py's optimizer."""
    made = []

    def adamw(named, args):
        named = list(named)
        made.append((named, real(named, args)))
        return made[-1][1]
    real = runtime.adamw
    monkeypatch.setattr(runtime, "adamw", adamw)
    run_distill(["--student", "tiny", "--max-steps", "1"], toy_corpus, teacher, tmp_path)
    (named, optimizer), = made
    decay, plain = optimizer.param_groups
    trainable = [(n, p) for n, p in named if p.requires_grad]
    assert (decay["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    assert {id(p) for p in decay["params"]} == {id(p) for n, p in trainable if "bias" not in n}
    assert {id(p) for p in plain["params"]} == {id(p) for n, p in trainable if "bias" in n}
    assert any("layer_norm.weight" in n for n, p in trainable) and plain["params"]


def test_distillation_loss_falls(toy_corpus, teacher, tmp_path):
    run_distill(["--student", "tiny", "--max-steps", "30", "--lr", "2e-3", "--disc-weight", "0.5"],
             toy_corpus, teacher, tmp_path)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "log.jsonl")]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_logged_distillation_losses_are_interval_means_with_per_layer_values(toy_corpus, teacher, tmp_path):
    flags = ["--student", "tiny", "--max-steps", "4", "--lr", "2e-3", "--target-layers", "1,2"]
    run_distill(flags, toy_corpus, teacher, tmp_path / "every")
    run_distill(flags + ["--log-every", "2"], toy_corpus, teacher, tmp_path / "pairs")
    every = [json.loads(line) for line in open(tmp_path / "every" / "log.jsonl")]
    pairs = [json.loads(line) for line in open(tmp_path / "pairs" / "log.jsonl")]
    assert [r["step"] for r in pairs] == [2, 4]
    for k, r in enumerate(pairs):
        for key in ("loss", "l1", "cos"):
            assert r[key] == pytest.approx((every[2 * k][key] + every[2 * k + 1][key]) / 2, rel=1e-5)
        assert len(r["l1_layers"]) == len(r["cos_layers"]) == 2  # one value per predicted layer
        assert r["l1"] == pytest.approx(sum(r["l1_layers"]) / 2, rel=1e-5)  # the regression averages layers


def test_teacher_cache_holds_each_utterances_states_and_gives_the_same_loss(toy_corpus, tmp_path):
    """TeacherCache: every utterance's states equal the teacher run on it alone (fp16 rounding),
    zero-padded per batch with the teacher's frame lengths; a one-utterance batch's loss with
    them equals the loss with a teacher forward; a file made for another teacher or other audio
    is refused."""
    teacher = tiny_teacher()
    utts = data.drop_short(data.load_corpus([str(toy_corpus / "train")]), quiet=True)
    path = str(tmp_path / "targets.pt")
    cache = caches.TeacherCache(path, teacher, utts, torch.device("cpu"), quiet=True)
    waves = [data.load_audio(u.path) for u in utts[:3]]
    alone = [teacher(w[None], torch.tensor([len(w)])) for w in waves]
    states, frame_lengths = cache([u.id for u in utts[:3]], torch.device("cpu"))
    assert len(states) == len(alone[0][0]) == TEACHER["layers"] + 1
    assert frame_lengths.tolist() == [a[1].item() for a in alone]
    for b, (hidden, n) in enumerate(alone):
        for layer in range(len(states)):
            torch.testing.assert_close(states[layer][b, :n.item()], hidden[layer][0], rtol=2e-3, atol=2e-3)
            assert not states[layer][b, n.item():].any()  # padding
    args = distill.parse_args(["--teacher", "x", "--data", "x", "--out-dir", "x", "--student", "tiny"])
    distiller, _ = distill.make_distiller(args, "tiny", tiny_student(), teacher)
    distiller.eval()  # no dropout: both losses from the same student
    wave, lengths = waves[0][None], torch.tensor([len(waves[0])])
    ran, _ = distill.distill_loss(args, teacher, distiller, wave, lengths, False)
    read, _ = distill.distill_loss(args, teacher, distiller, wave, lengths, False, cache([utts[0].id], "cpu"))
    assert read.item() == pytest.approx(ran.item(), rel=1e-3)
    with pytest.raises(ValueError, match="another teacher"):
        caches.TeacherCache(path, tiny_teacher(layers=2), utts, torch.device("cpu"), quiet=True)
    other = [dataclasses.replace(utts[0], id="someone-else")] + utts[1:]
    with pytest.raises(ValueError, match="other audio.*someone-else is missing"):
        caches.TeacherCache(path, teacher, other, torch.device("cpu"), quiet=True)
    longer = [dataclasses.replace(utts[0], num_samples=utts[0].num_samples + 1)] + utts[1:]
    with pytest.raises(ValueError, match=f"other audio.*{utts[0].id} is of another length"):
        caches.TeacherCache(path, teacher, longer, torch.device("cpu"), quiet=True)


def test_distill_with_teacher_cache_makes_it_once_and_runs_read_it_alike(toy_corpus, teacher, tmp_path, capsys):
    """The CLI path: the first run makes --teacher-cache (progress printed), a second run reads it
    (no teacher forward made it again) and logs the very same losses."""
    flags = ["--student", "tiny", "--max-steps", "3", "--teacher-cache", str(tmp_path / "targets.pt")]
    run_distill(flags, toy_corpus, teacher, tmp_path / "first")
    assert "teacher cache" in capsys.readouterr().out
    run_distill(flags, toy_corpus, teacher, tmp_path / "second")
    assert "teacher cache" not in capsys.readouterr().out
    first, second = ([json.loads(line) for line in open(tmp_path / run / "log.jsonl")] for run in ("first", "second"))
    assert [r["loss"] for r in first] == [r["loss"] for r in second] and len(first) == 3


def test_training_curves_of_a_distillation_and_a_fine_tuning_log(toy_corpus, teacher, tmp_path, capsys):
    """python -m tools.curves LOG: a real distillation log (loss parts, unit agreements) and a
    fine-tuning one (dev WER) each become a PNG beside the log; a missing log is a one-line error."""
    import tools.curves as curves
    run_distill(["--student", "tiny", "--max-steps", "2", "--disc-weight", "0.5"], toy_corpus, teacher, tmp_path / "d")
    log = tmp_path / "d" / "log.jsonl"
    rows = curves.read_log(str(log))
    assert curves.series(rows, "disc")[0] == (1, 2) and curves.series(rows, "unit_reg")[0] == (1, 2)
    curves.main(curves.parse_args([str(log)]))
    assert (tmp_path / "d" / "curves.png").stat().st_size > 10_000 and "curves.png" in capsys.readouterr().out
    (tmp_path / "ctc.jsonl").write_text('{"step": 10, "ctc": 200.0, "grad_norm": 50.0, "lr": 1e-4}\n'
                                        '{"step": 20, "dev_wer": 90.0}\n{"step": 20, "ctc": 90.0, "grad_norm": 9.0}\n')
    curves.main(curves.parse_args([str(tmp_path / "ctc.jsonl"), "--out", str(tmp_path / "ctc.png")]))
    assert (tmp_path / "ctc.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no such log"):
        curves.main(curves.parse_args([str(tmp_path / "none.jsonl")]))


def test_teacher_cache_that_would_not_fit_is_refused_before_any_work(toy_corpus, teacher, tmp_path, monkeypatch):
    """The CLI path: with less room on the cache's disk than its size (faked), distill.py stops at
    once, saying how much it needs; nothing is written. The estimate is the size made."""
    utts = data.drop_short(data.load_corpus([str(toy_corpus / "train")]), quiet=True)
    real = caches.check_room(str(tmp_path / "x.pt"), load_teacher(teacher).config, utts)
    made = caches.TeacherCache(str(tmp_path / "made.pt"), load_teacher(teacher), utts, torch.device("cpu"), quiet=True)
    assert real == pytest.approx(made.hidden.numel() * 2, rel=0.02)
    monkeypatch.setattr(caches.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=real // 2))
    with pytest.raises(ValueError, match=rf"needs ~{real / 1e9:.1f} GB .* free on its disk"):
        run_distill(["--student", "tiny", "--max-steps", "1", "--teacher-cache", str(tmp_path / "c.pt")], toy_corpus,
                    teacher, tmp_path / "run")
    assert not os.path.exists(tmp_path / "c.pt") and not os.path.exists(tmp_path / "run" / "log.jsonl")


def test_distill_attention_dropout_flag_reaches_the_student(tone_corpus, teacher, tmp_path):
    """--attention-dropout overrides the preset's 0.1 (the authors') in the student that trains and
    in the config that student.pt keeps; without it the preset's value stays."""
    for flags, expected in (((), 0.1), (("--attention-dropout", "0"), 0.0)):
        out = tmp_path / f"p{expected}"
        distill.main(distill_args(tone_corpus, teacher, out, "--max-steps", "1", *flags))
        ckpt = checkpoints.load_checkpoint(out / "student.pt")
        assert ckpt["config"]["attention_dropout"] == expected
        student = model.encoder_from_checkpoint(ckpt, "student.pt")
        assert [layer.attention.dropout for layer in student.encoder.transformer.layers] == [expected] * 2


def test_distill_cache_frontend_freezes_the_cnn_and_gives_the_uncached_first_loss(tone_corpus, tmp_path,
                                                                                   monkeypatch):
    """--cache-frontend: the student's CNN stays the teacher's (no gradient, no update) while the rest
    trains; each utterance's CNN output is computed once for the whole run; with a padding-invariant
    (layer_norm) CNN the first step's loss is the one a run without the cache computes from padded
    batches. The CLI path also refuses it for an Fbank student, in one line, before any work."""
    ln = tiny_teacher(extractor_mode="layer_norm")
    teacher = str(tmp_path / "ln_teacher.pt")
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(ln.encoder, "teacher", head=ln.head.state_dict()),
                                teacher)
    computed, features = [], model.Encoder.frontend

    def counting(self, waves, lengths):  # the student's (2 layers; the teacher has 4) CNN calls, batch sizes
        if self.config.layers == 2:
            computed.append(len(waves))
        return features(self, waves, lengths)

    distill.main(distill_args(tone_corpus, teacher, tmp_path / "plain", "--max-steps", "6"))
    monkeypatch.setattr(model.Encoder, "frontend", counting)
    distill.main(distill_args(tone_corpus, teacher, tmp_path / "cached", "--max-steps", "6", "--cache-frontend"))
    monkeypatch.undo()
    assert computed == [1] * 8  # 6 steps of 2 s batches span 1.5 epochs of 8 utterances: each one computed once
    read = lambda d: [json.loads(line)["loss"] for line in open(tmp_path / d / "log.jsonl")]
    assert read("cached")[0] == pytest.approx(read("plain")[0], rel=1e-5)
    cnn = lambda d: checkpoints.load_checkpoint(tmp_path / d / "student.pt")["encoder"]
    frozen, trained = cnn("cached"), cnn("plain")
    for k, v in ln.encoder.state_dict().items():
        if k.startswith("feature_extractor."):
            assert torch.equal(frozen[k], v), k                    # the teacher's CNN, untouched
    assert any(not torch.equal(trained[k], v) for k, v in ln.encoder.state_dict().items()
               if k.startswith("feature_extractor."))            # without the flag it trains
    k = "encoder.transformer.layers.0.feed_forward.output_dense.weight"
    assert not torch.equal(frozen[k], model.build_student("tiny", ln, dim=32, ffn=32, heads=2).state_dict()[k])
    out = run_cli("distill.py", "--teacher", teacher, "--data", tone_corpus[0], "--device", "cpu",
                  *FBANK_STUDENT, "--out-dir", str(tmp_path / "fbank"), "--cache-frontend")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: --cache-frontend needs a student with HuBERT's "
                                                          "waveform CNN"), out.stderr
    assert not os.path.exists(tmp_path / "fbank")


FBANK_STUDENT = ["--student", "fithubert-fbank", "--layers", "2", "--dim", "32", "--ffn", "32", "--heads", "2"]


def test_fbank_student_trains_front_end_alone_for_frontend_steps(toy_corpus, teacher, tmp_path, monkeypatch):
    """Stage 1 (2 steps) changes the front-end and its projection to teacher layer 0 only; stage 2
    (2 steps, after --stop-after 2 and --resume) trains the transformer and heads, not that projection."""
    built, make_distiller = [], distill.make_distiller

    def spy(*args):  # the distiller as built, before any step
        distiller, pairs = make_distiller(*args)
        built.append({k: v.detach().clone() for k, v in distiller.named_parameters()})
        return distiller, pairs

    monkeypatch.setattr(distill, "make_distiller", spy)
    run = FBANK_STUDENT + ["--max-steps", "4", "--frontend-steps", "2", "--disc-weight", "0.5"]
    run_distill(run + ["--stop-after", "2"], toy_corpus, teacher, tmp_path)
    initial = built[0]
    after1 = checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")["distiller"]
    run_distill(run + ["--resume"], toy_corpus, teacher, tmp_path)
    after2 = checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")["distiller"]
    stage1 = ("student.feature_extractor.", "frontend_proj.")
    assert {"frontend_proj.weight", "student.feature_extractor.proj.weight", "heads.disc.weight",
            "student.encoder.transformer.layers.1.feed_forward.output_dense.weight"} <= set(initial)
    for k, v in initial.items():
        if k.startswith(stage1):
            assert not torch.equal(after1[k], v), k                               # trained in stage 1
            assert torch.equal(after2[k], after1[k]) == k.startswith("frontend_proj."), k  # the front-end goes on
        else:  # the transformer and every head
            assert torch.equal(after1[k], v), k                                   # untouched in stage 1
            assert not torch.equal(after2[k], after1[k]), k                        # trained in stage 2
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert ["frontend_l1" in r for r in log] == [True, True, False, False]
    assert ["l1" in r for r in log] == [False, False, True, True]
    cmvn = checkpoints.load_checkpoint(tmp_path / "student.pt")["encoder"]["feature_extractor.cmvn_std"]
    assert not torch.allclose(cmvn, torch.ones_like(cmvn))  # statistics of the training audio


def test_run_prints_the_entropy_of_the_teachers_codeword_distribution_on_its_first_batch(
        toy_corpus, teacher, tmp_path, monkeypatch, capsys):
    """Once per run: the mean entropy of p_T = softmax(teacher.head.logits(h_last, tau)) over the
    real frames of the first batch, beside log K; at the default tau 0.1 it is well below log K."""
    batches = []
    stream = runtime.batch_stream
    monkeypatch.setattr(runtime, "batch_stream", lambda *a: (batches.append(b) or b for b in stream(*a)))
    run_distill(["--student", "tiny", "--max-steps", "2", "--disc-weight", "0.5"], toy_corpus, teacher, tmp_path)
    found = re.findall(r"tau 0.1\) on the first batch: mean entropy ([\d.]+) nats \(uniform: log (\d+) = ([\d.]+)\)",
                       capsys.readouterr().out)
    assert len(found) == 1, "printed once"
    entropy, K, uniform = float(found[0][0]), int(found[0][1]), float(found[0][2])
    teacher = load_teacher(teacher)
    hidden, frame_lengths = teacher(batches[0]["waves"], batches[0]["lengths"])
    p_t = torch.distributions.Categorical(logits=teacher.head.logits(hidden[-1], 0.1))
    expected = p_t.entropy()[~_mask(frame_lengths.tolist(), hidden[-1].shape[1])].mean().item()
    assert entropy == pytest.approx(expected, abs=1e-4)
    assert K == teacher.head.codewords.shape[0] and uniform == pytest.approx(math.log(K), abs=1e-4)
    assert entropy < 0.9 * uniform and json.load(open(tmp_path / "args.json"))["tau"] == 0.1


def test_specaugment_flag_reaches_the_fbank_front_end_from_distill_and_finetune(
        toy_corpus, teacher, tmp_path, monkeypatch):
    """distill.py --specaugment: the student masks its fbank features in training and its checkpoint
    says so; finetune.py keeps the student's setting unless --specaugment / --no-specaugment."""
    masked = []
    spec_augment = fbf.spec_augment
    monkeypatch.setattr(fbf, "spec_augment", lambda *a, **k: masked.append(1) or spec_augment(*a, **k))

    def distill_to(out, *flags):  # -> (masks applied?, the student checkpoint's setting)
        masked.clear()
        run_distill(FBANK_STUDENT + ["--max-steps", "1", *flags], toy_corpus, teacher, out)
        return bool(masked), checkpoints.load_checkpoint(out / "student.pt")["config"]["specaugment"]

    def finetune_to(out, student, *flags):  # -> (masks applied?, the CTC checkpoint's setting)
        masked.clear()
        finetune.main(finetune.parse_args(["--init", str(student), "--train", str(toy_corpus / "train"),
                                           "--out-dir", str(out), "--max-steps", "1", "--batch-seconds", "12",
                                           "--device", "cpu", *flags]))
        return bool(masked), checkpoints.load_checkpoint(out / "last.pt")["config"]["specaugment"]

    on, off = tmp_path / "on" / "student.pt", tmp_path / "off" / "student.pt"
    assert distill_to(tmp_path / "on", "--specaugment") == (True, True)
    assert distill_to(tmp_path / "off") == (False, False)
    assert model.encoder_from_checkpoint(checkpoints.load_checkpoint(on)).feature_extractor.specaugment
    assert finetune_to(tmp_path / "ft-on", off, "--specaugment") == (True, True)
    assert finetune_to(tmp_path / "ft-kept", on) == (True, True)
    assert finetune_to(tmp_path / "ft-off", on, "--no-specaugment") == (False, False)


# ----------------------------------------------------------------------------------------------
# finetune.py: CTC fine-tuning recipe, evaluation, transcription, export to transformers


def random_ctc(special_bias=0.0, feature_layer_norm=True, **config):
    """A random CTC model. special_bias raises the logits of <s>, </s>, <unk>: outputs that no
    transcript trains, which an under-trained model may still rank first. feature_layer_norm: as a
    fine-tuned teacher (True) or a distilled student (False)."""
    student = tiny_student(dropout=0.0, attention_dropout=0.0, feature_layer_norm=feature_layer_norm)
    ctc = model.CTCModel(student, model.CTCConfig(**config))
    with torch.no_grad():
        ctc.proj.bias[[data.VOCAB.index(t) for t in ("<s>", "</s>", "<unk>")]] = special_bias
    return ctc.eval()


def run_finetune(corpus, student, out_dir, *flags):
    """finetune.main on (train, dev) = corpus (4 s batches, no warm-up); returns the last.pt checkpoint."""
    train_dir, dev_dir = corpus
    args = finetune.parse_args(["--init", student, "--train", train_dir, "--valid", dev_dir,
                                "--out-dir", str(out_dir), "--device", "cpu", "--lr", "1e-3",
                                "--stages", "0,1,0", "--batch-seconds", "4", "--log-every", "1",
                                "--mask-channel-length", "8", *flags])
    finetune.main(args)
    return checkpoints.load_checkpoint(os.path.join(out_dir, "last.pt"))


def fairseq_tri_stage(update, peak, warmup, hold, decay, init_lr_scale=0.01, final_lr_scale=0.05):
    """fairseq's TriStageLRSchedule.step_update, written out from its source (the decay stage
    ends with `<=`; the LR of update n is the one set after n updates)."""
    init_lr, final_lr = init_lr_scale * peak, final_lr_scale * peak
    if update < warmup:
        return init_lr + (peak - init_lr) / warmup * update
    if update < warmup + hold:
        return peak
    if update <= warmup + hold + decay:
        return peak * math.exp(math.log(final_lr_scale) / decay * (update - warmup - hold))
    return final_lr


def test_tri_stage_lr_matches_fairseq_at_stage_boundaries():
    # finetune.py's defaults are fairseq's examples/hubert/config/finetune/base_10h.yaml
    args = finetune.parse_args(["--init", "s.pt", "--train", "t", "--out-dir", "o"])
    stages = (args.warmup_steps, args.hold_steps, args.decay_steps)
    assert stages == (8000, 0, 72_000)
    assert (args.max_steps, args.lr, args.freeze_steps) == (25_000, 2e-5, 10_000)
    for step in (0, 1, 4000, 7999, 8000, 8001, 24_999, 44_000, 79_999, 80_000, 80_001, 10**6):
        assert finetune.tri_stage_lr(step, args.lr, *stages) == pytest.approx(
            fairseq_tri_stage(step, args.lr, *stages), rel=1e-9), step
    # --stages: shares of --max-steps, as fairseq's phase_ratio (int(max_update * ratio))
    short = finetune.parse_args(["--init", "s.pt", "--train", "t", "--out-dir", "o", "--max-steps", "1001",
                                 "--stages", "0.1,0.4,0.5"])
    assert (short.warmup_steps, short.hold_steps, short.decay_steps) == (100, 400, 500)
    lr = lambda s: finetune.tri_stage_lr(s, 1e-3, 100, 400, 500)  # noqa: E731
    assert all(lr(s) == pytest.approx(fairseq_tri_stage(s, 1e-3, 100, 400, 500), rel=1e-9) for s in range(1100))
    assert lr(0) == pytest.approx(1e-5)                   # init_lr_scale 0.01
    assert lr(50) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # linear warm-up
    assert lr(100) == pytest.approx(1e-3)                 # peak after warm-up
    assert lr(499) == pytest.approx(1e-3)                 # hold
    assert lr(500) == pytest.approx(1e-3)                 # decay starts at the peak
    assert lr(750) == pytest.approx(1e-3 * 0.05 ** 0.5)   # exponential: geometric midpoint
    assert lr(1000) == pytest.approx(5e-5)                # final_lr_scale 0.05
    assert lr(5000) == pytest.approx(5e-5)                # and constant after
    assert all(lr(s) >= lr(s + 1) for s in range(500, 1100))
    # the demo's few hundred steps give the stages as shares, not base_10h's 8000-step warm-up
    for stage in (st for st in demo.plan("R", demo.SIZINGS["full"]) if st.argv[0] == "finetune.py"):
        toy = finetune.parse_args(stage.argv[1:])
        n = toy.max_steps
        assert (toy.warmup_steps, toy.hold_steps, toy.decay_steps) == (n // 10, n * 4 // 10, n // 2)


def test_max_train_hours_subset_is_deterministic_nested_and_within_budget():
    utts = [data.Utterance(f"{s}-1-{k:04d}", "x.flac", random.Random(k).randint(16_000, 160_000))
            for s in range(5) for k in range(40)]
    ten = finetune.train_subset(utts, 0.1, seed=0)
    assert ten == finetune.train_subset(list(reversed(utts)), 0.1, seed=0)  # file order does not matter
    assert sum(u.num_samples for u in ten) <= 0.1 * 3600 * data.SAMPLE_RATE
    one = finetune.train_subset(utts, 0.02, seed=0)
    assert {u.id for u in one} < {u.id for u in ten}  # the small subset sits inside the large one
    assert {u.id for u in finetune.train_subset(utts, 0.1, seed=1)} != {u.id for u in ten}
    with pytest.raises(ValueError, match="less than the first utterance"):
        finetune.train_subset(utts, 1e-6)


def test_time_masks_cover_real_frames_only_at_about_the_fairseq_rate():
    torch.manual_seed(0)
    lengths = torch.tensor([500, 250, 30, 500])
    masks = torch.stack([model.span_mask(lengths, 500, 0.65, 10, min_spans=2) for _ in range(50)])
    assert not (masks & model.padding_mask(lengths, 500)).any()
    share = masks[:, 0].float().mean().item()  # overlapping spans: about 1 - exp(-p) of the frames
    assert abs(share - (1 - math.exp(-0.65))) < 0.05
    assert masks[:, 2, :30].any(dim=1).all()  # short rows still get their min_spans
    # A span count that rounds to zero masks nothing (fairseq / torchaudio would raise).
    assert not model.span_mask(torch.tensor([64]), 64, 0.01, 64).any()


def test_masking_uses_the_mask_embedding_and_channel_spans_and_is_off_in_eval():
    ctc = random_ctc(mask_prob=0.5, mask_length=4, mask_channel_prob=0.2, mask_channel_length=8)
    x = torch.randn(2, 60, 64) + 10.0  # nothing here is 0 or equal to the embedding
    lengths = torch.tensor([60, 20])
    torch.manual_seed(1)
    y = ctc.apply_mask(x.clone(), lengths)
    zeroed = (y == 0).all(dim=1)  # (B, D) channels zeroed over all frames
    assert zeroed.any() and not zeroed.all()
    keep = ~zeroed[:, None, :]
    time = ((y == ctc.mask_embedding) | ~keep).all(dim=-1)  # (B, T) frames set to the embedding
    assert time[0].any() and time[1, :20].any() and not time[1, 20:].any()
    untouched = ~time[..., None] & keep  # (B, T, D)
    assert torch.equal(y[untouched], x[untouched])
    waves, wave_lengths = torch.randn(2, 16_000), torch.tensor([16_000, 9_000])
    off = random_ctc()
    off.load_state_dict(ctc.state_dict())
    with torch.no_grad():
        assert torch.equal(ctc(waves, wave_lengths)[0], off(waves, wave_lengths)[0])  # eval: no masks
        ctc.train()
        assert not torch.allclose(ctc(waves, wave_lengths)[0], off(waves, wave_lengths)[0])


@pytest.mark.parametrize("train_frontend", [False, True])
def test_frontend_trains_only_if_asked_and_encoder_only_after_freeze_steps(train_frontend):
    ctc = random_ctc(mask_prob=0.5, mask_length=4).train()
    waves, lengths = torch.randn(2, 16_000), torch.tensor([16_000, 12_000])
    for train_encoder in (False, True):
        ctc.zero_grad(set_to_none=True)
        finetune.set_trainable(ctc, train_encoder, train_frontend)
        ctc(waves, lengths)[0].sum().backward()
        frontend = list(ctc.encoder.feature_extractor.parameters())
        assert all((p.grad is not None) == (train_encoder and train_frontend) for p in frontend)
        assert ctc.proj.weight.grad is not None
        transformer = list(ctc.encoder.encoder.parameters()) + [ctc.mask_embedding]
        assert all((p.grad is not None) == train_encoder for p in transformer)


def test_keep_layers_fine_tunes_the_first_layers_of_a_teacher_unchanged(tone_corpus, teacher, tmp_path):
    """--keep-layers N (the truncated teacher of a depth study): the CTC model's encoder is the
    teacher's first N layers, computing exactly the teacher's hidden_states[:N + 1]."""
    full = load_teacher(teacher)
    finetune.main(finetune_args(tone_corpus, teacher, tmp_path, "--max-steps", "1", "--keep-layers", "2"))
    ctc = finetune.load_ctc(str(tmp_path / "best.pt"))
    assert ctc.encoder.config.layers == 2 < full.config.layers
    waves, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    with torch.no_grad():
        mine, _ = ctc.encoder(waves, lengths)
        ref, _ = full(waves, lengths)
    assert len(mine) == 3
    for a, b in zip(mine, ref[:3]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="--keep-layers 9: .* has 4 transformer layers"):
        finetune.main(finetune_args(tone_corpus, teacher, tmp_path / "x", "--max-steps", "1", "--keep-layers", "9"))


def test_finetuning_keeps_encoder_frozen_then_trains_it_never_the_frontend(tone_corpus, student, tmp_path, capsys):
    init = checkpoints.load_checkpoint(student)["encoder"]
    frozen = run_finetune(tone_corpus, student, tmp_path / "a", "--max-steps", "2", "--freeze-steps", "2")
    assert all(torch.equal(init[k], v) for k, v in frozen["encoder"].items())
    trained = run_finetune(tone_corpus, student, tmp_path / "b", "--max-steps", "2", "--freeze-steps", "1",
                           "--layerdrop", "0.0")
    changed = {k for k, v in trained["encoder"].items() if not torch.equal(init[k], v)}
    assert not any(k.startswith("feature_extractor.") for k in changed)
    assert any(k.startswith("encoder.transformer.layers.") for k in changed)
    assert trained["config"]["layerdrop"] == 0.0 and frozen["config"]["layerdrop"] == 0.1
    assert re.search(r"dev WER \d+\.\d\d", capsys.readouterr().out)
    assert os.path.isfile(tmp_path / "b" / "best.pt")


def test_train_frontend_flag_trains_the_frontend_after_freeze_steps_only(tone_corpus, student, tmp_path):
    """finetune.py --train-frontend: the front-end changes with the encoder, not while it is frozen;
    with --cache-frontend (which keeps a frozen front-end's output) it is a usage error."""
    init = checkpoints.load_checkpoint(student)["encoder"]
    changed = lambda ckpt: {k.split(".")[0] for k, v in ckpt["encoder"].items() if not torch.equal(init[k], v)}
    frozen = run_finetune(tone_corpus, student, tmp_path / "a", "--max-steps", "2", "--freeze-steps", "2",
                          "--train-frontend")
    assert changed(frozen) == set()
    trained = run_finetune(tone_corpus, student, tmp_path / "b", "--max-steps", "2", "--freeze-steps", "1",
                           "--layerdrop", "0.0", "--train-frontend")
    assert changed(trained) >= {"feature_extractor", "encoder"}
    with pytest.raises(SystemExit) as stop:
        finetune.parse_args(["--init", student, "--train", "t", "--out-dir", "o", "--train-frontend",
                             "--cache-frontend"])
    assert stop.value.code == 2


def test_frontend_cache_computes_each_utterance_once_and_equals_the_padded_batch_for_layer_norm_cnns(
        tone_corpus, monkeypatch):
    encoder = tiny_student(extractor_mode="layer_norm").eval()  # padding-invariant CNN: cache == batch exactly
    utts = data.load_corpus([tone_corpus[0]])
    loader, _ = data.make_loader(utts, 4.0, shuffle=True, seed=0)
    cache = caches.FrontendCache(encoder)
    for batch in loader:
        feats, frame_lengths = cache(batch["ids"], batch["waves"], batch["lengths"])
        with torch.no_grad():
            ref, ref_lengths = encoder.frontend(batch["waves"], batch["lengths"])
        assert torch.equal(frame_lengths, ref_lengths)
        real = ~model.padding_mask(frame_lengths, feats.shape[1])
        assert torch.allclose(feats[real], ref[:, :feats.shape[1]][real], atol=1e-5)
        assert (feats[~real] == 0).all()
    assert len(cache.store) == len(utts)
    monkeypatch.setattr(encoder, "frontend", lambda *a: pytest.fail("recomputed a cached utterance"))
    for batch in loader:  # a second epoch comes from memory
        cache(batch["ids"], batch["waves"], batch["lengths"])
    with pytest.raises(ValueError, match="only CNN front-ends"):
        caches.FrontendCache(model.Encoder(model.EncoderConfig(frontend="fbank", dim=32, layers=1, heads=2,
                                                                 ffn=32, pos_conv_kernel=8, pos_conv_groups=4)))


def test_finetuning_with_the_frontend_cache_trains_the_same_model(tone_corpus, tmp_path, monkeypatch):
    """--cache-frontend: the same losses and dev WERs (a padding-invariant CNN), the dev set's
    front-end output kept in a cache of its own, the training set's in another."""
    path = str(tmp_path / "ln_student.pt")
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(tiny_student(extractor_mode="layer_norm"), "student",
                                                   preset="tiny"), path)
    plain = run_finetune(tone_corpus, path, tmp_path / "plain", "--max-steps", "3", "--freeze-steps", "1",
                         "--eval-every", "2")
    dev_caches = []
    def evaluate(*args, frontend_cache=None, **kwargs):
        dev_caches.append(frontend_cache)
        return scoring.evaluate(*args, frontend_cache=frontend_cache, **kwargs)
    monkeypatch.setattr(finetune, "evaluate", evaluate)
    cached = run_finetune(tone_corpus, path, tmp_path / "cached", "--max-steps", "3", "--freeze-steps", "1",
                          "--eval-every", "2", "--cache-frontend")
    read = lambda d, key: [r[key] for r in map(json.loads, open(tmp_path / d / "log.jsonl")) if key in r]
    assert read("cached", "ctc") == pytest.approx(read("plain", "ctc"), rel=1e-4)
    assert len(read("cached", "dev_wer")) == 2 and read("cached", "dev_wer") == read("plain", "dev_wer")
    dev_ids = {u.id for u in data.drop_short(data.load_corpus([tone_corpus[1]]), quiet=True)}
    assert len(dev_caches) == 2 and dev_caches[0] is dev_caches[1] and set(dev_caches[0].store) == dev_ids
    # The trained models agree in what they compute (their weights agree up to float noise, which
    # Adam magnifies where gradients are ~0, e.g. attention key biases).
    batch = data.collate([data.AudioDataset(data.load_corpus([tone_corpus[1]]))[i] for i in range(3)])
    outputs = [finetune.ctc_from_checkpoint(c, "x").eval()(batch["waves"], batch["lengths"])[0]
               for c in (plain, cached)]
    assert (outputs[0] - outputs[1]).abs().max() < 1e-3


def test_logged_ctc_loss_is_the_mean_over_the_log_interval(tone_corpus, student, tmp_path):
    run_finetune(tone_corpus, student, tmp_path / "every", "--max-steps", "4", "--freeze-steps", "1")
    run_finetune(tone_corpus, student, tmp_path / "pairs", "--max-steps", "4", "--freeze-steps", "1", "--log-every", "2")
    read = lambda d: [r for r in map(json.loads, open(tmp_path / d / "log.jsonl")) if "ctc" in r]
    every, pairs = read("every"), read("pairs")
    assert [r["step"] for r in pairs] == [2, 4]
    for k, r in enumerate(pairs):
        assert r["ctc"] == pytest.approx((every[2 * k]["ctc"] + every[2 * k + 1]["ctc"]) / 2, rel=1e-5)


def test_eval_prints_wer_per_set_and_writes_hypotheses(tone_corpus, tmp_path, capsys):
    ckpt = str(tmp_path / "ctc.pt")
    checkpoints.save_checkpoint(finetune.ctc_checkpoint(random_ctc()), ckpt)
    train_dir, dev_dir = tone_corpus
    finetune.main(finetune.parse_args(["--eval", ckpt, "--data", dev_dir, train_dir, "--device", "cpu"]))
    out = capsys.readouterr().out
    assert len(re.findall(r"WER \d+\.\d\d \(\d+ utterances, greedy decoding", out)) == 2
    hyps = open(tmp_path / "ctc.dev.hyp.txt").read().splitlines()
    assert sorted(h.split("\t")[0] for h in hyps) == sorted(u.id for u in data.load_corpus([dev_dir]))


def test_transcribe_accepts_8khz_stereo(tmp_path, capsys):
    import torchaudio
    ctc = random_ctc()
    ckpt = str(tmp_path / "ctc.pt")
    checkpoints.save_checkpoint(finetune.ctc_checkpoint(ctc), ckpt)
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((12_000, 2))).astype(np.float32)  # 1.5 s at 8 kHz
    path = str(tmp_path / "call.wav")
    sf.write(path, stereo, 8_000)
    finetune.main(finetune.parse_args(["--transcribe", ckpt, path, "--device", "cpu"]))
    line = capsys.readouterr().out.rstrip("\n")
    mono16k = torchaudio.functional.resample(torch.from_numpy(stereo).mean(1), 8_000, 16_000)
    with torch.no_grad():
        expected = scoring.greedy_decode(*ctc(mono16k[None], torch.tensor([len(mono16k)])))[0]
    assert line == f"{path}\t{expected}"


def test_beam_search_without_flashlight_text_says_what_to_install(tmp_path):
    try:
        import flashlight.lib.text  # noqa: F401
        pytest.skip("flashlight-text is installed")
    except ImportError:
        pass
    lm = tmp_path / "lm.arpa"
    lm.write_text("")
    args = finetune.parse_args(["--eval", "x.pt", "--data", "d", "--lm", str(lm)])
    with pytest.raises(SystemExit, match="pip install flashlight-text"):
        scoring.make_decoder(args)


def test_beam_search_with_kenlm_and_lexicon_spells_lexicon_words(tmp_path):
    pytest.importorskip("flashlight.lib.text")
    (tmp_path / "lm.arpa").write_text(
        "\n\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t-0.3\n-1.0\t</s>\t0\n"
        "-0.5\tHELLO\t-0.3\n-0.5\tWORLD\t-0.3\n\n\\2-grams:\n-0.2\t<s> HELLO\n-0.2\tHELLO WORLD\n\n\\end\\\n")
    (tmp_path / "lexicon.txt").write_text("HELLO H E L L O |\nWORLD W O R L D |\n")
    log_probs = torch.full((1, 40, len(data.VOCAB)), -10.0)
    log_probs[0, :, data.BLANK] = -0.1
    for i, c in enumerate("HELLO|WORLD"):  # one peaked frame per letter, blanks between
        log_probs[0, 2 + 3 * i, data.VOCAB.index(c)], log_probs[0, 2 + 3 * i, data.BLANK] = 0.0, -5.0
    log_probs = log_probs.log_softmax(-1)
    args = finetune.parse_args(["--eval", "x.pt", "--data", "d", "--lm", str(tmp_path / "lm.arpa"),
                                "--lexicon", str(tmp_path / "lexicon.txt"), "--beam", "10"])
    decode, description = scoring.make_decoder(args)
    assert decode(log_probs, torch.tensor([40])) == ["HELLO WORLD"]
    assert description.startswith("beam search")


def test_greedy_decoding_never_emits_the_untrained_special_tokens():
    ids = {c: data.VOCAB.index(c) for c in ("A", "B", "<s>", "</s>", "<unk>")}
    log_probs = torch.full((1, 3, len(data.VOCAB)), -9.0)
    log_probs[0, [0, 2], ids["A"]] = -0.1
    log_probs[0, 1, [ids["<s>"], ids["</s>"], ids["<unk>"]]] = -0.5  # the specials win frame 1,
    log_probs[0, 1, ids["B"]] = -1.0                                 # B comes next
    assert scoring.greedy_decode(log_probs, torch.tensor([3])) == ["ABA"]  # not "AA"


def test_export_to_transformers_matches_logits_and_pipeline_transcript(tmp_path):
    """On an under-trained model, whose never-trained <s>, </s>, <unk> outputs win some frames,
    transformers' pipeline writes what finetune.py --transcribe writes (and no "<s>")."""
    transformers = pytest.importorskip("transformers")
    ctc = random_ctc(special_bias=1.0, mask_prob=0.65, mask_channel_prob=0.5, mask_channel_length=8)
    out = str(tmp_path / "hf")
    checkpoints.export_huggingface(ctc, out)
    assert sorted(os.listdir(out)) == sorted(["config.json", "model.safetensors", "vocab.json", "tokenizer_config.json",
                                              "special_tokens_map.json", "preprocessor_config.json"])
    hf = transformers.HubertForCTC.from_pretrained(out).eval()
    rng = np.random.default_rng(0)
    wave = (0.3 * np.sin(np.arange(24_000) / 7.0) + 0.1 * rng.standard_normal(24_000)).astype(np.float32)
    x = torch.from_numpy(wave)[None]
    with torch.no_grad():
        ours, frame_lengths = ctc(x, torch.tensor([x.shape[1]]))
        theirs = hf(x).logits
    specials = checkpoints.NEVER_EMITTED
    assert sorted(data.VOCAB[i] for i in specials) == ["</s>", "<s>", "<unk>"]
    wins = torch.isin(ours.argmax(-1), torch.tensor(specials))
    assert 0 < wins.float().mean() < 0.7  # the fixture is under-trained: specials win some frames, not all
    assert theirs.shape == ours.shape
    real = [i for i in range(len(data.VOCAB)) if i not in specials]
    # the blank's and the characters' logits are ours; the specials' can never win
    assert torch.allclose(theirs[..., real].log_softmax(-1), ours[..., real].log_softmax(-1), atol=1e-4)
    assert torch.equal(theirs[..., specials], torch.full_like(theirs[..., specials], checkpoints.NEVER_EMITTED_LOGIT))
    asr = transformers.pipeline("automatic-speech-recognition", model=out, device="cpu")
    text = asr({"raw": wave, "sampling_rate": data.SAMPLE_RATE})["text"]
    ours_text = scoring.greedy_decode(ours, frame_lengths)[0]
    assert len(set(ours_text)) > 3 and "<" not in text
    assert " ".join(text.split()) == ours_text  # we also collapse repeated spaces


def test_export_of_a_student_without_feature_layer_norm_matches_transformers(tmp_path):
    """Distilled students have no LayerNorm on the CNN features: HubertConfig's feat_proj_layer_norm
    False, and the export still computes our logits."""
    transformers = pytest.importorskip("transformers")
    ctc = random_ctc(feature_layer_norm=False)
    checkpoints.export_huggingface(ctc, str(tmp_path / "hf"))
    hf = transformers.HubertForCTC.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.feat_proj_layer_norm is False
    x = torch.randn(1, 16_000)
    with torch.no_grad():
        ours, _ = ctc.encoder(x, torch.tensor([x.shape[1]]))
        theirs = hf.hubert(x, output_hidden_states=True).hidden_states
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert model.load_teacher(str(tmp_path / "hf")).encoder.config.feature_layer_norm is False


def test_export_of_an_fbank_student_is_a_clear_error(tmp_path):
    ctc = model.CTCModel(model.build_student("tiny", frontend="fbank"))
    with pytest.raises(ValueError, match="Fbank.*--export-encoder"):
        checkpoints.export_huggingface(ctc, str(tmp_path / "hf"))


def students_for_export(tmp_path):
    """A CNN and an Fbank student as distill.py saves them (student.pt), weights perturbed off their init."""
    paths = {}
    for frontend in ("cnn", "fbank"):
        torch.manual_seed(1)
        encoder = model.build_student("tiny", frontend=frontend, dropout=0.0, attention_dropout=0.0)
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(0.05 * torch.randn_like(p))
        paths[frontend] = str(tmp_path / f"{frontend}.pt")
        checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(encoder, "student", preset="tiny"), paths[frontend])
    return paths


def test_distilled_encoders_export_through_the_cli_and_compute_the_same_states(tmp_path):
    """finetune.py --export-encoder student.pt DIR: a CNN student becomes a transformers HubertModel
    folder whose hidden states are ours (within 1e-4); an Fbank student, safetensors + config.json
    that model.load_teacher reads back to the same states, in a process that never saw the student."""
    transformers = pytest.importorskip("transformers")
    paths = students_for_export(tmp_path)
    x = torch.randn(1, 20_000)
    for frontend, path in paths.items():
        out = str(tmp_path / f"export-{frontend}")
        finetune.main(finetune.parse_args(["--export-encoder", path, out]))
        assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
        with torch.no_grad():
            ours, _ = load_teacher(path)(x, torch.tensor([x.shape[1]]))
            back, _ = load_teacher(out)(x, torch.tensor([x.shape[1]]))
            theirs = transformers.HubertModel.from_pretrained(out).eval()(x, output_hidden_states=True).hidden_states \
                if frontend == "cnn" else back
        assert len(ours) == len(theirs) == len(back)
        for a, b, c in zip(ours, theirs, back):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(c, a, atol=1e-6, rtol=1e-6)
    script = ("import sys, torch, data, model; enc = model.load_teacher(sys.argv[1]).encoder; "
              "print(enc.config.frontend, len(enc(torch.zeros(1, 16000), torch.tensor([16000]))[0]))")
    out = run_cli("-c", script, str(tmp_path / "export-fbank"))
    assert out.returncode == 0 and out.stdout.split() == ["fbank", str(len(ours))], out.stderr


# ----------------------------------------------------------------------------------------------
# The README's path: pretrain -> distill -> finetune -> eval -> transcribe through the CLIs


def test_pretrain_distill_finetune_eval_transcribe_chain_through_the_clis(toy_corpus, tmp_path):
    """The README's path, two steps each, through the real command lines."""
    def run(*argv):
        out = subprocess.run([sys.executable, *argv], cwd=HERE, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout
    c = str(toy_corpus)
    run("pretrain.py", "--data", f"{c}/train", "--out-dir", f"{tmp_path}/teacher", "--max-steps", "2",
        "--layers", "2", "--dim", "32", "--ffn", "64", "--heads", "2", "--conv-dim", "32",
        "--clusters", "8", "--device", "cpu")
    run("distill.py", "--teacher", f"{tmp_path}/teacher/teacher.pt", "--student", "tiny", "--data",
        f"{c}/train", "--out-dir", f"{tmp_path}/student", "--max-steps", "2", "--disc-weight", "0.5",
        "--device", "cpu")
    run("finetune.py", "--init", f"{tmp_path}/student/student.pt", "--train", f"{c}/train", "--valid",
        f"{c}/dev", "--out-dir", f"{tmp_path}/ctc", "--max-steps", "2", "--device", "cpu")
    out = run("finetune.py", "--eval", f"{tmp_path}/ctc/best.pt", "--data", f"{c}/test", "--device", "cpu")
    assert "WER" in out
    files = sorted(str(p) for p in (toy_corpus / "test").rglob("*.flac"))[:2]
    out = run("finetune.py", "--transcribe", f"{tmp_path}/ctc/best.pt", *files, "--device", "cpu")
    assert [line.split("\t")[0] for line in out.splitlines()] == files


def documented_commands(name):
    """Each `python SCRIPT ...` of a markdown file's bash blocks as (script, argv): continuation
    lines joined, comments dropped, shell variables set in earlier lines expanded, `&&` chains split."""
    import shlex
    text = open(os.path.join(HERE, name)).read()
    env, out = {}, []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), line)
            words = shlex.split(line, comments=True)
            if len(words) == 1 and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                key, value = words[0].split("=", 1)
                env[key] = value
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                cmd, words = words[:cut], words[cut + 1:]
                scripts = [i for i, w in enumerate(cmd) if w.endswith(".py") or w.startswith("tools.")]
                if scripts and cmd[0] in ("python", "torchrun") and not any("<" in w for w in cmd):
                    out.append((cmd[scripts[0]], cmd[scripts[0] + 1:]))
    return out


@pytest.mark.parametrize("name", ["README.md", "EXERCISES.md"])
def test_documented_commands_parse_with_their_scripts_flags(name):
    """Every command a reader copies from the README or the exercises is accepted by the script's
    own parser: a renamed or removed flag fails here, not in a reader's shell."""
    import tools.curves as curves
    parsers = {"data.py": data.parse_args, "pretrain.py": pretrain.parse_args, "distill.py": distill.parse_args,
               "finetune.py": finetune.parse_args, "demo.py": demo.parse_args, "study.py": study.parse_args,
               "tools.bench": bench.command, "tools.curves": curves.parse_args}
    commands = documented_commands(name)
    assert len(commands) >= 8
    for script, argv in commands:
        try:
            parsers[script](argv)
        except SystemExit as e:
            pytest.fail(f"{name}: python {script} {' '.join(argv)}: the parser refused it ({e})")


def test_readme_reading_path_names_definitions_of_the_files_it_names():
    """Each `name` of the README's reading path is a definition in the file named before it, and each
    `file.py:Name.attr` of the equation table exists: the map a newcomer follows lands somewhere."""
    import ast
    text = open(os.path.join(HERE, "README.md")).read()
    block = text[text.index("1. `model.py`"):text.index("## Commands")]
    defined, checked, path = {}, 0, None

    def names(file):
        tree = ast.parse(open(os.path.join(HERE, file)).read())
        return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for m in re.finditer(r"`(\w+\.py)`|`(\w+\.py):([\w.]+)`|`([a-z_]+|[A-Z]\w+)`", block):
        if m.group(1):
            path = m.group(1)
            defined = names(path)
        elif m.group(2):
            assert set(m.group(3).split(".")) <= names(m.group(2)), m.group(0)
            checked += 1
        elif path and m.group(4) not in ("hidden_states",):
            assert m.group(4) in defined, (path, m.group(4))
            checked += 1
    assert checked >= 25


def test_readme_map_lists_every_top_level_file_and_folder():
    """The reading-order table is the map: every tracked top-level file and folder has a row."""
    text = open(os.path.join(HERE, "README.md")).read()
    table = text[text.index("## Reading order"):text.index("## Read the core")]
    first_cells = re.findall(r"^\| (.+?) \|", table, re.M)
    listed = {name.split("/")[0] for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    tracked = subprocess.run(["git", "ls-files"], cwd=HERE, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    top = {p.split("/")[0] for p in tracked} - {".gitignore", "README.md"}
    missing = sorted(t for t in top if t not in listed)
    assert not missing, f"README's reading-order table has no row for {missing}"


# ----------------------------------------------------------------------------------------------
# demo.py: stages (skip, resume, side by side), settings guard, results table, claims, plot,
# README section, the shipped teacher, the toy presets' proportions, the from-scratch student

DEMO_TEST_UTTERANCES, DEMO_WORDS_PER_UTTERANCE = 200, 10


def fake_word_errors(wer, seed):
    """Per-utterance word errors of DEMO_TEST_UTTERANCES utterances whose total gives `wer` (%),
    spread at random over the utterances as a real model's are."""
    total = round(wer / 100 * DEMO_TEST_UTTERANCES * DEMO_WORDS_PER_UTTERANCE)
    rng = np.random.default_rng(seed)
    return np.bincount(rng.integers(0, DEMO_TEST_UTTERANCES, total), minlength=DEMO_TEST_UTTERANCES).tolist()


def demo_result(**wer):
    """A fake demo result; wer: name -> (low, high)."""
    base = {"teacher": (40.0, 20.0), "scratch": (95.0, 60.0), "sw": (70.0, 40.0), "dt": (60.0, 35.0),
            "dt-disc": (55.0, 34.5), "dt-fbank": (62.0, 36.0)}
    base.update(wer)
    params = {"teacher": 4.2, "scratch": 1.03, "sw": 1.11, "dt": 1.03, "dt-disc": 1.03, "dt-fbank": 0.84}
    ms = {"teacher": 100.0, "scratch": 50.0, "sw": 40.0, "dt": 50.0, "dt-disc": 50.0, "dt-fbank": 20.0}
    rows = [{"name": r.name, "label": r.label, "preset": r.preset, "params_M": params[r.name],
             "cpu_ms": ms[r.name], "time_ratio": ms[r.name] / 100.0,
             "wer": {"low": base[r.name][0], "high": base[r.name][1]},
             "errors": {b: fake_word_errors(base[r.name][k], seed=(k, i)) for k, b in enumerate(("low", "high"))},
             "examples": [["1-1-0001", "A CAT", "A CAT"]],
             "cer": {"low": base[r.name][0] / 3, "high": base[r.name][1] / 3}} for i, r in enumerate(demo.ROWS)]
    words = [DEMO_WORDS_PER_UTTERANCE] * DEMO_TEST_UTTERANCES
    return {"command": "python demo.py", "machine": "x86_64, 2 CPUs", "date": "2025-01-01", "wall_seconds": 2400,
            "settings": {**vars(demo.SIZINGS["full"]), "teacher": "12x160 (FFN 640)"},
            "teacher": {"steps": 3000, "acc_m": 0.5}, "test_utterances": len(words),
            "label_hours": {"low": 0.1, "high": 1.0}, "timing": {"threads": 2, "audio_seconds": 30.0, "runs": 5},
            "rows": rows, "claims": results.claims(rows, words)}


def test_results_table_has_every_model_with_params_time_and_both_budgets():
    text = results.markdown(demo_result())
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    assert lines[0] == ("| model | params (M) | CPU time vs teacher | test WER (CER), 6 min labels | "
                        "test WER (CER), 60 min labels |")
    assert len(lines) == 1 + len(demo.ROWS)
    assert "| D&T Fbank (two-stage), regression | 0.84 | 0.20 | 62.0 (20.7) | 36.0 (12.0) |" in lines
    assert "`python demo.py` on x86_64, 2 CPUs, 2025-01-01: ran in 40m00s." in text


def demo_verdicts(**wer):
    result = demo_result(**wer)
    return {c: v for c, v, _ in result["claims"]}, {c: e for c, _, e in result["claims"]}


def test_claims_are_decided_by_paired_bootstrap_intervals_and_no_signal_near_100_wer():
    verdicts, evidence = demo_verdicts(**{"dt-disc": (58.5, 35.0)})
    helps = "distillation helps at the low label budget: S&W student, regression vs from scratch"
    assert verdicts[helps] == "holds"  # 70 vs 95
    assert evidence[helps].startswith("70.0 vs 95.0 WER, difference -25.0 [")
    assert verdicts["D&T beats S&W at a similar size (low budget)"] == "holds"  # 60 vs 70 over 2000 words
    assert verdicts["the discriminative loss helps (low budget)"] == "undecided"  # 1.5 points: within the noise
    most = "the discriminative loss helps most at the low budget"
    assert demo_verdicts(**{"dt-disc": (50.0, 35.0)})[0][most] == "holds"  # gains 10 (low, holds) and 0 (high)
    for disc, expected in (((61.0, 50.0), "undecided"), ((70.0, 60.0), "does not hold")):
        v, e = demo_verdicts(**{"dt-disc": disc})  # hurting less at the low budget than at the high one
        assert v[most] == expected and e[most].endswith(f"; but its gain at the low budget: {expected}"), e[most]
    assert verdicts["Fbank front-end: ~17% fewer parameters"] == "holds"  # 18%
    assert verdicts["Fbank front-end: ~2x faster inference"] == "holds"  # 2.5x
    worse, _ = demo_verdicts(scratch=(70.0, 60.0), sw=(85.0, 70.0))
    assert worse[helps] == "does not hold"
    blank, _ = demo_verdicts(scratch=(100.0, 99.0), sw=(96.0, 90.0))
    assert blank[helps] == "no signal"  # both still (almost) all-blank


def test_a_quick_run_with_some_rows_and_one_budget_checks_only_the_claims_it_can(tmp_path):
    result = demo_result()
    result["rows"] = [r for r in result["rows"] if r["name"] in ("teacher", "scratch", "sw")]
    for r in result["rows"]:
        for part in ("wer", "cer", "errors"):
            r[part] = {"high": r[part]["high"]}
    result["label_hours"] = {"high": 1.0}
    result["claims"] = results.claims(result["rows"], [DEMO_WORDS_PER_UTTERANCE] * DEMO_TEST_UTTERANCES)
    assert [c for c, _, _ in result["claims"]] == [
        "distillation helps at the high label budget: S&W student, regression vs from scratch"]
    text = results.markdown(result)
    assert "| model | params (M) | CPU time vs teacher | test WER (CER), 60 min labels |" in text
    assert "| S&W student, regression | 1.11 | 0.40 | 40.0 (13.3) |" in text
    results.plot(result, str(tmp_path / "quick.png"))


def test_paired_bootstrap_interval_is_tight_for_paired_errors_and_covers_the_difference():
    rng = np.random.default_rng(0)
    words = np.full(300, 10)
    a = rng.integers(0, 6, 300)
    b = a.copy()
    b[:30] += 1  # b makes one more error on 30 of 300 utterances: +1.0 WER point, always
    wer = lambda e, i: 100.0 * e[i].sum() / words[i].sum()
    lo, hi = results.bootstrap_ci(lambda i: wer(b, i) - wer(a, i), len(words))
    assert 0.5 < lo <= 1.0 <= hi < 1.5  # paired: the utterance-to-utterance spread of a cancels out
    independent = rng.permutation(b)
    lo2, hi2 = results.bootstrap_ci(lambda i: wer(independent, i) - wer(a, i), len(words))
    assert hi2 - lo2 > 3 * (hi - lo)


def test_word_errors_per_utterance_add_up_to_jiwers_wer():
    refs = ["A CAT SAT", "THE DOG", "ONE TWO THREE FOUR"]
    hyps = ["A CAT SAT DOWN", "", "ONE TOO THREE"]
    words, errors = results.word_errors(refs, hyps)
    assert words == [3, 2, 4] and errors == [1, 2, 2]
    assert sum(errors) / sum(words) == pytest.approx(jiwer.wer(refs, hyps))


def test_plot_shows_wer_against_parameters_and_cpu_time_and_the_claims_intervals(tmp_path):
    path = tmp_path / "demo.png"
    result = demo_result()
    results.plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    drawn = results.claim_intervals(result)  # every claim with an interval gets its bar
    assert len(drawn) == sum("[" in detail for _, _, detail in result["claims"]) > 5
    for claim, verdict, (point, low, high) in drawn:
        assert low <= point <= high and (verdict != "holds" or not low <= 0 <= high or "cost" in claim), claim


def test_settings_guard_refuses_to_mix_runs_of_other_sizes(tmp_path):
    settings = {"hours": 1.25, "distill_steps": 300, "budgets": ("low", "high")}
    stages.check_settings(str(tmp_path), settings)
    stages.check_settings(str(tmp_path), dict(settings))  # same settings (a tuple read back as a list): fine
    quick = vars(demo.sizing_for(demo.parse_args(["--quick"])))  # rows and budgets are tuples
    stages.check_settings(str(tmp_path / "q"), quick)
    stages.check_settings(str(tmp_path / "q"), quick)  # a rerun (after Ctrl-C) of the same run is let in
    with pytest.raises(SystemExit, match="distill_steps"):
        stages.check_settings(str(tmp_path), {**settings, "distill_steps": 800})


def test_shipped_teacher_is_fp16_with_its_record_and_a_mismatched_one_is_refused(tmp_path, monkeypatch):
    pretrain_dir = tmp_path / "pretrain"
    write_tone_corpus(str(tmp_path / "corpus" / "train"), utterances=2)  # the teacher's corpus: hashed into its record
    pretrain_dir.mkdir()
    save_teacher(pretrain_dir / "teacher.pt")
    monkeypatch.setattr(demo, "TEACHER", {k: TEACHER[k] for k in ("layers", "dim", "ffn", "heads")} |
                        {"conv_dim": TEACHER["conv_layers"][0][0]})
    (pretrain_dir / "log.jsonl").write_text("".join(json.dumps({"step": k, "loss": 5.0 / k, "acc_m": 0.1 * k,
                                                                "acc_u": 0.2 * k}) + "\n" for k in (1, 2, 3)))
    shipped = str(tmp_path / "ship" / "toy-teacher.pt")
    demo.ship_teacher(str(pretrain_dir), str(tmp_path / "corpus"), "python pretrain.py ...", out=shipped)
    ckpt = checkpoints.load_checkpoint(shipped)
    assert all(v.dtype == torch.float16 for v in ckpt["encoder"].values() if v.is_floating_point())
    assert "targets" not in ckpt and ckpt["record"]["final"] == pytest.approx({"step": 3, "acc_m": 0.3, "acc_u": 0.6})
    assert ckpt["record"]["corpus"]["espeak_ng"] and len(ckpt["record"]["corpus"]["train_sha256"]) == 64
    original, loaded = model.load_teacher(str(pretrain_dir / "teacher.pt")), model.load_teacher(shipped)
    waves, lengths = torch.randn(1, 4000), torch.tensor([4000])
    assert loaded.config == original.config and loaded.head is not None
    h_orig, h_ship = original(waves, lengths)[0][-1], loaded(waves, lengths)[0][-1]
    assert h_ship.dtype == torch.float32 and (h_ship - h_orig).abs().max() < 0.05 * h_orig.abs().max()
    assert "| 3 | 1.667 | 0.300 | 0.600 |" in (tmp_path / "ship" / "RECORD.md").read_text()
    assert demo.check_teacher(shipped)["command"] == "python pretrain.py ..."
    with monkeypatch.context() as m:  # the code asks for other training than the file's record
        m.setitem(demo.TEACHER_TRAINING, "max_steps", 4000)
        with pytest.raises(SystemExit, match=r"training max_steps: file 3000, demo.py 4000.*make teacher"):
            demo.check_teacher(shipped)
    ckpt["config"]["layers"] = TEACHER["layers"] + 1  # a file whose network is not the one its record names
    checkpoints.save_checkpoint(ckpt, shipped)
    with pytest.raises(SystemExit, match=rf"teacher layers: file {TEACHER['layers'] + 1}, demo.py {TEACHER['layers']}"):
        demo.check_teacher(shipped)
    with pytest.raises(SystemExit, match="no toy teacher at .*make teacher"):
        demo.check_teacher(str(tmp_path / "missing.pt"))


def test_the_shipped_toy_teacher_matches_demo_py_and_loads():
    record = demo.check_teacher()
    teacher = model.load_teacher(demo.SHIPPED_TEACHER)
    c = teacher.config
    assert (c.layers, c.dim, c.ffn, c.heads, c.conv_layers[0][0]) == tuple(demo.TEACHER[k] for k in
                                                                          ("layers", "dim", "ffn", "heads", "conv_dim"))
    assert teacher.head is not None and record["final"]["step"] == demo.TEACHER_TRAINING["max_steps"]
    assert os.path.getsize(demo.SHIPPED_TEACHER) < 10e6


def test_finished_stages_are_skipped_and_interrupted_ones_resume(tmp_path, capsys):
    write_argv = "import sys, json; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    done, resumed, fresh = (str(tmp_path / n) for n in ("done.json", "resumed.json", "fresh.json"))
    open(done, "w").write("[]")
    ckpt_dir = tmp_path / "interrupted"
    ckpt_dir.mkdir()
    (ckpt_dir / "checkpoint.pt").write_bytes(b"")
    todo = [stages.Stage("finished", "a", ["-c", "raise SystemExit(3)"], done),  # would fail if it ran
            stages.Stage("interrupted", "b", ["-c", write_argv, resumed], resumed, str(ckpt_dir)),
            stages.Stage("new", "c", ["-c", write_argv, fresh], fresh, str(tmp_path / "new"))]
    assert [stages.stage_state(s) for s in todo] == ["done", "resume", "new"]
    times = stages.run_stages(todo, str(tmp_path), start=0.0)
    assert json.load(open(resumed)) == [resumed, "--resume"]
    assert json.load(open(fresh)) == [fresh]
    assert set(times) == {"interrupted", "new"}
    assert "[1/3] finished: done" in capsys.readouterr().out
    assert float((tmp_path / "wall_seconds").read_text()) > 0
    before = stages.wall_seconds(str(tmp_path))
    stages.add_wall_seconds(str(tmp_path), 2.0)  # a later invocation adds to it
    assert stages.wall_seconds(str(tmp_path)) == pytest.approx(before + 2.0, abs=0.1)


def test_stages_run_side_by_side_after_what_they_need_with_tagged_output(tmp_path, capsys):
    """Two slots: 'slow' and 'other' start together; 'after' waits until slow has ended (not just
    written its file). Each stage's output reaches the console line by line with its tag
    (progress-bar redraws only the log)."""
    script = ("import os, sys, time; time.sleep(float(sys.argv[2])); "
              "print('bar 1%\\rbar 100%'); print('threads', os.environ['OMP_NUM_THREADS']); "
              "open(sys.argv[1], 'w').write(str(time.time())); time.sleep(float(sys.argv[3]))")
    slow, other, after = (str(tmp_path / n) for n in ("slow", "other", "after"))
    todo = [stages.Stage("slow stage", "slow", ["-c", script, slow, "1.0", "0.5"], slow),
            stages.Stage("dependent stage", "after", ["-c", script, after, "0", "0"], after, needs=(slow,)),
            stages.Stage("other stage", "other", ["-c", script, other, "0", "0"], other)]
    t0 = time.time()
    stages.run_stages(todo, str(tmp_path), start=t0, jobs=2)
    ends = {n: float(open(p).read()) for n, p in (("slow", slow), ("other", other), ("after", after))}
    assert ends["other"] < ends["slow"]  # other did not wait for slow
    assert ends["after"] > ends["slow"] + 0.5  # after waited for slow to exit
    out = capsys.readouterr().out
    assert "[slow] bar 100%" in out and "[slow] bar 1%" not in out
    assert f"[other] threads {stages.STAGE_THREADS}" in out  # the same whatever runs beside it
    assert b"bar 1%\rbar 100%" in (tmp_path / "logs" / "slow.log").read_bytes()
    assert time.time() - t0 < 8


def test_time_left_replays_the_schedule_with_the_estimates():
    teacher = stages.Stage("teacher", "t", [], "T", seconds=100)
    a, b, c = (stages.Stage(n, n, [], n, seconds=s, needs=("T",)) for n, s in (("a", 50), ("b", 50), ("c", 20)))
    assert stages.time_left([teacher, a, b, c], [], jobs=2, now=0) == 170  # 100, then a|b, then c
    assert stages.time_left([teacher, a, b, c], [], jobs=1, now=0) == 220
    assert stages.time_left([a, b], [], jobs=2, now=0) == 50  # the teacher is done


def test_stages_stop_with_ctrl_c_on_posix_and_ctrl_break_on_windows(monkeypatch):
    """stop_all asks each stage to stop with a checkpoint: SIGINT to a session of its own on POSIX;
    Windows' Popen cannot send SIGINT, so there a process group gets CTRL_BREAK_EVENT (SIGBREAK to
    the child's GracefulStop). Fake processes: this machine is Linux, Windows itself is not run."""
    class Proc:
        def __init__(self):
            self.sent = []
        send_signal, wait = lambda self, sig: self.sent.append(sig), lambda self: 0
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", 1, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    for system, group, sig in (("posix", {"start_new_session": True}, signal.SIGINT),
                               ("nt", {"creationflags": 0x200}, 1)):
        monkeypatch.setattr(stages.os, "name", system)
        running = [types.SimpleNamespace(proc=Proc(), thread=threading.Thread(target=lambda: None)) for _ in range(2)]
        for r in running:
            r.thread.start()
        stages.stop_all(running)
        assert stages.own_group() == group and all(r.proc.sent == [sig] for r in running)
    monkeypatch.undo()
    if hasattr(signal, "SIGBREAK"):
        assert signal.SIGBREAK in data.STOP_SIGNALS


def test_device_auto_picks_cuda_then_apple_mps_then_cpu(monkeypatch):
    """The path every driver takes (runtime.setup with --device auto), the backends faked."""
    for cuda, mps, want in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        args = distill.parse_args(["--teacher", "t.pt", "--student", "tiny", "--data", "d", "--out-dir", "o"])
        assert args.device == "auto" and runtime.setup(args)[0].type == want
    assert runtime.pick_device("cpu").type == "cpu" and runtime.pick_device("cuda:1").index == 1


def test_a_failed_stage_stops_the_demo_naming_it(tmp_path):
    todo = [stages.Stage("broken", "broken", ["-c", "raise SystemExit(2)"], str(tmp_path / "never"))]
    with pytest.raises(SystemExit, match="stage 'broken' failed \\(exit 2\\)"):
        stages.run_stages(todo, str(tmp_path), start=0.0)


def test_seed_spread_adds_low_budget_ctc_runs_with_other_seeds_and_the_table_reports_them():
    s = demo.sizing_for(demo.parse_args([]))
    extra = [st for st in demo.plan("R", s, spread=True) if "-seed" in st.out_dir]
    assert sorted(st.out_dir for st in extra) == sorted(f"R/ctc/{r}-low-seed{k}" for r in demo.SPREAD_ROWS
                                                         for k in demo.SPREAD_SEEDS)
    base = {st.out_dir: st for st in demo.plan("R", s)}
    for st in extra:
        twin = base[st.out_dir.rsplit("-seed", 1)[0]].argv  # the seed-0 run: everything else equal
        assert st.argv[st.argv.index("--seed") + 1] == st.out_dir.rsplit("seed", 1)[1]
        assert len(st.argv) == len(twin) and sum(a != b for a, b in zip(st.argv, twin)) == 2  # only seed and folder
    assert demo.results_base(demo.parse_args(["--seed-spread"])) == os.path.join("results", "demo-seed-spread")
    assert demo.results_base(demo.parse_args([])) == os.path.join("results", "demo")  # not overwritten by it
    result = demo_result()
    result["rows"][2]["seed_wers"] = [70.0, 72.5, 69.0]
    assert "S&W student, regression: 70.0 / 72.5 / 69.0 WER (range 3.5)" in results.markdown(result)


def test_plan_scales_steps_and_gives_the_low_budget_to_low_runs_only():
    args = demo.parse_args(["--quick", "--steps", "2"])
    s = demo.sizing_for(args)
    assert s.distill_steps == 2 * demo.SIZINGS["quick"].distill_steps
    assert demo.run_name(args) == "demo-quick-x2"
    stages = demo.plan("R", s)
    rows = demo.rows_of(s)
    assert [r.name for r in rows] == ["teacher", "scratch", "sw"] and s.budgets == ("high",)  # quick: a subset
    assert len(stages) == 1 + (len(rows) - 1) + len(s.budgets) * len(rows)  # corpus, distillations, CTC runs
    full = demo.sizing_for(demo.parse_args([]))
    stages = demo.plan("R", full)
    assert len(stages) == 1 + (len(demo.ROWS) - 1) + 2 * len(demo.ROWS)
    ctc = [st for st in stages if st.argv[0] == "finetune.py"]
    for st in ctc:
        low = st.out_dir.endswith("-low")
        assert ("--max-train-hours" in st.argv) == low
        steps = int(st.argv[st.argv.index("--max-steps") + 1])
        from_scratch = "/scratch-" in st.out_dir  # as many updates as distillation + CTC
        assert steps == (full.low_finetune_steps if low else full.finetune_steps) + \
            (full.distill_steps if from_scratch else 0)
        fbank = "/dt-fbank-" in st.out_dir  # a frozen CNN's output is cached, an Fbank front-end trains
        assert ("--cache-frontend" in st.argv, "--train-frontend" in st.argv) == (not fbank, fbank)
        budget = demo.REGULARISATION["low" if low else "high"]  # masks and FFN dropout regularise the small budget only
        for flag, key in (("--mask-prob", "mask_prob"), ("--activation-dropout", "activation_dropout")):
            value = float(st.argv[st.argv.index(flag) + 1])
            assert (value > 0) == low and value == budget[key], (st.argv, flag)
    teacher_ctc = next(st for st in ctc if st.out_dir == "R/ctc/teacher-low")
    assert teacher_ctc.argv[teacher_ctc.argv.index("--init") + 1] == demo.SHIPPED_TEACHER
    scratch = next(st for st in stages if st.out_dir == "R/students/scratch")
    assert scratch.argv[scratch.argv.index("--max-steps") + 1] == "0"  # an untrained student
    distilled = [st for st in stages if st.argv[0] == "distill.py" and st is not scratch]
    assert "--teacher-cache" not in scratch.argv and len(distilled) == len(demo.ROWS) - 2
    for st in distilled + [scratch]:  # the teacher's CNN stays frozen and cached in the CNN students
        assert ("--cache-frontend" in st.argv) == ("/dt-fbank" not in st.out_dir), st.argv
    assert {st.argv[st.argv.index("--teacher-cache") + 1] for st in distilled} == {"R/teacher-states.pt"}  # one for all
    fbank = next(st for st in stages if st.out_dir == "R/students/dt-fbank")
    assert fbank.argv[fbank.argv.index("--frontend-steps") + 1] == str(full.frontend_steps)
    for st in distilled:  # stage 1 comes on top: every student's transformer gets distill_steps
        fb = "--frontend-steps" in st.argv
        assert int(st.argv[st.argv.index("--max-steps") + 1]) == full.distill_steps + fb * full.frontend_steps


def test_readme_results_section_is_replaced_between_the_markers_only():
    start, end = results.MARKERS
    text = f"# T\n## Results\n{start}\nold table\n{end}\nverdict stays\n"
    new = results.replace_section(text, "| new |\n")
    assert new == f"# T\n## Results\n{start}\n| new |\n{end}\nverdict stays\n"
    assert results.replace_section(new, "| new |") == new
    with pytest.raises(ValueError, match="results:start"):
        results.replace_section("no markers", "x")
    md = results.markdown(demo_result())  # the README takes the table and claims, not the transcripts
    section = results.readme_section(md, "demo")
    assert "First test utterances" in md and "First test utterances" not in section
    assert section.startswith(md.split("\nFirst test utterances")[0]) and "`results/demo.md`" in section


def test_toy_students_keep_the_papers_proportions_to_the_toy_teacher():
    t = demo.TEACHER
    teacher = model.Teacher(model.Encoder(model.EncoderConfig(
        layers=t["layers"], dim=t["dim"], ffn=t["ffn"], heads=t["heads"], conv_layers=model.hubert_cnn(128))))
    n_teacher = model.count_parameters(teacher)
    n = {p: model.count_parameters(model.build_student(p, teacher))
         for p in ("toy-distilhubert", "toy-fithubert", "toy-fithubert-fbank")}
    assert 0.22 < n["toy-distilhubert"] / n_teacher < 0.30  # DistilHuBERT / HuBERT Base: 0.25
    assert 0.22 < n["toy-fithubert"] / n_teacher < 0.30  # FitHuBERT / HuBERT Base: 0.24
    assert 0.12 < 1 - n["toy-fithubert-fbank"] / n["toy-fithubert"] < 0.25  # the paper: 17% fewer
    sw = model.build_student("toy-distilhubert", teacher)
    assert (sw.config.layers, sw.config.dim) == (2, t["dim"])  # S&W: 2 layers at the teacher's width


def test_from_scratch_student_is_the_teacher_cnn_and_an_untrained_transformer(tmp_path):
    corpus = tmp_path / "corpus" / "1" / "10"
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        sf.write(corpus / f"1-10-{i:04d}.flac", 0.1 * rng.standard_normal(16_000), data.SAMPLE_RATE)
    cnn = model.hubert_cnn(16)
    teacher = model.Encoder(model.EncoderConfig(conv_layers=cnn, dim=32, layers=2, ffn=64, heads=2,
                                                pos_conv_kernel=16, pos_conv_groups=4))
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01)  # not a fresh initialisation anywhere
    checkpoints.save_checkpoint(checkpoints.encoder_checkpoint(teacher, "teacher"), tmp_path / "teacher.pt")
    out = tmp_path / "scratch"
    distill.main(distill.parse_args(["--teacher", str(tmp_path / "teacher.pt"), "--student", "toy-fithubert",
                                     "--layers", "2", "--data", str(tmp_path / "corpus"), "--out-dir", str(out),
                                     "--max-steps", "0", "--device", "cpu"]))
    ckpt = checkpoints.load_checkpoint(out / "student.pt")
    assert ckpt["step"] == 0
    student = model.encoder_from_checkpoint(ckpt)
    for k, v in teacher.feature_extractor.state_dict().items():
        assert torch.equal(student.feature_extractor.state_dict()[k], v), k
    norms = [m for m in student.encoder.transformer.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)  # as initialised


# ----------------------------------------------------------------------------------------------
# study.py: the claims study's plan (every stage a command its CLI accepts) and its report


def test_study_plan_runs_every_part_through_the_clis_within_its_forecast():
    stages = study.plan("runs/s", study.PARTS)
    assert len({st.tag for st in stages}) == len(stages) and len({st.done for st in stages}) == len(stages)
    parsers = {"distill.py": distill.parse_args, "finetune.py": finetune.parse_args, "data.py": None}
    for st in stages:  # the path a user takes: each stage's command line parses in its script
        if parsers[st.argv[0]]:
            parsers[st.argv[0]](st.argv[1:])
    argv = {st.tag: " ".join(st.argv) for st in stages}
    assert "--keep-layers 2" in argv["ctc teacher-2-high"] and "--student-init cnn" in argv["distill sw-random-800"]
    assert "--max-steps 12800" in argv["distill dt-12800"] and "--disc-weight 0.5 " in argv["distill dt-disc0.5-800-seed2"]
    assert "--max-train-hours 0.05" in argv["ctc dt-3min"] and "--seed 1" in argv["distill dt-800-seed1"]
    on_gpu = study.plan("runs/s", "b", device="cuda") + demo.plan("runs/s", demo.SIZINGS["full"], device="cuda")
    assert all(st.argv[st.argv.index("--device") + 1] == "cuda" for st in on_gpu if st.argv[0] != "data.py")
    assert study.parse_args([]).device == demo.parse_args([]).device == "cpu"  # the tables' numbers: CPU
    # the stages in the demo's folders are the demo's: the same parsed arguments, run once for both
    ours = {st.done: st for st in stages}
    shared = [st for st in demo.plan("runs/s", demo.SIZINGS["full"]) if st.done in ours]
    assert {st.tag for st in shared} == {"corpus", "distill sw", "distill dt", "distill dt-disc", *(
        f"ctc {n}-{b}" for n in ("sw", "dt", "dt-disc") for b in ("low", "high")), "ctc teacher-high"}
    for st in shared:
        if parsers[st.argv[0]]:
            assert vars(parsers[st.argv[0]](st.argv[1:])) == vars(parsers[st.argv[0]](ours[st.done].argv[1:])), st.tag
    evals = [st for st in stages if st.tag.startswith("eval")]
    assert len(evals) == sum(st.tag.startswith("ctc") for st in stages)  # every CTC model is decoded
    assert study.forecast(stages, 2) <= study.FORECAST_LIMIT
    known = study.models(study.PARTS)
    for part, question, a, b, budgets in study.COMPARISONS:  # every comparison's models are planned
        assert all(set(budgets) <= known[n].budgets for n in a + b), question
    target = model.count_parameters(model.build_student("toy-fithubert"))
    for name in ("dt-l2-3200", "dt-l4-3200", "dt-l6-3200"):
        f = known[name].distill
        n = model.count_parameters(model.build_student("toy-fithubert", layers=f["layers"], dim=f["dim"], ffn=f["ffn"]))
        assert abs(n - target) <= 0.05 * target, name
    assert study.parse_args(["--parts", "b,a"]).parts == "ab"
    with pytest.raises(SystemExit):
        study.parse_args(["--parts", "x"])


def test_study_report_pools_seeds_and_pairs_utterances(tmp_path):
    runs = tmp_path / "runs"
    write_tone_corpus(runs / "corpus" / "test", utterances=6)
    (runs / "corpus" / "synth.json").write_text("{}")
    refs = study.test_references(str(runs))
    known = study.models("e")
    ids = sorted(refs)

    def hyps(name, minutes, wrong):  # the first `wrong` utterances lose their first word
        folder = runs / "ctc" / f"{study.folder(name)}-{study.BUDGETS[minutes].folder}"
        folder.mkdir(parents=True)
        lines = [f"{i}\t{' '.join(refs[i].split()[1:]) if k < wrong else refs[i]}\n" for k, i in enumerate(ids)]
        (folder / "best.test.hyp.txt").write_text("".join(lines))
    for seed, (plain, disc) in enumerate([(3, 1), (2, 2), (4, 0)]):
        hyps("dt-800" if seed == 0 else f"dt-800-seed{seed}", 6, plain)
        hyps(f"dt-disc0.5-800-seed{seed}", 6, disc)
    (runs / "students" / "dt").mkdir(parents=True)  # the demo's D&T; the last loss line is read, not dev WERs
    (runs / "students" / "dt" / "log.jsonl").write_text(
        '{"step": 400, "loss": 1.0, "cos_layers": [0.5, 0.7]}\n{"step": 800, "loss": 0.5, "cos_layers": [0.3, 0.5], '
        '"unit_reg": 0.25, "unit_top": 0.05}\n{"step": 800, "dev_wer": 90.0}\n')
    result = study.report(str(runs), known)
    assert result["distillation"] == {"dt-800": {"step": 800, "cos_layers": [0.3, 0.5], "unit_reg": 0.25,
                                                 "unit_top": 0.05}}
    words = 3 * len(ids)
    assert result["wers"]["dt-800"][6] == pytest.approx(100 * 3 / words)
    (c,) = [c for c in result["comparisons"] if "3 seeds" in c["question"]]
    assert c["minutes"] == 6 and c["per_seed"] == pytest.approx([100 * d / words for d in (-2, 0, -4)])
    assert c["difference"] == pytest.approx(sum(c["per_seed"]) / 3)  # pooled: the mean WER over seeds
    assert c["interval"][0] <= c["difference"] <= c["interval"][1] <= 0 and c["verdict"] in ("holds", "undecided")
    md = study.markdown({**result, "command": "python study.py", "machine": "m", "date": "d", "done": 1,
                         "stages": 2}, known)
    assert md.count("3 seeds pooled") == 1 and "| D&T, 800 steps, seed 0 | 800 | 0.400 | 25.0% |  | 5.0% |" in md
    study.plot(result, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------
# Infrastructure: DDP under torchrun, exact resume and Ctrl-C, checkpoint safety, bad inputs,
# the throughput benchmark (the run plumbing of runtime.py and checkpoints.py, seen from the CLIs)


# ---- Scale: torchrun with 2 CPU processes (gloo)


def torchrun(*argv):
    """Runs `torchrun --nproc_per_node=2 argv...` (2 ranks, gloo on CPU) on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return run_cli("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *argv, timeout=180)


def test_distill_under_torchrun_two_ranks_keeps_parameters_identical(tone_corpus, teacher, tmp_path):
    """2 gloo ranks, gradient accumulation (no_sync on the first micro-batch), one teacher cache:
    the run finishes and the ranks' parameters agree at every checkpoint (runtime.check_ranks_agree raises otherwise)."""
    out = torchrun("distill.py", "--teacher", teacher, "--data", tone_corpus[0], "--out-dir", str(tmp_path),
                   "--student", "tiny", "--dim", "32", "--ffn", "32", "--heads", "2", "--batch-seconds", "2",
                   "--max-steps", "3", "--save-every", "2", "--grad-accum", "2", "--disc-weight", "0.5",
                   "--teacher-cache", str(tmp_path / "states.pt"), "--device", "cpu")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[:4000] + out.stderr[-3000:]  # the head holds a rank's traceback
    assert "device cpu x2" in out.stdout and out.stdout.count("done:") == 1  # rank 0 alone reports
    assert (tmp_path / "states.pt").exists()  # made by one rank, read by both
    ckpt = checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2  # every rank's RNG state, for exact resume
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # seed + rank


@pytest.mark.parametrize("frontend_steps", [0, 2])
def test_fbank_student_distills_under_torchrun_with_and_without_the_front_end_stage(frontend_steps, tone_corpus,
                                                                                     teacher, tmp_path):
    """Every parameter DDP knows of must get a gradient (or DDP must look for the ones that do not):
    the stage-1 projection to teacher layer 0 exists only with --frontend-steps > 0, where stage 1
    leaves the transformer and heads without gradients and stage 2 the projection. Before, an Fbank
    student with --frontend-steps 0 failed at step 2 with "Expected to have finished reduction"."""
    out = torchrun("distill.py", "--teacher", teacher, "--data", tone_corpus[0], "--out-dir", str(tmp_path),
                   "--student", "fithubert-fbank", "--layers", "2", "--dim", "32", "--ffn", "32", "--heads", "2",
                   "--batch-seconds", "2", "--max-steps", str(frontend_steps + 2), "--frontend-steps",
                   str(frontend_steps), "--save-every", "2", "--disc-weight", "0.5", "--lr", "1e-3", "--device", "cpu")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[:4000] + out.stderr[-3000:]  # the head holds a rank's traceback
    assert "device cpu x2" in out.stdout and out.stdout.count("done:") == 1
    ckpt = checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == frontend_steps + 2  # parameters agreed across ranks at steps 2 and 4
    assert ("frontend_proj.weight" in ckpt["distiller"]) == (frontend_steps > 0)


def test_finetune_under_torchrun_two_ranks_trains_the_encoder_after_the_freeze(tone_corpus, student, tmp_path):
    """DDP across the frozen -> unfrozen switch (requires_grad flips after DDP was built), with
    gradient accumulation and the dev WER decoded in shares by both ranks."""
    out = torchrun("finetune.py", "--init", student, "--train", tone_corpus[0], "--valid", tone_corpus[1],
                   "--out-dir", str(tmp_path), "--max-steps", "3", "--freeze-steps", "1", "--eval-every", "2",
                   "--grad-accum", "2", "--batch-seconds", "2", "--mask-channel-length", "8", "--lr", "1e-3",
                   "--device", "cpu")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[:4000] + out.stderr[-3000:]  # the head holds a rank's traceback
    assert "device cpu x2" in out.stdout and out.stdout.count(": dev WER") == 2  # steps 2, 3; rank 0 only
    init = checkpoints.load_checkpoint(student)["encoder"]
    tuned = checkpoints.load_checkpoint(tmp_path / "last.pt")["encoder"]
    name = "encoder.transformer.layers.0.feed_forward.output_dense.weight"
    assert not torch.equal(init[name], tuned[name])  # the encoder trained after step 1
    assert torch.equal(init["feature_extractor.conv_layers.0.conv.weight"],
                       tuned["feature_extractor.conv_layers.0.conv.weight"])  # the CNN never does


# ---- Exact resume, --stop-after, Ctrl-C


def assert_same_state(a, b):
    """Bit-identical nested checkpoints (tensors compared exactly; args may differ)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            if k != "args":
                assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN == NaN here


class SimulatedCrash(Exception):
    pass


def test_resume_continues_exactly_from_the_saved_step(toy_corpus, tmp_path, monkeypatch):
    run_pretrain(toy_corpus, tmp_path / "straight", "--max-steps", "4")
    save = checkpoints.save_checkpoint

    def crash_after_step_2(obj, path):
        save(obj, path)
        if obj.get("step") == 2:
            raise SimulatedCrash

    monkeypatch.setattr(checkpoints, "save_checkpoint", crash_after_step_2)
    with pytest.raises(SimulatedCrash):
        run_pretrain(toy_corpus, tmp_path / "resumed", "--max-steps", "4", "--save-every", "2")
    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    run_pretrain(toy_corpus, tmp_path / "resumed", "--max-steps", "4", "--resume")
    logs = [json.loads(line) for line in open(tmp_path / "resumed" / "log.jsonl")]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    a = torch.load(tmp_path / "straight" / "teacher.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "teacher.pt", weights_only=True)
    for k in a["encoder"]:
        assert torch.equal(a["encoder"][k], b["encoder"][k]), k
    assert torch.equal(a["head"]["codewords"], b["head"]["codewords"])


def press_ctrl_c_during_step(driver, step, monkeypatch):
    """The user presses Ctrl-C while step `step` (1-based) of a driver's run is under way: SIGINT
    arrives when the driver asks lr_at for that step's learning rate. Returns the real lr_at."""
    lr_at = driver.lr_at

    def lr_at_with_ctrl_c(s, *args):
        if s == step - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return lr_at(s, *args)

    monkeypatch.setattr(driver, "lr_at", lr_at_with_ctrl_c)
    return lr_at


def test_pretrain_ctrl_c_saves_exits_130_and_resumes_to_the_same_teacher(toy_corpus, tmp_path, monkeypatch, capsys):
    """pretrain.py shares the drivers' plumbing: Ctrl-C finishes the step, saves, exits 130, and
    --resume ends at the teacher an uninterrupted run writes."""
    run_pretrain(toy_corpus, tmp_path / "straight", "--max-steps", "4")
    lr_at = press_ctrl_c_during_step(pretrain, 2, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        run_pretrain(toy_corpus, tmp_path / "split", "--max-steps", "4")
    assert stop.value.code == 130 and "interrupted: the state after step 2" in capsys.readouterr().err
    assert not (tmp_path / "split" / "teacher.pt").exists()
    monkeypatch.setattr(pretrain, "lr_at", lr_at)
    run_pretrain(toy_corpus, tmp_path / "split", "--max-steps", "4", "--resume")
    a = torch.load(tmp_path / "straight" / "teacher.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "teacher.pt", weights_only=True)
    for k in a["encoder"]:
        assert torch.equal(a["encoder"][k], b["encoder"][k]), k
    assert torch.equal(a["head"]["codewords"], b["head"]["codewords"])


def test_distill_stopped_after_k_steps_and_resumed_is_bit_identical(tone_corpus, teacher, distill_straight,
                                                                    tmp_path):
    distill.main(distill_args(tone_corpus, teacher, tmp_path, "--max-steps", "4", "--grad-accum", "2",
                                  "--stop-after", "1"))
    assert checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    assert not (tmp_path / "student.pt").exists()
    distill.main(distill_args(tone_corpus, teacher, tmp_path, "--max-steps", "4", "--grad-accum", "2",
                                  "--resume"))
    resumed = checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed["step"] == 4
    assert_same_state(distill_straight, resumed)  # weights, AdamW moments, data order, RNG


def test_ctrl_c_saves_the_current_step_and_exits_130_and_resume_is_exact(tone_corpus, teacher, distill_straight,
                                                                         tmp_path, monkeypatch, capsys):
    lr_at = press_ctrl_c_during_step(distill, 3, monkeypatch)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    with pytest.raises(SystemExit) as stop:
        distill.main(distill_args(tone_corpus, teacher, tmp_path, "--max-steps", "4", "--grad-accum", "2"))
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT: stopping after this step" in err and "interrupted: the state after step 3" in err
    assert "--resume" in err.splitlines()[-1]  # how to go on
    assert checkpoints.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3  # the step under way was finished
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.setattr(distill, "lr_at", lr_at)
    distill.main(distill_args(tone_corpus, teacher, tmp_path, "--max-steps", "4", "--grad-accum", "2",
                                  "--resume"))
    assert_same_state(distill_straight, checkpoints.load_checkpoint(tmp_path / "checkpoint.pt"))


def test_finetune_stopped_after_k_steps_and_resumed_is_bit_identical(tone_corpus, student, tmp_path):
    """Stopped inside the frozen phase, resumed across the unfreeze and a dev evaluation."""
    finetune.main(finetune_args(tone_corpus, student, tmp_path / "straight", "--max-steps", "4"))
    finetune.main(finetune_args(tone_corpus, student, tmp_path / "split", "--max-steps", "4",
                                    "--stop-after", "1"))
    assert checkpoints.load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 1
    finetune.main(finetune_args(tone_corpus, student, tmp_path / "split", "--max-steps", "4", "--resume"))
    for name in ("checkpoint.pt", "last.pt", "best.pt"):
        assert_same_state(checkpoints.load_checkpoint(tmp_path / "straight" / name),
                              checkpoints.load_checkpoint(tmp_path / "split" / name))


# ---- Checkpoints: atomic writes, untrusted files


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoints.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f, *args, **kwargs):  # the disk fills up, or the job is killed
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no partial temp file left behind


def test_checkpoint_whose_pickle_would_run_os_system_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": {}}, "extra_state": RunsCode(f"touch {sentinel}")}, path)
    with pytest.raises(ValueError, match=r"evil\.pt: not a loadable checkpoint .*system.*refusing"):
        load_teacher(str(path))
    assert not sentinel.exists()
    with open(path, "rb") as f:  # the fixture is real: an unrestricted unpickler does run it
        torch.load(f, weights_only=False)
    assert sentinel.exists()


def test_untrusted_checkpoints_never_run_code_on_any_loading_path(tone_corpus, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "kind": "ctc", "config": RunsCode(f"touch {marker}")}, evil)
    for out in ("distill_out", "finetune_out"):  # a planted OUT/checkpoint.pt, loaded by --resume
        os.makedirs(tmp_path / out)
        torch.save({"step": RunsCode(f"touch {marker}")}, tmp_path / out / "checkpoint.pt")
    wave = os.path.join(tone_corpus[1], "100", "1", "100-1-0000.flac")
    paths = {
        "load_teacher": lambda: model.load_teacher(str(evil)),
        "finetune --init": lambda: finetune.main(finetune.parse_args(
            ["--init", str(evil), "--train", tone_corpus[0], "--out-dir", str(tmp_path / "ft"), "--device", "cpu"])),
        "distill --resume": lambda: distill.main(distill.parse_args(
            ["--teacher", str(evil), "--data", tone_corpus[0], "--out-dir", str(tmp_path / "distill_out"),
             "--resume", "--device", "cpu"])),
        "finetune --resume": lambda: finetune.main(finetune.parse_args(
            ["--init", str(evil), "--train", tone_corpus[0], "--out-dir", str(tmp_path / "finetune_out"),
             "--resume", "--device", "cpu"])),
        "finetune --eval": lambda: finetune.main(finetune.parse_args(
            ["--eval", str(evil), "--data", tone_corpus[1], "--device", "cpu"])),
        "finetune --transcribe": lambda: finetune.main(finetune.parse_args(
            ["--transcribe", str(evil), wave, "--device", "cpu"])),
    }
    for name, load in paths.items():
        with pytest.raises(ValueError, match="refusing to run it") as refused:
            load()
        assert "posix.system" in str(refused.value) or "os.system" in str(refused.value), name
        assert not marker.exists(), f"{name} ran code from the checkpoint"
    torch.load(evil, weights_only=False)  # the file is live: an unsafe load does run it
    assert marker.exists()


# ---- Bad inputs: one clear message naming the culprit and the fix, no work lost


def test_bad_teacher_sources_give_one_line_errors_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt: no such file or folder"):
        load_teacher(str(tmp_path / "nowhere.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable checkpoint") as e:
        load_teacher(str(junk))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no config.json"):
        load_teacher(str(tmp_path))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd\.pt: unknown checkpoint layout"):
        load_teacher(str(tmp_path / "odd.pt"))
    with open(tmp_path / "list.pt", "wb") as f:  # a plain pickle, not a torch file
        pickle.dump([1, 2], f, protocol=2)
    with pytest.raises(ValueError, match=r"list\.pt: (not a loadable checkpoint|unknown checkpoint layout)"):
        load_teacher(str(tmp_path / "list.pt"))


def test_cli_errors_are_one_line_without_traceback(tmp_path, tone_corpus, teacher):
    os.makedirs(tmp_path / "empty")
    runs = {
        "holds no audio": run_cli("distill.py", "--teacher", teacher, "--data", str(tmp_path / "empty"),
                                  "--out-dir", str(tmp_path / "o1"), "--device", "cpu"),
        "no such file or folder": run_cli("finetune.py", "--init", str(tmp_path / "missing.pt"), "--train",
                                          tone_corpus[0], "--out-dir", str(tmp_path / "o2"), "--device", "cpu"),
    }
    for expected, out in runs.items():
        assert out.returncode == 1 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_fbank_only_flags_on_a_cnn_student_are_one_line_errors(tmp_path, tone_corpus, teacher, student):
    """--frontend-steps (which used to die at step 1 in a TypeError traceback) and --specaugment
    need an Fbank front-end: distill.py refuses them before any work, finetune.py before training."""
    distill_args = ["--teacher", teacher, "--data", tone_corpus[0], "--device", "cpu", "--student", "tiny"]
    runs = {
        "--frontend-steps needs an Fbank student": run_cli("distill.py", *distill_args, "--out-dir",
                                                           str(tmp_path / "o1"), "--frontend-steps", "2"),
        "--specaugment needs an Fbank student": run_cli("distill.py", *distill_args, "--out-dir",
                                                        str(tmp_path / "o2"), "--specaugment"),
        f"--specaugment needs an Fbank student (distilled from a *-fbank preset); {student}":
            run_cli("finetune.py", "--init", student, "--train", tone_corpus[0], "--out-dir",
                    str(tmp_path / "o3"), "--device", "cpu", "--specaugment"),
    }
    for expected, out in runs.items():
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("error: " + expected), out.stderr
    assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o2")  # refused before any work


def test_unknown_preset_is_a_usage_error_listing_the_presets(capsys):
    with pytest.raises(SystemExit) as stop:
        distill.parse_args(["--teacher", "t.pt", "--data", "d", "--out-dir", "o", "--student", "fithubertt"])
    assert stop.value.code == 2
    assert "invalid choice: 'fithubertt' (choose from" in capsys.readouterr().err


def test_unreadable_audio_header_stops_before_training_naming_the_file(tmp_path):
    corpus = write_tone_corpus(str(tmp_path / "c"), utterances=2)
    bad = os.path.join(corpus, "100", "1", "100-1-0009.wav")
    with open(bad, "wb") as f:
        f.write(b"RIFF1234WAVEjunk")
    with pytest.raises(ValueError, match=r"1 unreadable audio file\(s\): .*100-1-0009.wav .*delete or re-encode"):
        data.load_corpus([corpus])


def test_audio_broken_inside_stops_training_with_a_checkpoint_naming_the_file(tmp_path, teacher, capsys):
    """A truncated FLAC has a good header (so the corpus loads) but fails to decode mid-training."""
    corpus = write_tone_corpus(str(tmp_path / "c"), utterances=5)
    flac = os.path.join(corpus, "100", "1", "100-1-0003.flac")
    whole = open(flac, "rb").read()
    with open(flac, "wb") as f:
        f.write(whole[:len(whole) // 2])
    with pytest.raises(SystemExit) as stop:
        distill.main(distill_args((corpus,), teacher, tmp_path / "out", "--max-steps", "6"))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {flac}: cannot read audio" in err and "delete or re-encode it" in err and "--resume" in err
    ckpt = checkpoints.load_checkpoint(tmp_path / "out" / "checkpoint.pt")  # the steps done are kept
    assert ckpt["step"] < 6 and f"after step {ckpt['step']}" in err


def test_8khz_stereo_is_resampled_and_downmixed_and_too_short_audio_is_left_out_with_a_warning(tmp_path, capsys):
    corpus = write_tone_corpus(str(tmp_path / "c"), utterances=2)
    folder = os.path.join(corpus, "100", "1")
    left, right = np.full(8000, 0.5, np.float32), np.full(8000, -0.1, np.float32)
    sf.write(os.path.join(folder, "100-1-0100.wav"), np.stack([left, right], 1), 8000)  # 1 s, 8 kHz stereo
    sf.write(os.path.join(folder, "100-1-0101.flac"), np.zeros(300, np.float32), data.SAMPLE_RATE)  # 19 ms
    utts = {u.id: u for u in data.load_corpus([corpus])}
    wave = data.load_audio(utts["100-1-0100"].path)
    assert wave.shape == (16000,) == (utts["100-1-0100"].num_samples,)
    assert abs(wave[4000:12000].mean().item() - 0.2) < 1e-3  # (0.5 - 0.1) / 2
    kept = data.drop_short(list(utts.values()))
    assert {u.id for u in kept} == set(utts) - {"100-1-0101"}
    err = capsys.readouterr().err
    assert "leaving out 1 of 4 utterances shorter than 25 ms" in err and "100-1-0101.flac" in err
    with pytest.raises(ValueError, match="every utterance is shorter than 400 samples"):
        data.drop_short([utts["100-1-0101"]])


def test_transcript_outside_the_vocabulary_names_the_file_and_line(tmp_path, student):
    corpus = write_tone_corpus(str(tmp_path / "c"), utterances=3)
    trans = os.path.join(corpus, "100", "1", "100-1.trans.txt")
    lines = open(trans).read().splitlines()
    lines[1] = "100-1-0001 CAFÉ AU LAIT"
    open(trans, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"100-1\.trans\.txt:2 .*'É' .*not in the vocabulary"):
        finetune.main(finetune.parse_args(["--init", student, "--train", corpus,
                                           "--out-dir", str(tmp_path / "o"), "--device", "cpu"]))


def test_missing_junk_and_foreign_teachers_and_mismatched_init_get_clear_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    foreign = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(FileNotFoundError, match="no such file or folder; pass a fairseq"):
        model.load_teacher(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="junk.pt: not a loadable checkpoint"):
        model.load_teacher(str(junk))
    with pytest.raises(ValueError, match=r"resnet.pt: unknown checkpoint layout \(\['state_dict'\]\)"):
        model.load_teacher(str(foreign))
    with pytest.raises(ValueError, match="unknown student preset 'nope'"):
        model.build_student("nope")
    with pytest.raises(ValueError, match="cannot initialise a 2x48 .* from the layers of a 2x32"):
        model.build_student("distilhubert", tiny_teacher(layers=2), dim=48)


def test_nan_loss_stops_naming_the_step(tmp_path, tone_corpus, student, monkeypatch, capsys):
    teacher = save_teacher(tmp_path / "nan_teacher.pt", nan=True)
    with pytest.raises(SystemExit) as stop:
        distill.main(distill_args(tone_corpus, teacher, tmp_path / "d", "--max-steps", "3"))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 1 (" in err and "teacher with broken weights" in err
    real_ctc_loss = torch.nn.functional.ctc_loss
    calls = []

    def ctc_loss_nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = real_ctc_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(torch.nn.functional, "ctc_loss", ctc_loss_nan_at_step_3)
    with pytest.raises(SystemExit) as stop:
        finetune.main(finetune_args(tone_corpus, student, tmp_path / "f", "--max-steps", "4"))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 3 (ctc nan" in err and "(step 2)" in err  # the last checkpoint, kept


# ---- Throughput benchmark


def test_bench_reports_audio_seconds_per_second_and_mfu_for_fp32_and_bf16(monkeypatch, capsys, tmp_path):
    toy_teacher = {**TEACHER, "layers": 2}
    monkeypatch.setattr(bench, "SETUPS", {"toy": (toy_teacher, "tiny")})
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype: 1e10)  # bf16 as fast as fp32: not skipped
    rows = bench.main(bench.parse_args(["--setups", "toy", "--batch", "2", "--seconds", "0.5", "--steps", "1",
                                        "--device", "cpu", "--json", str(tmp_path / "bench.json")]))
    assert [(r["setup"], r["precision"]) for r in rows] == [("toy", "fp32"), ("toy", "bf16")]
    for r in rows:
        assert r["gflop"] > 0 and r["mfu"] > 0 and r["audio_s_per_s"] == pytest.approx(1.0 / r["seconds"])
        assert r["top_ops"] and all(0 <= v <= 1 for v in r["top_ops"].values())
    out = capsys.readouterr().out
    assert "matmul peak fp32" in out and "audio-s/s   MFU" in out and "time: " in out
    assert json.load(open(tmp_path / "bench.json"))["rows"][0]["setup"] == "toy"
    if os.path.exists("/proc/self/clear_refs"):  # Linux: the process's peak, at least what torch holds
        assert all(0.05 < r["peak_gb"] < 20 for r in rows) and "peak memory" in out
    bench.reset_peak_memory(torch.device("cpu"))
    before = bench.peak_memory(torch.device("cpu"))
    big = torch.ones(64 * 2**20)  # 256 MB, touched
    if before is not None:
        assert bench.peak_memory(torch.device("cpu")) - before > 200e6
    del big


def test_bench_counts_cpu_attention_flops():
    """FlopCounterMode misses CPU's flash attention kernel; bench adds its formula."""
    from torch.utils.flop_counter import FlopCounterMode
    q = torch.randn(2, 4, 50, 16)
    with FlopCounterMode(display=False, custom_mapping=bench.attention_flops()) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 4 * 50 * 50 * 16)  # QK^T and AV
