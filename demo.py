"""The demo: toy corpus -> toy HuBERT teacher -> distilled students -> CTC at two label budgets -> WER.

Every stage is one of this project's command lines, run as a subprocess whose output streams
here, so what `make demo` prints is what running them by hand prints:

  1. data.py synth   toy corpus in LibriSpeech layout; dev and test voices are held out of train
  2. pretrain.py     the toy HuBERT teacher (MFCC k-means units, masked prediction, prediction
                     head): made once, shipped in teacher/ (`make teacher`, --make-teacher)
  3. distill.py      the paper's students (Sec. 3): S&W and D&T with the regression loss, D&T with
                     the discriminative loss added, D&T with the Fbank front-end (two stages), and
                     with --max-steps 0 the from-scratch student (see ROWS)
  4. finetune.py     CTC on a low label budget and on all of train, for the teacher and every student
  5. here            test WER (scoring.evaluate), CPU inference time side by side in this process,
                     the paper's claims by paired bootstrap intervals (demo_parts/results.py),
                     results/NAME.json, .md, .png

demo_parts/stages.py runs them two at a time on 2 cores (--jobs), each as soon as what it needs
exists; every stage's output goes to RUNS/logs/ and, tagged, to the console. A stage whose final
file exists is skipped and an interrupted one continues with --resume, so `make demo` after a
Ctrl-C picks up where it stopped. The toy teacher and students are shaped like HuBERT Base and
the paper's students (see TEACHER and model.PRESETS "toy-*").

    python demo.py --quick              # teacher, scratch and S&W at one budget in ~4-5 min (make demo QUICK=1)
    python demo.py                      # the README's table in ~40 min on 2 cores (make demo)
    python demo.py --hours 4 --steps 3  # a longer, better run (make demo HOURS=4 STEPS=3)
    python demo.py --readme             # put results/demo.md into README.md's Results section
"""
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch

import checkpoints
import data
import model
from demo_parts.results import README, claims, machine, markdown, measure, plot, readme_section, replace_section
from demo_parts.stages import Stage, check_settings, command, run_stages, wall_seconds
from runtime import format_duration, make_parser

# ----------------------------------------------------------------------------------------------
# Sizes

# The toy teacher, HuBERT Base in miniature: 12 layers, FFN 4 x width, 128 CNN channels. Its
# students then keep the paper's proportions (model.PRESETS "toy-*"): S&W = 2 of its layers
# (26% of its parameters; DistilHuBERT: 25%), D&T = 12 layers at 0.6 x its width (24%; FitHuBERT:
# 24%), Fbank D&T 19% smaller than D&T (the paper: 17%).
TEACHER = dict(layers=12, dim=160, ffn=640, heads=4, conv_dim=128)

# The demo starts from a teacher shipped in the repository (`make teacher` re-creates it, ~65 min
# on one core): pretrain.py on a 5 h toy corpus of its own whose train split (4 h) is all it hears.
# Seed 1 gives other sentences and speaker pitches/rates than the demo's seed-0 corpus; the voice
# variants of the dev and test speakers are held out of every train split (data.SPLIT_VARIANTS),
# so the teacher never heard a test voice. Its record (command, commit, corpus hash, eSpeak
# version, masked-accuracy curve) is stored in the file and in teacher/RECORD.md.
SHIPPED_TEACHER = "teacher/toy-teacher.pt"
TEACHER_CORPUS = dict(hours=5.0, seed=1)
TEACHER_TRAINING = dict(max_steps=3000, batch_seconds=32.0, seed=0)


@dataclass
class Sizing:
    """How much of everything a demo run does; --hours and --steps scale it."""
    hours: float            # corpus, hours of speech (80% train, 10% dev, 10% test)
    distill_steps: int      # distill.py optimizer steps per student
    frontend_steps: int     # Fbank student: steps that train only its front-end (stage 1), before distill_steps
    finetune_steps: int     # finetune.py optimizer steps per model, larger label budget
    low_finetune_steps: int  # the same at the low label budget (a small set is learnt sooner)
    freeze_steps: int       # finetune.py: first steps that train only the CTC head
    low_hours: float        # the low label budget, hours of transcribed audio
    batch_seconds: float    # padded audio per batch, seconds (distillation and fine-tuning)
    eval_every: int         # finetune.py steps between dev WER evaluations (best.pt kept)
    rows: tuple = None      # names of the ROWS to run (None: all)
    budgets: tuple = ("low", "high")  # label budgets to fine-tune at


# "full" runs in ~40 min on 2 CPU cores, the teacher being shipped
# (results/NOTES.md, Demo run time): 4 distillations of 800 steps of 16 s (~3 epochs of the 1 h
# train set each), all reading the teacher's states from one cache (distill.py --teacher-cache),
# the CNN students with their CNN frozen and cached (FRONTEND_IN_DISTILL); the Fbank student's
# front-end steps (stage 1) come on top, so its stage 2 is as long as the others' distillation.
# Then 12 CTC runs: 1800 steps at the larger budget (~7 epochs), 700 at the low one (6 min of
# labels, ~30 epochs); the from-scratch row gets the distillation's steps on top. Steps and batch
# size buy the most WER the run time allows (results/NOTES.md, Demo sizing). "quick" runs the
# teacher, the from-scratch student and an S&W student at one budget with 8 s batches, its steps
# the most that stay under 5 minutes (results/NOTES.md, Quick run sizing).
SIZINGS = {
    "full": Sizing(hours=1.25, distill_steps=800, frontend_steps=200, finetune_steps=1800, low_finetune_steps=700,
                   freeze_steps=50, low_hours=0.1, batch_seconds=16.0, eval_every=600),
    "quick": Sizing(hours=0.5, distill_steps=250, frontend_steps=40, finetune_steps=850, low_finetune_steps=850,
                    freeze_steps=25, low_hours=0.05, batch_seconds=8.0, eval_every=425,
                    rows=("teacher", "scratch", "sw"), budgets=("high",)),
}

# Toy-scale training flags. The CLIs' defaults are the paper's and fairseq's for 25k steps on
# LibriSpeech; a few hundred steps on ~1 h want a larger learning rate and lighter masking
# (results/NOTES.md, Toy learning rates). Attention dropout (0.1 in the authors' distiller) is
# off: PyTorch's fused CPU attention has none, so with it every layer falls back to a slower path
# for the same losses (results/NOTES.md, Attention dropout on CPU).
DISTILL = dict(lr=1e-3, attention_dropout=0.0)
# finetune.py's tri-stage LR defaults to base_10h's 8000 warm-up steps, longer than a whole toy
# run: the demo gives the stages as shares of its --max-steps instead (10% warm-up, 40% hold).
# Early CTC gradients are large: clipped (results/NOTES.md, CTC gradient clipping).
FINETUNE = dict(lr=1e-3, stages="0.1,0.4,0.5", layerdrop=0.0, clip=10.0)
# Regularisers depend on the label budget: ~30 epochs of 6 min of labels overfit without masking
# (SpecAugment-like) and FFN dropout (fairseq's activation_dropout 0.1); a few epochs of the whole
# train set do not, and there both only slow learning
# (results/NOTES.md, Regularisation by label budget).
REGULARISATION = {"low": dict(mask_prob=0.25, mask_channel_prob=0.1, mask_channel_length=8, activation_dropout=0.1),
                  "high": dict(mask_prob=0.0, mask_channel_prob=0.0, activation_dropout=0.0)}

# The front-end in distillation and CTC. The CNN students start from the teacher's CNN, pre-trained
# for 3000 steps: it stays frozen in both (the authors' distillation trains it, its gradient scaled
# by feature_grad_mult 0.1; fairseq's fine-tuning freezes it), so its output is computed once per
# utterance (--cache-frontend in both CLIs): cheaper steps, the same loss
# (results/NOTES.md, Frozen, cached CNN front-end). The Fbank front-end is distilled for only a few
# hundred steps and keeps learning with the encoder (finetune.py --train-frontend;
# results/NOTES.md, Fbank front-end in CTC).
FRONTEND_IN_DISTILL = {"cnn": dict(cache_frontend=True), "fbank": {}}
FRONTEND_IN_CTC = {"cnn": dict(cache_frontend=True), "fbank": dict(train_frontend=True)}


@dataclass
class Row:
    """One model of the table."""
    name: str           # folder under RUNS/students and RUNS/ctc, key in NAME.json
    label: str          # row label in the table
    preset: str = None  # student preset; None: the teacher itself is fine-tuned
    flags: dict = None  # distill.py flags of this row (Fbank presets also get --frontend-steps)

    @property
    def fbank(self):
        """An Fbank front-end (the teacher and the other students have HuBERT's CNN)."""
        return self.preset is not None and model.PRESETS[self.preset].config.get("frontend") == "fbank"


# "From scratch" is the D&T student after 0 distillation steps: a random transformer on the
# teacher's CNN, which every student here starts from and finetune.py keeps frozen (fairseq's
# recipe). A random frozen CNN would handicap the baseline beyond "no distillation"; with the
# teacher's CNN the comparison isolates what distilling the transformer adds. It keeps HuBERT's
# LayerNorm on the CNN features, which the authors' students drop: without it this random
# transformer stays on CTC's all-blank plateau at 61 min (results/NOTES.md, From scratch).
ROWS = [
    Row("teacher", "teacher fine-tuned (upper bound)"),
    Row("scratch", "student from scratch (no distillation)", "toy-fithubert",
        dict(max_steps=0, feature_layer_norm=True)),
    Row("sw", "S&W student, regression", "toy-distilhubert"),
    # The D&T students start from a random transformer and learn faster at twice the LR
    # (results/NOTES.md, Toy learning rates); S&W starts from teacher layers.
    Row("dt", "D&T student, regression", "toy-fithubert", dict(lr=2e-3)),
    # The paper's weight range is 0.2-0.8; tau is distill.py's default (0.1, HuBERT's own). The
    # student's distribution is cosine to the teacher's codewords / tau, the teacher's own formula
    # (results/NOTES.md, Discriminative head).
    Row("dt-disc", "D&T + discriminative loss", "toy-fithubert", dict(disc_weight=0.5, disc_head="cos", lr=2e-3)),
    Row("dt-fbank", "D&T Fbank (two-stage), regression", "toy-fithubert-fbank", dict(lr=2e-3)),
]

# Audio seconds per second of each stage on one core of a 2-core machine (STAGE_THREADS), two
# stages side by side, for the time estimates printed with every stage; fine-tuning with the
# front-end cache (--cache-frontend); from a full run's stage times (results/NOTES.md, Demo run time).
SPEED = {"synth": 250.0, "pretrain": 21.0, "distill": 44.0, "distill-fbank": 62.0,
         "finetune": 74.0, "finetune-teacher": 31.0}
REAL_AUDIO_SHARE = 0.85  # share of a padded batch that is real audio
# --seed-spread: how much a row's WER moves with the fine-tuning seed alone (same distilled
# student, same data), to read the claims' differences against: two cheap rows, low budget.
SPREAD_ROWS, SPREAD_SEEDS = ("sw", "dt"), (1, 2)
MEASURE_THREADS = 2  # torch threads for the test WER and the CPU-time comparison (all models alike)


# ----------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv=None):
    p = make_parser(__doc__)
    g = p.add_argument_group("size")
    g.add_argument("--quick", action="store_true", help="three rows (teacher, scratch, S&W), one budget, in ~4-5 minutes")
    g.add_argument("--hours", type=float, help=f"corpus hours; None: {SIZINGS['full'].hours:g}, "
                                               f"{SIZINGS['quick'].hours:g} with --quick")
    g.add_argument("--steps", type=float, default=1.0, help="multiplier of every stage's steps")
    g = p.add_argument_group("io")
    g.add_argument("--runs", help="folder of the stages' outputs; None: runs/NAME (NAME: demo, demo-quick, ...)")
    g.add_argument("--results", default="results", help="folder for NAME.json, NAME.md, NAME.png")
    g.add_argument("--readme", action="store_true",
                   help="only copy RESULTS/NAME.md (e.g. results/demo.md) between the README's results markers")
    g.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="stages run side by side, each on STAGE_THREADS threads (the results do not depend on it)")
    g.add_argument("--make-teacher", action="store_true",
                   help=f"re-create {SHIPPED_TEACHER} and its record (make teacher) instead of running the demo")
    g.add_argument("--timing-runs", type=int, default=5, help="timed forward passes per model (median)")
    g.add_argument("--device", default="cpu", help="where the stages train: cpu (the table's numbers), cuda, "
                   "auto (CUDA, then Apple's MPS, then the CPU); CPU time and test WER are measured on the CPU")
    g.add_argument("--seed-spread", action="store_true",
                   help=f"also fine-tune {', '.join(SPREAD_ROWS)} at the low budget with CTC seeds "
                        f"{', '.join(map(str, SPREAD_SEEDS))} and report how far their test WERs spread "
                        f"(in RESULTS/NAME-seed-spread.*; the run's own NAME.* stay as they are)")
    return p.parse_args(argv)


def run_name(args):
    """demo, demo-quick, demo-4h-x3, ...: names the runs folder and the result files."""
    name = "demo-quick" if args.quick else "demo"
    if args.hours is not None:
        name += f"-{args.hours:g}h"
    if args.steps != 1:
        name += f"-x{args.steps:g}"
    return name


def results_base(args):
    """RESULTS/NAME, where NAME.json, .md and .png go; --seed-spread's go to NAME-seed-spread.*."""
    return os.path.join(args.results, run_name(args) + ("-seed-spread" if args.seed_spread else ""))


def sizing_for(args):
    s = SIZINGS["quick" if args.quick else "full"]
    scale = lambda n: max(1, round(n * args.steps))
    return replace(s, hours=args.hours if args.hours is not None else s.hours,
                   distill_steps=scale(s.distill_steps), low_finetune_steps=scale(s.low_finetune_steps),
                   frontend_steps=scale(s.frontend_steps), finetune_steps=scale(s.finetune_steps),
                   freeze_steps=scale(s.freeze_steps), eval_every=scale(s.eval_every))


# ----------------------------------------------------------------------------------------------
# Stages: the command lines of a run (stages.py runs them)


def log_every(steps):
    return max(1, steps // 10)  # about ten progress lines per stage


def rows_of(s: Sizing):
    """The ROWS a sizing runs, teacher first."""
    return [r for r in ROWS if s.rows is None or r.name in s.rows]


def audio_seconds(s: Sizing, steps):
    """Seconds of real audio that `steps` batches of the sizing train on (for the time estimates)."""
    return steps * s.batch_seconds * REAL_AUDIO_SHARE


def distill_stage(runs, s: Sizing, name, label, preset, extra=None, teacher=SHIPPED_TEACHER, device="cpu"):
    """distill.py for one student into RUNS/students/NAME: the demo's toy flags, then `extra` (a
    row's, or the study's). Every student reads the teacher's states from one cache."""
    fbank = model.PRESETS[preset].config.get("frontend") == "fbank"
    flags = dict(max_steps=s.distill_steps, batch_seconds=s.batch_seconds,
                 log_every=log_every(s.distill_steps), seed=0, device=device, **DISTILL,
                 **FRONTEND_IN_DISTILL["fbank" if fbank else "cnn"])
    if fbank:
        flags.update(frontend_steps=s.frontend_steps, max_steps=s.frontend_steps + s.distill_steps)
    flags.update(extra or {})
    if flags["max_steps"] > 0:  # the teacher's states, computed by the first student's run, read by all
        flags.update(teacher_cache=f"{runs}/teacher-states.pt")
    corpus, out = f"{runs}/corpus", f"{runs}/students/{name}"
    return Stage(f"distill: {label}", f"distill {name}",
                 command("distill.py", teacher=teacher, student=preset, data=f"{corpus}/train", out_dir=out, **flags),
                 f"{out}/student.pt", out,
                 5 + audio_seconds(s, flags["max_steps"]) / SPEED["distill-fbank" if fbank else "distill"],
                 needs=(f"{corpus}/synth.json",))


def ctc_stage(runs, s: Sizing, name, label, init, budget, regularisation, steps, train_hours=None, fbank=False,
              extra=None, device="cpu"):
    """finetune.py of one model at one label budget into RUNS/ctc/NAME-BUDGET: the demo's toy flags,
    the budget's regularisers (REGULARISATION key), then `extra`. train_hours: the labelled subset."""
    corpus, out = f"{runs}/corpus", f"{runs}/ctc/{name}-{budget}"
    flags = dict(max_steps=steps, freeze_steps=s.freeze_steps, batch_seconds=s.batch_seconds,
                 eval_every=s.eval_every, log_every=log_every(steps), seed=0, device=device, **FINETUNE,
                 **REGULARISATION[regularisation], **FRONTEND_IN_CTC["fbank" if fbank else "cnn"])
    if train_hours is not None:
        flags.update(max_train_hours=train_hours)
    flags.update(extra or {})
    speed = SPEED["finetune-teacher" if init == SHIPPED_TEACHER else "finetune"]
    return Stage(f"CTC fine-tune ({budget} label budget): {label}", f"ctc {name}-{budget}",
                 command("finetune.py", init=init, train=f"{corpus}/train", valid=f"{corpus}/dev", out_dir=out,
                         **flags),
                 f"{out}/last.pt", out, 10 + audio_seconds(s, steps) / speed, needs=(init, f"{corpus}/synth.json"))


def corpus_stage(runs, s: Sizing):
    corpus = f"{runs}/corpus"
    return Stage("toy corpus", "corpus", command("data.py", "synth", out=corpus, hours=s.hours, seed=0),
                 f"{corpus}/synth.json", seconds=3600 * s.hours / SPEED["synth"])


def settings_of(s: Sizing):
    """What a runs folder's outputs depend on (demo_settings.json): a folder holds one of them."""
    return {**asdict(s), "teacher": TEACHER, "teacher_sha256": file_sha256(SHIPPED_TEACHER),
            "rows": [asdict(r) for r in rows_of(s)], "distill": DISTILL, "finetune": FINETUNE,
            "regularisation": REGULARISATION, "frontend": {"distill": FRONTEND_IN_DISTILL, "ctc": FRONTEND_IN_CTC}}


def plan(runs, s: Sizing, teacher=SHIPPED_TEACHER, spread=False, device="cpu"):
    """The stages of a run, in the order they start: the teacher's fine-tuning runs (the longest
    ones) start first, so that the runs left at the end are short. The from-scratch row gets as
    many CTC steps as a distilled student gets distillation + CTC steps, so that its row isolates
    what distillation adds, not what more updates add."""
    stages = [corpus_stage(runs, s)]
    stages += [distill_stage(runs, s, row.name, row.label, row.preset, row.flags, teacher, device)
               for row in rows_of(s)[1:]]
    ctc = []
    for budget in s.budgets:
        for row in rows_of(s):
            init = teacher if row.preset is None else f"{runs}/students/{row.name}/student.pt"
            steps = s.low_finetune_steps if budget == "low" else s.finetune_steps
            steps += s.distill_steps if row.name == "scratch" else 0
            ctc.append(ctc_stage(runs, s, row.name, row.label, init, budget, budget, steps,
                                 s.low_hours if budget == "low" else None, row.fbank, device=device))
    for row in [r for r in rows_of(s) if spread and r.name in SPREAD_ROWS and "low" in s.budgets]:
        first = next(st for st in ctc if st.out_dir == f"{runs}/ctc/{row.name}-low")
        for seed in SPREAD_SEEDS:
            out = f"{runs}/ctc/{row.name}-low-seed{seed}"
            argv = [out if a == first.out_dir else a for a in first.argv]
            argv[argv.index("--seed") + 1] = str(seed)
            ctc.append(Stage(f"{first.title}, CTC seed {seed}", f"{first.tag}-seed{seed}", argv, f"{out}/last.pt",
                             out, first.seconds, first.needs))
    return stages + sorted(ctc, key=lambda st: -st.seconds)  # stable: longest first, then table order


# ----------------------------------------------------------------------------------------------
# The shipped teacher: made once by `make teacher` (python demo.py --make-teacher), checked on use


def teacher_plan(runs):
    """The two stages that make the toy teacher: its own corpus, then pretrain.py on its train split."""
    corpus, out = f"{runs}/corpus", f"{runs}/pretrain"
    steps, batch = TEACHER_TRAINING["max_steps"], TEACHER_TRAINING["batch_seconds"]
    return [Stage("teacher corpus", "corpus", command("data.py", "synth", out=corpus, **TEACHER_CORPUS),
                  f"{corpus}/synth.json", seconds=3600 * TEACHER_CORPUS["hours"] / SPEED["synth"]),
            Stage("toy HuBERT teacher", "pretrain",
                  command("pretrain.py", data=f"{corpus}/train", out_dir=out, **TEACHER, **TEACHER_TRAINING,
                          log_every=50, save_every=100, device="cpu"),
                  f"{out}/teacher.pt", out, 60 + steps * batch * REAL_AUDIO_SHARE / SPEED["pretrain"],
                  needs=(f"{corpus}/synth.json",))]


def tree_sha256(folder):
    """sha256 over the relative paths and bytes of every file under folder, in sorted order."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def ship_teacher(pretrain_dir, corpus_dir, command_line, out=SHIPPED_TEACHER, commit=None):
    """Write the pre-trained teacher as the small file the demo starts from: encoder and head in
    fp16 (8.5 MB instead of 17; the demo casts them back to fp32, the same weights on every run),
    without the k-means targets, with its record; and teacher/RECORD.md, teacher/pretrain-log.jsonl.
    commit: the commit the pre-training ran at (default: the current one)."""
    ckpt = checkpoints.load_checkpoint(os.path.join(pretrain_dir, "teacher.pt"))
    half = lambda state: {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with open(os.path.join(pretrain_dir, "log.jsonl")) as f:
        curve = [json.loads(line) for line in f]
    from importlib.metadata import version
    commit = commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                      cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    record = {"teacher": TEACHER, "training": TEACHER_TRAINING, "command": command_line, "commit": commit,
              "corpus": {**TEACHER_CORPUS, "synth_version": data.SYNTH_VERSION,
                         "train_sha256": tree_sha256(os.path.join(corpus_dir, "train")),
                         "espeak_ng": data.Espeak.get().version(), "espeakng_loader": version("espeakng-loader")},
              "torch": str(torch.__version__), "date": datetime.date.today().isoformat(),
              "final": {k: curve[-1][k] for k in ("step", "acc_m", "acc_u") if k in curve[-1]}}
    shipped = {k: ckpt[k] for k in ("format", "kind", "config")}
    shipped.update(encoder=half(ckpt["encoder"]), head=half(ckpt["head"]), record=record)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    checkpoints.save_checkpoint(shipped, out)
    folder = os.path.dirname(out) or "."
    with open(os.path.join(folder, "pretrain-log.jsonl"), "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in curve)
    shown = os.path.relpath(out, os.path.dirname(os.path.abspath(__file__)))
    lines = ["# The shipped toy teacher", "", f"`{shown}` ({os.path.getsize(out) / 1e6:.1f} MB, fp16), made by",
             "", "```", command_line, "```", "", f"at commit `{commit}` on {machine()}, {record['date']}; "
             f"re-create it with `make teacher`. Record (also inside the file, `record`):", "", "```json",
             json.dumps(record, indent=2), "```", "", "Masked-unit accuracy (acc_m) and unmasked (acc_u) "
             "on the training batch, from `pretrain-log.jsonl`:", "", "| step | loss | acc_m | acc_u |",
             "|---:|---:|---:|---:|"]
    every = max(1, len(curve) // 12)
    lines += [f"| {c['step']} | {c['loss']:.3f} | {c['acc_m']:.3f} | {c['acc_u']:.3f} |"
              for c in curve[every - 1::every]]
    with open(os.path.join(folder, "RECORD.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}, {folder}/RECORD.md, {folder}/pretrain-log.jsonl", flush=True)


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_teacher(path=SHIPPED_TEACHER):
    """Refuse a teacher file that this code would not make, saying what differs."""
    if not os.path.exists(path):
        raise SystemExit(f"error: no toy teacher at {path}; `make teacher` re-creates it (~65 min on one core)")
    ckpt = checkpoints.load_checkpoint(path)
    record = ckpt.get("record")
    if not record:
        raise SystemExit(f"error: {path} has no record of how it was made; `make teacher` re-creates it")
    c = ckpt["config"]  # the network itself, whatever its record says
    network = dict(layers=c["layers"], dim=c["dim"], ffn=c["ffn"], heads=c["heads"], conv_dim=c["conv_layers"][0][0])
    expected = {"teacher": TEACHER, "training": TEACHER_TRAINING,
                "corpus": {**TEACHER_CORPUS, "synth_version": data.SYNTH_VERSION}}
    found = {**record, "teacher": {**record.get("teacher", {}), **network}}
    diffs = [f"{group} {k}: file {found.get(group, {}).get(k)!r}, demo.py {v!r}"
             for group, values in expected.items() for k, v in values.items()
             if found.get(group, {}).get(k) != v]
    if diffs:
        raise SystemExit(f"error: {path} was made with other settings than demo.py's ({'; '.join(diffs)}); "
                         f"run `make teacher` to re-create it")
    return record


def make_teacher(args):
    """`make teacher`: corpus, pre-training (resumable), then the shipped file and its record."""
    runs = args.runs or os.path.join("runs", "teacher")
    stages = teacher_plan(runs)
    run_stages(stages, runs, time.time(), jobs=1)
    ship_teacher(f"{runs}/pretrain", f"{runs}/corpus",
                 " && ".join(shlex.join(["python", *st.argv]) for st in stages))


# ----------------------------------------------------------------------------------------------
# Main


def main(args):
    name = run_name(args)
    if args.readme:
        with open(os.path.join(args.results, f"{name}.md")) as f, open(README) as g:
            text = replace_section(g.read(), readme_section(f.read(), name))
        with open(README, "w") as f:
            f.write(text)
        print(f"README.md: Results section now holds {args.results}/{name}.md")
        return
    if args.jobs < 1:
        raise SystemExit("error: --jobs must be at least 1")
    if args.make_teacher:
        return make_teacher(args)
    start = time.time()
    record = check_teacher()
    runs, s = args.runs or os.path.join("runs", name), sizing_for(args)
    check_settings(runs, settings_of(s))
    stages = plan(runs, s, spread=args.seed_spread, device=args.device)
    times = run_stages(stages, runs, start, args.jobs)

    print(f"\n[results] test WER and CPU time | elapsed {format_duration(time.time() - start)}", flush=True)
    t0 = time.time()
    torch.set_num_threads(MEASURE_THREADS)
    rows, hours, batch_audio, words = measure(runs, rows_of(s), s, args.timing_runs, SPREAD_SEEDS)
    t = TEACHER
    result = {
        "command": shlex.join(["python", "demo.py", *sys.argv[1:]]),
        "machine": machine(), "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels' code path: AVX2, AVX512, ...
        "wall_seconds": wall_seconds(runs) + time.time() - t0, "stage_seconds": times,
        "settings": {**asdict(s), "teacher": f"{t['layers']}x{t['dim']} (FFN {t['ffn']})"},
        "teacher": {"steps": record["training"]["max_steps"], **record.get("final", {})},
        "label_hours": hours, "test_utterances": len(words), "test_words": words,
        "timing": {"threads": torch.get_num_threads(), "audio_seconds": batch_audio, "runs": args.timing_runs},
        "rows": rows,
    }
    result["claims"] = claims(rows, words)
    os.makedirs(args.results, exist_ok=True)
    base = results_base(args)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(base + ".md", "w") as f:
        f.write(text)
    plot(result, base + ".png")
    print("\n" + text, flush=True)
    print(f"wrote {base}.json and {base}.md; total {format_duration(result['wall_seconds'])} of stage time",
          flush=True)


if __name__ == "__main__":
    main(parse_args())
