"""Scoring ASR output: CTC decoding (greedy, or beam search with a KenLM language model through
torchaudio's decoder), the text normalisation WER is computed on, and a model's WER on a set.

finetune.py uses it for dev WER, --eval and --transcribe; demo.py for the test WER of its rows.

    wer, rows = evaluate(ctc, data.load_corpus(["corpus/test"]), torch.device("cpu"), batch_seconds=16)
"""
import math
import os
import re
import sys

import jiwer
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoints
import data


def greedy_decode(log_probs, frame_lengths):
    """Best path: argmax per frame, merge repeats, drop blanks. [B, T, V] -> list of strings.
    The argmax runs over the blank and the characters only, as in the transformers export:
    <s>, </s> and <unk> never train (checkpoints.NEVER_EMITTED says why)."""
    never = torch.zeros(log_probs.shape[-1], dtype=torch.bool, device=log_probs.device)
    never[checkpoints.NEVER_EMITTED] = True
    best = log_probs.masked_fill(never, -math.inf).argmax(-1).cpu()
    texts = []
    for ids, n in zip(best, frame_lengths.tolist()):
        ids = torch.unique_consecutive(ids[:n])
        texts.append(data.decode([i for i in ids.tolist() if i != data.BLANK]))
    return texts


def make_decoder(args):
    """(decode(log_probs [B, T, V], frame_lengths [B]) -> list of str, description of the decoding)."""
    if not (args.lm or args.lexicon):
        return greedy_decode, "greedy decoding"
    for path in (args.lm, args.lexicon):
        if path and not os.path.isfile(path):
            sys.exit(f"error: {path}: no such file")
    try:  # torchaudio imports flashlight-text on first use of the decoder module
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError):
        sys.exit("error: --lm / --lexicon need flashlight-text for torchaudio's CTC beam search: "
                 "pip install flashlight-text (or drop them for greedy decoding)")
    beam = ctc_decoder(lexicon=args.lexicon, tokens=data.VOCAB, lm=args.lm, beam_size=args.beam,
                       lm_weight=args.lm_weight, word_score=args.word_score,
                       blank_token=data.VOCAB[data.BLANK], sil_token=data.WORD_SEP, unk_word="<unk>")

    def decode(log_probs, frame_lengths):
        hyps = beam(log_probs.float().cpu(), frame_lengths.cpu().int())
        # With a lexicon the decoder spells out words; without, its tokens carry the "|"s.
        return [" ".join(h[0].words) if args.lexicon else data.decode(h[0].tokens) for h in hyps]

    return decode, (f"beam search: beam {args.beam}, LM {args.lm or 'none'}, lexicon "
                    f"{args.lexicon or 'none'}, LM weight {args.lm_weight}, word score {args.word_score}")


def normalize_for_wer(text):
    """Upper case, no punctuation (the apostrophe is a letter here), single spaces."""
    return " ".join(re.sub(r"[^A-Z']", " ", (text or "").upper()).split())


@torch.no_grad()
def evaluate(ctc, utterances, device, batch_seconds, decode=greedy_decode, desc=None, rank=0, world=1,
             frontend_cache=None):
    """WER in percent (jiwer) and the (id, reference, hypothesis) rows, sorted by id; tqdm bar when
    desc is given. Under DDP each rank decodes every world-th utterance and all ranks get all rows
    (and the same AudioError, if one rank meets a broken file). frontend_cache: a caches.FrontendCache
    whose stored front-end output stands in for the CNN's (finetune.py's dev WER with --cache-frontend)."""
    ctc.eval()
    shard = utterances[rank::world]
    loader, _ = data.make_loader(shard, batch_seconds, shuffle=False, seed=0)
    rows, error = [], None
    with tqdm(total=len(shard), desc=desc, unit="utt", disable=desc is None or rank > 0) as bar:
        try:
            for batch in loader:
                waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
                features = frontend_cache(batch["ids"], waves, lengths) if frontend_cache else None
                log_probs, frame_lengths = ctc(waves, lengths, features)
                rows += zip(batch["ids"], batch["texts"], decode(log_probs, frame_lengths))
                bar.update(len(batch["ids"]))
        except data.AudioError as e:
            error = str(e)
    if world > 1:
        shards = [None] * world
        dist.all_gather_object(shards, (rows, error))
        rows = [row for shard, _ in shards for row in shard]
        error = next((e for _, e in shards if e), None)
    if error:
        raise data.AudioError(error)
    rows.sort()
    wer = jiwer.wer([normalize_for_wer(r) for _, r, _ in rows], [normalize_for_wer(h) for _, _, h in rows])
    return 100.0 * wer, rows
