"""The claims study: where the toy can show the paper's two headline claims, and what stops them.

The demo's table contradicts "D&T beats S&W at a similar size" and leaves "the discriminative loss
helps, most with few labels" undecided. This study asks why, in five parts on the demo's corpus,
teacher and recipes (demo.py), each part a set of stages run as the demo's are (side by side,
resumable after Ctrl-C or a lost session, demo_parts/stages.py):

  a. depth: the teacher truncated to 2, 4, 8, 12 layers, fine-tuned with 61 min of labels: does
     the task need depth at all? (finetune.py --keep-layers)
  b. controls for D&T vs S&W: S&W after 0 distillation steps (what it inherits from the teacher),
     and the S&W shape on a random transformer (D&T's start) against D&T at equal steps
     (distill.py --student-init cnn);
  c. distillation length: S&W and D&T at 800, 3,200 and 12,800 steps, with their per-layer cosine;
  d. structure at equal parameters: 2, 4, 6, 12 layers at D&T's count (within 5%), 3,200 steps;
  e. the discriminative loss: D&T without and with it (weight 0.5), 3 distillation seeds each,
     weights 0.2 and 0.8 with one seed, fine-tuned with 3, 6, 20 and 61 min of labels.

The study runs in the demo's folder (runs/demo): its models that are demo rows (the teacher, S&W,
D&T and D&T + disc 0.5 after 800 steps, seed 0) at the demo's two label budgets are the demo's
own stages, same flags and folders, run once for both (DEMO_NAMES). Every fine-tuned model is decoded on the test set (finetune.py --eval); study.json and study.md
in --results hold every test WER and each comparison as a paired bootstrap interval over the
test utterances (over the pooled seeds in e, with the per-seed differences beside it).

    python study.py                     # every part (prints its forecast first; make study)
    python study.py --parts a,b         # some parts; the others' stages are not run
    python study.py --report            # study.{json,md} from the stages done so far
"""
import datetime
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import data
import demo
import model
from demo_parts.results import bootstrap_ci, machine, verdict, word_errors
from demo_parts.stages import Stage, check_settings, command, run_stages, stage_state
from runtime import format_duration, make_parser
from scoring import normalize_for_wer

PARTS = "abcde"
SIZING = demo.SIZINGS["full"]            # corpus, batch, CTC steps and freeze: the demo's
LENGTHS = (800, 3200, 12_800)            # part c's distillation steps; the last is cut first
STRUCTURE_LAYERS = (2, 4, 6, 12)         # part d, at D&T's parameter count
STRUCTURE_STEPS = 3200
DISC_SEEDS = (0, 1, 2)                   # part e's distillation seeds, with and without the loss
DISC_WEIGHTS = (0.2, 0.8)                # part e's other weights, one seed
FORECAST_LIMIT = 5 * 3600                # seconds on 2 cores; beyond it c's longest length is cut


@dataclass(frozen=True)
class Budget:
    """A label budget: the labelled share of the train split, CTC steps, and the demo's regularisers
    for its regime (REGULARISATION: "low" masks for many epochs of a small set, "high" none)."""
    minutes: int
    hours: float          # finetune.py --max-train-hours; None: the whole train split (61 min)
    steps: int
    regularisation: str
    folder: str           # RUNS/ctc/MODEL-FOLDER; the demo's two budgets keep the demo's names


BUDGETS = {b.minutes: b for b in (Budget(3, 0.05, 700, "low", "3min"), Budget(6, 0.1, 700, "low", "low"),
                                  Budget(20, 1 / 3, 1200, "low", "20min"), Budget(61, None, 1800, "high", "high"))}
# The study's models that are the demo's rows, by the demo's name (folder under RUNS/students, ctc)
DEMO_NAMES = {"teacher-12": "teacher", "sw-800": "sw", "dt-800": "dt", "dt-disc0.5-800-seed0": "dt-disc"}


def folder(name):
    return DEMO_NAMES.get(name, name)


@dataclass
class Model:
    """One model of the study: a distilled student (preset) or the teacher (preset None), and the
    label budgets (minutes) it is fine-tuned at; several parts may share it."""
    name: str
    label: str
    preset: str = None
    distill: dict = None   # distill.py flags beyond the demo's
    ctc: dict = None       # finetune.py flags beyond the demo's
    budgets: set = field(default_factory=set)


def student(name, label, preset, steps, budgets, **flags):
    """A distilled student; a random transformer (D&T's start) gets the demo's D&T learning rate."""
    lr = {} if model.PRESETS[preset].init == "layers" and flags.get("student_init") is None else {"lr": 2e-3}
    return Model(name, label, preset, {"max_steps": steps, "log_every": demo.log_every(steps), **lr, **flags},
                 budgets=set(budgets))


def matched_shape(layers, target, heads=4, groups=16):
    """(width, FFN width, parameters) of a D&T-shaped student with `layers` layers and about `target`
    parameters: the widest width (a multiple of the positional conv's groups) whose FFN = width
    stays under target, then the FFN widened to close the gap (each FFN unit adds 2 x width + 1
    parameters per layer)."""
    count = lambda dim, ffn: model.count_parameters(
        model.build_student("toy-fithubert", layers=layers, dim=dim, ffn=ffn, heads=heads))
    dim = groups
    while count(dim + groups, dim + groups) <= target:
        dim += groups
    ffn = dim + round((target - count(dim, dim)) / (layers * (2 * dim + 1)))
    n = count(dim, ffn)
    if abs(n - target) > 0.05 * target:
        raise ValueError(f"no {layers}-layer shape has {target} parameters within 5% (closest {dim}, {ffn}: {n})")
    return dim, ffn, n


def models(parts, lengths=LENGTHS):
    """The study's models by name, each with the union of the budgets its parts need."""
    out = {}

    def add(m):
        out.setdefault(m.name, m).budgets.update(m.budgets)
    both = (6, 61)
    if "a" in parts:
        for n in (2, 4, 8, 12):
            add(Model(f"teacher-{n}", f"teacher, first {n} layers", None, ctc={"keep_layers": n} if n < 12 else None,
                      budgets={61}))
    if "b" in parts:
        add(student("sw-0", "S&W, 0 distillation steps", "toy-distilhubert", 0, both))
        add(student("sw-random-800", "S&W shape, random transformer, 800 steps", "toy-distilhubert", 800, both,
                    student_init="cnn"))
    for steps in lengths if "c" in parts else (800,) if "b" in parts else ():
        add(student(f"sw-{steps}", f"S&W, {steps} steps", "toy-distilhubert", steps, both))
        add(student(f"dt-{steps}", f"D&T, {steps} steps", "toy-fithubert", steps, both))
    if "d" in parts:
        target = model.count_parameters(model.build_student("toy-fithubert"))
        for layers in STRUCTURE_LAYERS:
            dim, ffn, _ = (None, None, None) if layers == 12 else matched_shape(layers, target)
            flags = {} if layers == 12 else {"layers": layers, "dim": dim, "ffn": ffn}
            name = f"dt-{STRUCTURE_STEPS}" if layers == 12 else f"dt-l{layers}-{STRUCTURE_STEPS}"
            add(student(name, f"D&T, {STRUCTURE_STEPS} steps" if layers == 12 else f"{layers} x {dim} (FFN {ffn}), "
                        f"{STRUCTURE_STEPS} steps", "toy-fithubert", STRUCTURE_STEPS, both, **flags))
    if "e" in parts:
        for seed in DISC_SEEDS:
            name = "dt-800" if seed == 0 else f"dt-800-seed{seed}"
            add(student(name, f"D&T, 800 steps, seed {seed}", "toy-fithubert", 800, BUDGETS, seed=seed))
            add(student(f"dt-disc0.5-800-seed{seed}", f"D&T + disc 0.5, seed {seed}", "toy-fithubert", 800, BUDGETS,
                        seed=seed, disc_weight=0.5))
        for w in DISC_WEIGHTS:
            add(student(f"dt-disc{w}-800-seed0", f"D&T + disc {w}, seed 0", "toy-fithubert", 800, BUDGETS,
                        disc_weight=w))
    return out


def plan(runs, parts, lengths=LENGTHS, device="cpu"):
    """Corpus, distillations, CTC runs (longest first) and test decodes of the study's models."""
    s, stages, ctc, evals = SIZING, [demo.corpus_stage(runs, SIZING)], [], []
    for m in models(parts, lengths).values():
        name = folder(m.name)
        if m.preset:
            stages.append(demo.distill_stage(runs, s, name, m.label, m.preset, m.distill, device=device))
        init = demo.SHIPPED_TEACHER if m.preset is None else f"{runs}/students/{name}/student.pt"
        for minutes in sorted(m.budgets):
            b = BUDGETS[minutes]
            st = demo.ctc_stage(runs, s, name, m.label, init, b.folder, b.regularisation, b.steps, b.hours,
                                extra=m.ctc, device=device)
            ctc.append(st)
            evals.append(Stage(f"test WER: {st.title}", f"eval {name}-{b.folder}",
                               command("finetune.py", eval=f"{st.out_dir}/best.pt", data=f"{runs}/corpus/test",
                                       device=device),
                               f"{st.out_dir}/best.test.hyp.txt", seconds=30, needs=(st.done,)))
    return stages + sorted(ctc, key=lambda st: -st.seconds) + evals


def forecast(stages, jobs):
    """Seconds the stages not done yet take on `jobs` cores, from the demo's measured speeds."""
    return sum(st.seconds for st in stages if stage_state(st) != "done") / jobs


# ----------------------------------------------------------------------------------------------
# Results: test WERs and paired comparisons


def test_references(runs):
    utterances = data.drop_short(data.load_corpus([f"{runs}/corpus/test"]), quiet=True)
    return {u.id: normalize_for_wer(u.text) for u in utterances}


def read_errors(path, refs):
    """(words, errors) per test utterance of a hypothesis file (finetune.py --eval), in refs' order."""
    with open(path) as f:
        hyps = dict(line.rstrip("\n").split("\t", 1) if "\t" in line else (line.strip(), "") for line in f)
    ids = sorted(refs)
    return word_errors([refs[i] for i in ids], [normalize_for_wer(hyps.get(i, "")) for i in ids])


def compare(words, errors_a, errors_b):
    """WER(a) - WER(b) in points with its 95% paired bootstrap interval; errors_*: [seeds][utterances]
    (the seeds' errors pooled per utterance: the mean WER over seeds)."""
    w = np.asarray(words, dtype=float)
    a, b = np.sum(errors_a, axis=0), np.sum(errors_b, axis=0)
    k = len(errors_a)
    diff = lambda idx: 100.0 * (a[idx].sum() - b[idx].sum()) / (k * w[idx].sum())
    lo, hi = bootstrap_ci(diff, len(w))
    return diff(np.arange(len(w))), lo, hi


# (part, question, [models a], [models b], budgets): WER(a) - WER(b) < 0 means "a is better"
COMPARISONS = [
    ("b", "distillation adds to S&W's inherited start (S&W 800 steps vs 0)", ["sw-800"], ["sw-0"], (6, 61)),
    ("b", "at equal init and steps, D&T's shape beats S&W's (D&T vs S&W shape on a random transformer)",
     ["dt-800"], ["sw-random-800"], (6, 61)),
    *[("c", f"D&T beats S&W at {n} distillation steps", [f"dt-{n}"], [f"sw-{n}"], (6, 61)) for n in LENGTHS],
    ("e", "the discriminative loss (0.5) helps, 3 seeds pooled", [f"dt-disc0.5-800-seed{s}" for s in DISC_SEEDS],
     ["dt-800"] + [f"dt-800-seed{s}" for s in DISC_SEEDS[1:]], tuple(BUDGETS)),
    *[("e", f"the discriminative loss ({w}) helps, seed 0", [f"dt-disc{w}-800-seed0"], ["dt-800"], tuple(BUDGETS))
      for w in DISC_WEIGHTS],
]


def report(runs, known):
    """study.json's content from the decodes done so far: every test WER, each comparison whose
    models all have one, and the last per-layer cosine of every distillation (log.jsonl)."""
    refs = test_references(runs) if os.path.exists(f"{runs}/corpus/synth.json") else {}
    errors, wers, words = {}, {}, None
    for m in known.values():
        for minutes in sorted(m.budgets):
            path = f"{runs}/ctc/{folder(m.name)}-{BUDGETS[minutes].folder}/best.test.hyp.txt"
            if os.path.exists(path):
                words, errors[m.name, minutes] = read_errors(path, refs)
                wers.setdefault(m.name, {})[minutes] = 100.0 * sum(errors[m.name, minutes]) / sum(words)
    found = []
    for part, question, a, b, budgets in COMPARISONS:
        for minutes in budgets:
            if all((n, minutes) in errors for n in a + b):
                point, lo, hi = compare(words, [errors[n, minutes] for n in a], [errors[n, minutes] for n in b])
                per_seed = [100.0 * (sum(errors[x, minutes]) - sum(errors[y, minutes])) / sum(words)
                            for x, y in zip(a, b)]
                found.append({"part": part, "question": question, "minutes": minutes, "difference": point,
                              "interval": [lo, hi], "verdict": verdict((point, lo, hi)), "per_seed": per_seed})
    return {"wers": wers, "comparisons": found, "distillation": last_logs(runs, known), "test_utterances": len(refs)}


def last_logs(runs, known):
    """Each distillation's last log line (log.jsonl): its per-layer cosine loss and the unit
    agreements (distill.unit_agreement: does the student already pick the teacher's codeword?)."""
    out = {}
    for m in known.values():
        log = f"{runs}/students/{folder(m.name)}/log.jsonl"
        if m.preset and os.path.exists(log):
            with open(log) as f:
                last = [json.loads(line) for line in f if '"loss"' in line][-1:] or [{}]
            out[m.name] = {k: last[0][k] for k in ("step", "cos_layers", "unit_reg", "unit_disc", "unit_top")
                           if k in last[0]}
    return out


def markdown(result, known):
    lines = [f"`{result['command']}` on {result['machine']}, {result['date']}; {result['done']} of "
             f"{result['stages']} stages done.", "", "Test WER by label budget (minutes of labels):", "",
             "| model | " + " | ".join(f"{m} min" for m in BUDGETS) + " |", "|---|" + "---:|" * len(BUDGETS)]
    for name, w in result["wers"].items():
        lines.append(f"| {known[name].label} | " + " | ".join(f"{w[m]:.1f}" if m in w else "" for m in BUDGETS) + " |")
    lines += ["", "Comparisons: WER(a) - WER(b), points [95% paired bootstrap interval over test utterances]; "
              "\"holds\" when the interval lies below 0:", ""]
    for c in result["comparisons"]:
        seeds = f"; per seed {', '.join(f'{d:+.1f}' for d in c['per_seed'])}" if len(c["per_seed"]) > 1 else ""
        lines.append(f"- {c['question']}, {c['minutes']} min: **{c['verdict']}** ({c['difference']:+.1f} "
                     f"[{c['interval'][0]:+.1f}, {c['interval'][1]:+.1f}]{seeds})")
    lines += ["", "Distillation at its last logged step: cosine loss -log sigmoid(cos) mean over predicted layers; "
              "share of frames where the teacher's codeword head picks the teacher's unit on the student's "
              "regression (reg) and by the student's disc head (disc), against always guessing the batch's "
              "commonest unit (top):", "", "| student | step | cos loss | reg | disc | top |", "|---|---:|---:|---:|---:|---:|"]
    pct = lambda d, k: f"{100 * d[k]:.1f}%" if k in d else ""
    for name, d in result["distillation"].items():
        cos = f"{np.mean(d['cos_layers']):.3f}" if d.get("cos_layers") else ""
        lines.append(f"| {known[name].label} | {d.get('step', '')} | {cos} | {pct(d, 'unit_reg')} | "
                     f"{pct(d, 'unit_disc')} | {pct(d, 'unit_top')} |")
    return "\n".join(lines) + "\n"


def plot(result, path):
    """study.png: test WER by teacher depth and student structure (a, d), by distillation steps (c),
    the per-layer cosine loss of c's students, and by label budget with and without the
    discriminative loss (e), each over the models done so far."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    w, logs = result["wers"], result["distillation"]
    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    series = lambda names_x, minutes: [(x, w[n][minutes]) for n, x in names_x if minutes in w.get(n, {})]
    line = lambda a, pts, **kw: pts and a.plot(*zip(*pts), **{"marker": "o", **kw})
    line(ax[0], series([(f"teacher-{n}", n) for n in (2, 4, 8, 12)], 61), label="a: teacher, first N layers")
    line(ax[0], series([(f"dt-l{n}-{STRUCTURE_STEPS}" if n < 12 else f"dt-{STRUCTURE_STEPS}", n)
                        for n in STRUCTURE_LAYERS], 61), label=f"d: student at D&T's size, {STRUCTURE_STEPS} steps")
    ax[0].set(xlabel="transformer layers", title="depth (61 min labels)")
    for style, minutes in (("-", 6), ("--", 61)):
        line(ax[1], series([("sw-0", 0)] + [(f"sw-{n}", n) for n in LENGTHS], minutes), ls=style, color="C0",
             label=f"S&W, {minutes} min")
        line(ax[1], series([(f"dt-{n}", n) for n in LENGTHS], minutes), ls=style, color="C1", label=f"D&T, {minutes} min")
        line(ax[1], series([("sw-random-800", 800)], minutes), ls="", marker="x", color="C2",
             label=f"S&W shape, random transformer (b), {minutes} min")
    ax[1].set(xlabel="distillation steps", xscale="symlog", title="b, c: distillation length and controls")
    for i, n in enumerate(LENGTHS):
        for name, color in ((f"sw-{n}", "C0"), (f"dt-{n}", "C1")):
            cos = logs.get(name, {}).get("cos_layers")
            if cos:
                ax[2].plot(range(1, len(cos) + 1), cos, marker=".", color=color, alpha=0.4 + 0.3 * i, label=name)
    ax[2].set(xlabel="predicted teacher layer (in order)", ylabel="-log sigmoid(cos)", title="c: per-layer cosine loss")
    minutes = sorted(BUDGETS)
    for prefix, label, color in (("dt-800", "D&T", "C1"), ("dt-disc0.5-800", "D&T + disc 0.5", "C2")):
        names = [n for n in w if n == prefix or n.startswith(prefix + "-seed")]
        pts = [(m, [w[n][m] for n in names if m in w[n]]) for m in minutes]
        pts = [(m, np.mean(v), min(v), max(v)) for m, v in pts if v]
        if pts:
            m, mean, lo, hi = map(np.array, zip(*pts))
            ax[3].errorbar(m, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, color=color,
                           label=f"{label} (seed mean, min-max)")
    for wt, color in zip(DISC_WEIGHTS, ("C3", "C4")):
        line(ax[3], sorted(w.get(f"dt-disc{wt}-800-seed0", {}).items()), ls=":", color=color,
             label=f"D&T + disc {wt}, seed 0")
    ax[3].set(xlabel="minutes of labels", xscale="log", title="e: the discriminative loss")
    ax[3].set_xticks(minutes, [str(m) for m in minutes])
    ax[3].minorticks_off()
    for a in ax:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    for a in (ax[0], ax[1], ax[3]):
        a.set_ylabel("test WER (%), lower is better")
    fig.suptitle("Claims study: test WER of each model, fine-tuned with CTC", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--parts", default=PARTS, help="which parts to run, e.g. a,b (default: all)")
    p.add_argument("--runs", default=os.path.join("runs", "demo"), help="folder of the stages' outputs (the "
                   "demo's: the stages the demo has run are not run again)")
    p.add_argument("--results", default="results", help="folder for study.json and study.md")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="stages run side by side")
    p.add_argument("--report", action="store_true", help="only write the results of the stages done so far")
    p.add_argument("--device", default="cpu", help="where the stages run: cpu, cuda (a lent GPU), auto")
    args = p.parse_args(argv)
    args.parts = "".join(sorted(set(args.parts.replace(",", ""))))
    if not args.parts or set(args.parts) - set(PARTS):
        p.error(f"--parts takes letters of {PARTS}, e.g. a,b")
    return args


def main(args):
    demo.check_teacher()
    lengths = LENGTHS
    stages = plan(args.runs, args.parts, lengths, args.device)
    if forecast(stages, args.jobs) > FORECAST_LIMIT and "c" in args.parts:
        lengths = LENGTHS[:-1]
        print(f"study: over {FORECAST_LIMIT // 3600} h forecast; part c's {LENGTHS[-1]} steps are cut", flush=True)
        stages = plan(args.runs, args.parts, lengths, args.device)
    known = models(args.parts, lengths)
    print(f"study: parts {','.join(args.parts)}, {len(stages)} stages, forecast "
          f"{format_duration(forecast(stages, args.jobs))} on {args.jobs} cores", flush=True)
    if not args.report:
        check_settings(args.runs, demo.settings_of(SIZING))  # the demo's folder, with the demo's settings
        check_settings(args.runs, {"budgets": [asdict(b) for b in BUDGETS.values()]}, "study_settings.json")
        run_stages(stages, args.runs, time.time(), args.jobs)
    result = {"command": shlex.join(["python", "study.py", *sys.argv[1:]]), "machine": machine(),
              "date": datetime.date.today().isoformat(), "parts": args.parts, "lengths": list(lengths),
              "stages": len(stages), "done": sum(stage_state(st) == "done" for st in stages),
              **report(args.runs, known)}
    os.makedirs(args.results, exist_ok=True)
    base = os.path.join(args.results, "study")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(markdown(result, known))
    plot(result, base + ".png")
    print(markdown(result, known), flush=True)


if __name__ == "__main__":
    main(parse_args())
