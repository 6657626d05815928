"""Checkpoint I/O: this project's checkpoints (atomic writes, weights-only loads), HuBERT teachers
from fairseq, Hugging Face and torchaudio files, and fine-tuned students written back out as a
transformers HubertForCTC folder, distilled encoders as a HubertModel folder (or, for Fbank, their own).

Readers return plain data (config dicts and state dicts) and build no networks: model.load_teacher(src)
is the entry point for reading; it calls the readers here and builds the encoder. Nothing here
imports fairseq, omegaconf or transformers, and no pickle gets to run code.

    python -c "import model; print(model.load_teacher('hubert_base_ls960.pt').config)"
    python finetune.py --export-hf runs/tiny-ctc/best.pt hf-tiny      # export_huggingface
    python finetune.py --export-encoder runs/tiny/student.pt enc-tiny  # export_encoder
"""
import argparse
import ast
import json
import os
import re
from dataclasses import asdict

import torch

import data

# ----------------------------------------------------------------------------------------------
# This project's checkpoints: plain tensors and values, atomic writes, no code execution on load

CHECKPOINT_FORMAT = "hubert-distill/1"  # marks this project's own checkpoints
ENCODER_FORMAT = "hubert-distill/encoder/1"  # config.json of an exported Fbank encoder (export_encoder)


def save_checkpoint(obj, path):
    """torch.save to a temp file, then os.replace: a crash mid-write leaves the old file intact."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the old file's name (power loss)
    except BaseException:
        if os.path.exists(tmp):  # a partial file must not be mistaken for a checkpoint
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def load_checkpoint(path, allow=(), mmap=False):
    """torch.load(weights_only=True): tensors and plain values only, never code from the file.
    `allow` names the few extra classes a foreign pickle may hold (pickle_allow_list);
    a pickle that names anything else (os.system, a fairseq model class) is refused unrun.
    mmap: tensors stay in the file, read when touched (large caches)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # a refused global, or not a torch file at all
        msg = str(e)
        refused = re.search(r"GLOBAL ([\w.]+)", msg)  # torch words it in several ways
        other = re.search(r"WeightsUnpickler error: (.+)", msg)
        if refused:
            reason = f"its pickle asks for {refused.group(1)}, which is not plain data; refusing to run it"
        else:
            reason = (other.group(1) if other else (msg.strip().splitlines() or [type(e).__name__])[0])[:200]
        raise ValueError(f"{path}: not a loadable checkpoint ({reason})") from None


def encoder_checkpoint(encoder, kind: str, **extra):
    """The dict this project saves: enough to rebuild the encoder from the file alone."""
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "config": asdict(encoder.config),
            "encoder": encoder.state_dict(), **extra}


# ----------------------------------------------------------------------------------------------
# Reading teachers
#
# Each source becomes {"config": EncoderConfig's fields, "encoder": a state dict in torchaudio's
# parameter names, "head": HuBERT's prediction head or None, "file"}, which model.load_teacher
# loads into Encoder unchanged. fairseq: keys renamed as in torchaudio's import_fairseq._map_key,
# architecture read from the file's cfg (hydra era) or args (legacy). Hugging Face: the modules
# already carry torchaudio's names (see torchaudio's import_huggingface); only prefixes move.

TEACHER_DROPOUTS = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0)
POS_CONV = "encoder.transformer.pos_conv_embed.conv."  # torchaudio's weight-normed positional conv


class FairseqObject:
    """Inert stand-in for a fairseq class inside a checkpoint pickle (hubert_base_ls960.pt
    pickles its label Dictionary): keeps the pickled fields as plain data, runs no code."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


FAIRSEQ_PICKLED_CLASSES = ["fairseq.data.dictionary.Dictionary"]


def pickle_allow_list():
    """What a fairseq pickle may name besides tensors: argparse.Namespace (legacy `args`), numpy
    scalars, arrays and dtypes (training statistics), fairseq's Dictionary (as FairseqObject)."""
    import numpy as np
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:
        from numpy.core import multiarray  # numpy 1
    allowed = [argparse.Namespace, np.ndarray, np.dtype]
    allowed += sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGUS"}, key=str)  # Float64DType, ...
    for fn in (multiarray.scalar, multiarray._reconstruct):  # files from numpy 1 and 2 spell them apart
        allowed += [(fn, f"numpy.{core}.multiarray.{fn.__name__}") for core in ("core", "_core")]
    return allowed + [(FairseqObject, name) for name in FAIRSEQ_PICKLED_CLASSES]


def refold_pos_conv(state):
    """`state` (torchaudio names) with the positional conv's weight norm as torchaudio registers it."""
    state = dict(state)
    # The positional conv is weight-normed over its kernel axis (dim 2); torchaudio registers that
    # as a parametrization (original0 = g, original1 = v), fairseq and older files as weight_g/_v.
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        if POS_CONV + old in state:
            state[f"{POS_CONV}parametrizations.weight.{new}"] = state.pop(POS_CONV + old)
    if POS_CONV + "weight" in state:  # norm already folded in: v = w, g = |w| per kernel tap
        w = state.pop(POS_CONV + "weight")
        state[f"{POS_CONV}parametrizations.weight.original0"] = w.norm(dim=(0, 1), keepdim=True)
        state[f"{POS_CONV}parametrizations.weight.original1"] = w
    return state


# fairseq name prefix -> torchaudio's (as torchaudio.models.wav2vec2.utils.import_fairseq._map_key);
# the first rule that matches wins
FAIRSEQ_KEYS = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    # CNN norms: LayerNorm in every layer (Large, "2.1."), or GroupNorm in the first only (Base)
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"feature_extractor.conv_layers.\1.layer_norm."),
    (r"feature_extractor\.conv_layers\.0\.2\.", r"feature_extractor.conv_layers.0.layer_norm."),
    (r"layer_norm\.", r"encoder.feature_projection.layer_norm."),
    (r"post_extract_proj\.", r"encoder.feature_projection.projection."),
    (r"encoder\.pos_conv\.0\.", POS_CONV),
    (r"encoder\.layer_norm\.", r"encoder.transformer.layer_norm."),
    (r"encoder\.layers\.(\d+)\.self_attn\.", r"encoder.transformer.layers.\1.attention."),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.transformer.layers.\1.layer_norm."),
    (r"encoder\.layers\.(\d+)\.fc1\.", r"encoder.transformer.layers.\1.feed_forward.intermediate_dense."),
    (r"encoder\.layers\.(\d+)\.fc2\.", r"encoder.transformer.layers.\1.feed_forward.output_dense."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.transformer.layers.\1.final_layer_norm."),
]
FAIRSEQ_SKIPPED = ("mask_emb", "quantizer.", "project_q.", "target_glu.",  # pre-training only
                   "w2v_encoder.proj.")  # the CTC layer of fine-tuned files
# fairseq's HubertConfig defaults (HuBERT Base), for fields a legacy `args` may leave out
FAIRSEQ_DEFAULTS = dict(
    extractor_mode="default", conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    conv_bias=False, encoder_embed_dim=768, encoder_layers=12, encoder_attention_heads=12,
    encoder_ffn_embed_dim=3072, conv_pos=128, conv_pos_groups=16, layer_norm_first=False,
    activation_fn="gelu")


def parse_conv_layers(spec):
    """fairseq's conv_feature_layers string, parsed without eval():

    >>> parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 2")
    [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    """
    layers = []
    for term in "".join(str(spec).split()).split("+"):  # "[(c,k,s),...]" or "[(c,k,s),...]*n"
        m = re.fullmatch(r"(\[[\d,()]*\])(?:\*(\d+))?", term)
        items = ast.literal_eval(m.group(1)) if m else None
        if not items or not all(isinstance(c, tuple) and len(c) == 3 for c in items):
            raise ValueError(f"cannot parse conv_feature_layers {spec!r}; expected e.g. "
                             f"'[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2'")
        layers += items * int(m.group(2) or 1)
    return layers


def fairseq_architecture(ckpt, path):
    """(model fields, task fields) of the pre-trained encoder: cfg['model'] and cfg['task']
    (hydra era) or args (legacy); fine-tuned files nest the pre-training config in w2v_args."""
    def plain(x):
        return vars(x) if isinstance(x, argparse.Namespace) else dict(x or {})
    if ckpt.get("cfg"):
        model, task = plain(ckpt["cfg"].get("model")), plain(ckpt["cfg"].get("task"))
    else:
        model = task = plain(ckpt.get("args"))
    w2v = plain(model.get("w2v_args"))
    if w2v:  # the pre-training cfg ({"model", "task"}) or, in legacy files, its flat args
        outer_normalize = {"normalize": task["normalize"]} if "normalize" in task else {}
        model, task = (plain(w2v["model"]), plain(w2v.get("task"))) if "model" in w2v else (w2v, w2v)
        task = {**task, **outer_normalize}
    if "encoder_embed_dim" not in model:
        raise ValueError(f"{path}: no encoder architecture (encoder_embed_dim) in cfg['model'], "
                         f"its w2v_args or args; a fine-tuned file must embed its pre-training config")
    return {**FAIRSEQ_DEFAULTS, **model}, task


def read_fairseq(ckpt, path):
    """{"config", "encoder", "head" (or None), "file"} from a loaded fairseq HuBERT checkpoint dict."""
    m, task = fairseq_architecture(ckpt, path)
    if m["activation_fn"] != "gelu" or m["extractor_mode"] not in ("default", "layer_norm"):
        raise ValueError(f"{path}: unsupported fairseq model (activation_fn {m['activation_fn']!r}, "
                         f"extractor_mode {m['extractor_mode']!r}); needs gelu and default or layer_norm")
    config = dict(
        extractor_mode="group_norm" if m["extractor_mode"] == "default" else "layer_norm",
        conv_layers=parse_conv_layers(m["conv_feature_layers"]), conv_bias=bool(m["conv_bias"]),
        dim=int(m["encoder_embed_dim"]), layers=int(m["encoder_layers"]),
        heads=int(m["encoder_attention_heads"]), ffn=int(m["encoder_ffn_embed_dim"]),
        pos_conv_kernel=int(m["conv_pos"]), pos_conv_groups=int(m["conv_pos_groups"]),
        layer_norm_first=bool(m["layer_norm_first"]),
        normalize_waveform=bool(task.get("normalize", False)), **TEACHER_DROPOUTS)
    state, head_state = {}, {}
    for key, value in ckpt["model"].items():
        key = re.sub(r"^(w2v_encoder\.)?w2v_model\.", "", key)  # fine-tuned files nest the encoder
        if key in ("final_proj.weight", "final_proj.bias"):
            head_state[key] = value
        elif key == "label_embs_concat":
            head_state["codewords"] = value
        elif not key.startswith(FAIRSEQ_SKIPPED):
            rule = next((r for r in FAIRSEQ_KEYS if re.match(r[0], key)), None)
            if rule is None:
                raise ValueError(f"{path}: unexpected parameter {key!r}; not a fairseq HuBERT encoder?")
            state[re.sub(rule[0], rule[1], key, count=1)] = value
    head = head_state if len(head_state) >= 3 else None  # fine-tuned files drop final_proj: no head
    return {"config": config, "encoder": state, "head": head, "file": path}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_huggingface_weights(folder):
    """State dict of a Hugging Face folder: safetensors (one file or shards) or pytorch_model.bin."""
    single, index = (os.path.join(folder, f) for f in ("model.safetensors", "model.safetensors.index.json"))
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        files = sorted({os.path.join(folder, f) for f in read_json(index)["weight_map"].values()})
    elif os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        return load_checkpoint(os.path.join(folder, "pytorch_model.bin"), allow=pickle_allow_list())
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")
    from safetensors.torch import load_file
    state = {}
    for f in files:
        try:
            state.update(load_file(f))
        except Exception as e:  # safetensors' own error types
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(f"{f}: not a readable safetensors file ({reason})") from None
    return state


# config.json settings torchaudio's encoder cannot express: (field, accepted values incl. absent)
HF_REQUIRED = [("model_type", ("hubert", "wav2vec2", None)), ("feat_extract_norm", ("group", "layer", None)),
               ("feat_proj_layer_norm", (True, False, None)), ("conv_pos_batch_norm", (False, None)),
               ("hidden_act", ("gelu", None)), ("feat_extract_activation", ("gelu", None)),
               ("layer_norm_eps", (1e-5, None))]


def read_huggingface(folder):
    """{"config", "encoder", "head": None, "file"} from a folder written by transformers'
    save_pretrained (HubertModel, HubertForCTC, Wav2Vec2Model); Hugging Face files carry no HuBERT
    prediction head."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{folder}: no config.json; a Hugging Face model folder holds config.json "
                         f"plus model.safetensors or pytorch_model.bin")
    c = read_json(config_path)
    if c.get("format") == ENCODER_FORMAT:  # export_encoder's own layout (Fbank encoders)
        return {"config": c["config"], "encoder": read_huggingface_weights(folder), "head": None, "file": folder}
    bad = {k: c[k] for k, accepted in HF_REQUIRED if c.get(k) not in accepted}
    if bad:
        raise ValueError(f"{config_path}: unsupported settings {bad}; needs {dict(HF_REQUIRED)}")
    preprocessor = os.path.join(folder, "preprocessor_config.json")  # absent: no normalisation
    normalize = os.path.isfile(preprocessor) and bool(read_json(preprocessor).get("do_normalize"))
    # Absent fields take transformers' HubertConfig defaults (HuBERT Base).
    conv = zip(c.get("conv_dim", [512] * 7), c.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]),
               c.get("conv_stride", [5, 2, 2, 2, 2, 2, 2]))
    config = dict(
        extractor_mode=c.get("feat_extract_norm", "group") + "_norm", conv_layers=list(conv),
        conv_bias=c.get("conv_bias", False), dim=c.get("hidden_size", 768),
        layers=c.get("num_hidden_layers", 12), heads=c.get("num_attention_heads", 12),
        ffn=c.get("intermediate_size", 3072), pos_conv_kernel=c.get("num_conv_pos_embeddings", 128),
        pos_conv_groups=c.get("num_conv_pos_embedding_groups", 16),
        layer_norm_first=c.get("do_stable_layer_norm", False), normalize_waveform=normalize,
        feature_layer_norm=c.get("feat_proj_layer_norm", True), **TEACHER_DROPOUTS)
    weights = read_huggingface_weights(folder)
    # HubertForCTC & co. nest the encoder under "hubert."; lm_head, classifier: not encoder weights
    prefix = next((p for p in ("hubert.", "wav2vec2.") if any(k.startswith(p) for k in weights)), "")
    state = {}
    for key, value in weights.items():
        if not key.startswith(prefix) or key == prefix + "masked_spec_embed":
            continue
        key = key[len(prefix):]
        if key.startswith("feature_projection."):
            key = "encoder." + key
        elif key.startswith("encoder."):
            key = "encoder.transformer." + key[len("encoder."):]
        state[key] = value
    return {"config": config, "encoder": state, "head": None, "file": folder}


def read_torchaudio(name):
    """{"config", "encoder", "head": None, "file"} from a torchaudio.pipelines bundle whose weights
    are already in the torch hub cache (bundle.get_model() would download them; a teacher never does)."""
    import torchaudio.pipelines
    bundle = getattr(torchaudio.pipelines, name, None)
    if not isinstance(bundle, torchaudio.pipelines.Wav2Vec2Bundle) or bundle._model_type != "Wav2Vec2":
        raise ValueError(f"torchaudio:{name}: not a torchaudio wav2vec2/HuBERT bundle; try "
                         f"torchaudio:HUBERT_BASE, torchaudio:HUBERT_LARGE or torchaudio:HUBERT_XLARGE")
    file = os.path.basename(bundle._path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torchaudio:{name}: weights not in the torch hub cache ({path}); put "
                                f"https://download.pytorch.org/torchaudio/models/{file} there, or pass a "
                                f"local fairseq .pt or Hugging Face folder instead")
    p = bundle._params
    cnn = p["extractor_conv_layer_config"]  # None: HuBERT's CNN (EncoderConfig's default)
    conv = {"conv_layers": [tuple(c) for c in cnn]} if cnn else {}
    config = dict(
        extractor_mode=p["extractor_mode"], conv_bias=p["extractor_conv_bias"], **conv,
        dim=p["encoder_embed_dim"], layers=p["encoder_num_layers"], heads=p["encoder_num_heads"],
        ffn=p["encoder_ff_interm_features"], pos_conv_kernel=p["encoder_pos_conv_kernel"],
        pos_conv_groups=p["encoder_pos_conv_groups"], layer_norm_first=p["encoder_layer_norm_first"],
        normalize_waveform=bundle._normalize_waveform, **TEACHER_DROPOUTS)
    state = {k: v for k, v in load_checkpoint(path, allow=pickle_allow_list()).items() if not k.startswith("aux.")}  # ASR layer
    return {"config": config, "encoder": state, "head": None, "file": path}


# ----------------------------------------------------------------------------------------------
# Export to transformers (HubertForCTC): config.json, model.safetensors and the processor files

# Our CTCModel parameter names -> HubertForCTC's (the inverse of the prefix moves in
# read_huggingface). The positional conv keeps the weight_g / weight_v names of the
# published HuBERT checkpoints, which every transformers version reads.
HF_PREFIXES = [("encoder.feature_extractor.", "hubert.feature_extractor."),
               ("encoder.encoder.feature_projection.", "hubert.feature_projection."),
               ("encoder.encoder.transformer.", "hubert.encoder."),
               ("mask_embedding", "hubert.masked_spec_embed"), ("proj.", "lm_head.")]

# <s>, </s>, <unk>: in fairseq's letter dictionary (so the CTC head has outputs for them) but in
# no transcript, so those outputs never train and an under-trained model may rank them first.
# scoring.greedy_decode takes its argmax without them; the export gives them zero weights and
# this bias, so that transformers' argmax (and its tokenizer, which would print them) never picks
# them either, while the logits of the blank and the characters stay ours.
NEVER_EMITTED = [data.VOCAB.index(token) for token in ("<s>", "</s>", "<unk>")]
NEVER_EMITTED_LOGIT = -1e4  # far below any real logit, and finite in fp16 (softmax gives them 0)


def huggingface_name(key):
    """e.g. "encoder.encoder.transformer.layers.0.attention.q_proj.weight" -> "hubert.encoder.layers.0.attention.q_proj.weight"."""
    for ours, theirs in HF_PREFIXES:
        if key.startswith(ours):
            key = theirs + key[len(ours):]
            return key.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v")
    raise KeyError(f"no transformers name for parameter {key}")


def huggingface_config(c, m=None):
    """config.json of HubertForCTC, field by field from EncoderConfig c and CTCConfig m (None: of
    HubertModel, the encoder alone)."""
    channels, kernels, strides = zip(*c.conv_layers)
    ctc = {} if m is None else {
        "vocab_size": m.vocab_size, "pad_token_id": data.BLANK,
        "bos_token_id": data.VOCAB.index("<s>"), "eos_token_id": data.VOCAB.index("</s>"),
        "final_dropout": m.final_dropout, "apply_spec_augment": True, "mask_time_prob": m.mask_prob,
        "mask_time_length": m.mask_length, "mask_time_min_masks": 2, "mask_feature_prob": m.mask_channel_prob,
        "mask_feature_length": m.mask_channel_length, "mask_feature_min_masks": 0,
        "ctc_loss_reduction": "sum", "ctc_zero_infinity": True, "use_weighted_layer_sum": False}
    return {
        "architectures": ["HubertModel" if m is None else "HubertForCTC"], "model_type": "hubert", **ctc,
        "feat_extract_norm": c.extractor_mode.replace("_norm", ""), "feat_extract_activation": "gelu",
        "conv_dim": list(channels), "conv_kernel": list(kernels), "conv_stride": list(strides),
        "conv_bias": c.conv_bias, "num_feat_extract_layers": len(c.conv_layers),
        "feat_proj_layer_norm": c.feature_layer_norm, "feat_proj_dropout": c.dropout,
        "hidden_size": c.dim, "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
        "intermediate_size": c.ffn, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
        "num_conv_pos_embeddings": c.pos_conv_kernel, "num_conv_pos_embedding_groups": c.pos_conv_groups,
        "conv_pos_batch_norm": False, "do_stable_layer_norm": c.layer_norm_first,
        "hidden_dropout": c.dropout, "attention_dropout": c.attention_dropout,
        "activation_dropout": c.activation_dropout, "layerdrop": c.layerdrop,
    }


def export_huggingface(ctc, out_dir):
    """Write a folder that transformers.HubertForCTC.from_pretrained and
    pipeline("automatic-speech-recognition", model=out_dir) load without this project. The
    pipeline's transcripts are those of finetune.py --transcribe (greedy): the head's rows for
    NEVER_EMITTED become weight 0, bias NEVER_EMITTED_LOGIT, the other logits are unchanged (so
    log-probs equal ours renormalised over the blank and the characters)."""
    if ctc.encoder.config.frontend != "cnn":
        raise ValueError("only CNN front-end models export to transformers: HubertForCTC has no Fbank front-end; "
                         "finetune.py --export-encoder CKPT DIR writes the encoder (safetensors + config.json, "
                         "read by model.load_teacher) and --transcribe decodes with the CTC model")
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    state = ctc.state_dict()
    if ctc.config.mask_prob == 0 and ctc.config.mask_channel_prob == 0:
        del state["mask_embedding"]  # HubertForCTC has no masked_spec_embed without masking
    state["proj.weight"], state["proj.bias"] = state["proj.weight"].clone(), state["proj.bias"].clone()
    state["proj.weight"][NEVER_EMITTED] = 0.0
    state["proj.bias"][NEVER_EMITTED] = NEVER_EMITTED_LOGIT
    tensors = {huggingface_name(k): v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": data.VOCAB[data.BLANK]}
    files = {
        "config.json": huggingface_config(ctc.encoder.config, ctc.config),
        "vocab.json": {token: i for i, token in enumerate(data.VOCAB)},
        "special_tokens_map.json": specials,
        "tokenizer_config.json": {"tokenizer_class": "Wav2Vec2CTCTokenizer", **specials,
                                  "word_delimiter_token": data.WORD_SEP, "replace_word_delimiter_char": " ",
                                  "do_lower_case": False, "processor_class": "Wav2Vec2Processor"},
        # Base-style (group norm) models take no attention mask in transformers, Large-style do.
        "preprocessor_config.json": {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                                     "sampling_rate": data.SAMPLE_RATE, "padding_value": 0.0,
                                     "padding_side": "right",
                                     "do_normalize": ctc.encoder.config.normalize_waveform,
                                     "return_attention_mask": ctc.encoder.config.extractor_mode == "layer_norm",
                                     "processor_class": "Wav2Vec2Processor"},
    }
    for name, content in files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2)


def export_encoder(encoder, out_dir):
    """A distilled (or fine-tuned) encoder for use elsewhere. A CNN front-end: a transformers
    HubertModel folder (HubertModel.from_pretrained(out_dir), what s3prl's and SUPERB's Hugging
    Face upstreams load). An Fbank front-end: model.safetensors with this project's parameter names
    and config.json holding its EncoderConfig, which model.load_teacher(out_dir) reads (model.py,
    fbank_frontend.py and checkpoints.py are all it needs). No distillation or CTC head."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if encoder.config.frontend == "cnn":
        config = huggingface_config(encoder.config)
        state = {huggingface_name("encoder." + k)[len("hubert."):]: v for k, v in state.items()}
    else:
        config = {"format": ENCODER_FORMAT, "config": asdict(encoder.config)}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
