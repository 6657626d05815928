"""The results of demo.py: test WER, CER and CPU time of every model, the paper's claims decided
on the test set with paired bootstrap intervals, the markdown table (README's Results section)
and the plot.

A claim compares the WERs of two rows on the same test utterances; resampling the utterances
(with replacement, the same draw for both rows) gives the interval of the difference, and the
claim holds when the interval lies wholly on its side of 0 (Koehn 2004; Bisani & Ney 2004).

    rows, hours, batch_audio, words = measure("runs/demo", demo.ROWS, demo.SIZINGS["full"], 5, (1, 2))
    verdicts = claims(rows, words)
"""
import os
import platform
import re
import statistics
import textwrap
import time

import jiwer
import numpy as np
import torch

import data
import finetune
import model
from runtime import format_duration
from scoring import evaluate, normalize_for_wer


# ----------------------------------------------------------------------------------------------
# Measurements: test WER and CER, CPU time


def machine():
    """CPU model and count, e.g. "AMD EPYC 7B13, 2 CPUs"."""
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        name = names[0] if names else name
    return f"{name}, {os.cpu_count()} CPUs"


def time_models(models, waves, lengths, runs):
    """Median CPU forward time (ms) of each model on one batch, round robin so that load changes
    on the machine hit every model alike."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for m in models.values():
            m(waves, lengths)  # warm-up
        for _ in range(runs):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(waves, lengths)
                times[name].append(1000 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def measure(runs, rows_to_run, s, timing_runs, spread_seeds):
    """Parameters, CPU time and test WER of every row (demo.Row) at every label budget of the
    sizing s (demo.Sizing); the test set is never seen before this. Rows fine-tuned again with
    the CTC seeds spread_seeds (--seed-spread) also get the test WER of each seed."""
    test = data.drop_short(data.load_corpus([f"{runs}/corpus/test"]))
    train = data.drop_short(data.load_corpus([f"{runs}/corpus/train"]), quiet=True)  # as finetune.py
    labelled = {"low": lambda: finetune.train_subset(train, s.low_hours), "high": lambda: train}
    hours = {b: sum(u.num_samples for u in labelled[b]()) / data.SAMPLE_RATE / 3600 for b in s.budgets}
    rows, models, words = [], {}, None
    for row in rows_to_run:
        wer, cer, errors = {}, {}, {}
        for budget in s.budgets:
            ctc = finetune.load_ctc(f"{runs}/ctc/{row.name}-{budget}/best.pt")
            wer[budget], pairs = evaluate(ctc, test, torch.device("cpu"), s.batch_seconds,
                                          desc=f"test WER {row.name} ({budget})")
            refs, hyps = ([normalize_for_wer(p[i]) for p in pairs] for i in (1, 2))
            cer[budget] = 100.0 * jiwer.cer(refs, hyps)
            words, errors[budget] = word_errors(refs, hyps)
        models[row.name] = ctc.eval()
        rows.append({"name": row.name, "label": row.label, "preset": row.preset,
                     "params_M": model.count_parameters(ctc.encoder) / 1e6, "wer": wer, "cer": cer,
                     "errors": errors, "examples": [list(p) for p in pairs[:3]]})
    for r in rows:  # --seed-spread runs, when there are any: test WER per CTC seed
        runs_of = [f"{runs}/ctc/{r['name']}-low-seed{seed}/best.pt" for seed in spread_seeds]
        if "low" in s.budgets and all(os.path.exists(p) for p in runs_of):
            r["seed_wers"] = [r["wer"]["low"]] + [
                evaluate(finetune.load_ctc(p), test, torch.device("cpu"), s.batch_seconds)[0] for p in runs_of]
    batch = data.collate([data.AudioDataset(test)[i] for i in range(min(8, len(test)))])
    ms = time_models(models, batch["waves"], batch["lengths"], timing_runs)
    for r in rows:
        r["cpu_ms"], r["time_ratio"] = ms[r["name"]], ms[r["name"]] / ms["teacher"]
    batch_audio = batch["lengths"].sum().item() / data.SAMPLE_RATE
    return rows, hours, batch_audio, words


# ----------------------------------------------------------------------------------------------
# Claims, table, plot


def word_errors(refs, hyps):
    """Per utterance: (reference word counts, word errors = substitutions + deletions + insertions);
    WER = sum(errors) / sum(words)."""
    out = jiwer.process_words(refs, [h if h else "" for h in hyps])
    errors = [sum(max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                  for c in chunks if c.type != "equal") for chunks in out.alignments]
    return [len(r.split()) for r in refs], errors


def bootstrap_ci(diff_fn, n, resamples=1000, seed=0, level=0.95):
    """Paired bootstrap over test utterances: the `level` interval of diff_fn(index) over
    `resamples` draws of n utterances with replacement (Koehn 2004; Bisani & Ney 2004)."""
    rng = np.random.default_rng(seed)
    draws = sorted(diff_fn(rng.integers(0, n, n)) for _ in range(resamples))
    tail = (1 - level) / 2
    return draws[int(tail * resamples)], draws[int((1 - tail) * resamples) - 1]


def verdict(point_low_high, below=0.0):
    """"holds" when the interval (point, low, high) lies wholly below `below`, "does not hold" when
    wholly above, "undecided" when it spans `below`."""
    _, lo, hi = point_low_high
    return "holds" if hi < below else "does not hold" if lo > below else "undecided"


def fbank_size_and_speed(r):
    """The Fbank front-end's claims that the table decides alone: its parameter cut and speed-up vs D&T."""
    cut = 1 - r["dt-fbank"]["params_M"] / r["dt"]["params_M"]
    speed = r["dt"]["cpu_ms"] / r["dt-fbank"]["cpu_ms"]
    return [("Fbank front-end: ~17% fewer parameters", "holds" if 0.1 <= cut <= 0.25 else "does not hold",
             f"{100 * cut:.0f}% fewer than D&T"),
            ("Fbank front-end: ~2x faster inference", "holds" if speed >= 1.6 else "does not hold",
             f"{speed:.2f}x faster than D&T on CPU")]


def claims(rows, words, ceiling=95.0, margin=2.0):
    """The paper's qualitative claims, decided on the test set: [(claim, verdict, evidence)].
    Each compares WERs of two rows on the same utterances by the 95% paired bootstrap interval of
    the difference (verdict). Two WERs both at or above `ceiling` carry no signal (models still at
    the all-blank output)."""
    r = {x["name"]: x for x in rows}
    words = np.asarray(words)
    err = lambda name, budget: np.asarray(r[name]["errors"][budget])
    wer = lambda e, i: 100.0 * e[i].sum() / max(1, words[i].sum())
    everything = np.arange(len(words))

    def interval(diff):  # diff(index) -> WER points; (point estimate, low, high)
        return (diff(everything), *bootstrap_ci(diff, len(words)))

    def difference(a, b, budget, below=0.0):  # is WER(a) - WER(b) < below? (verdict, interval)
        ea, eb = err(a, budget), err(b, budget)
        ci = interval(lambda i: wer(ea, i) - wer(eb, i))
        signal = min(r[a]["wer"][budget], r[b]["wer"][budget]) < ceiling
        return (verdict(ci, below) if signal else "no signal"), ci

    def beats(a, b, budget):  # does a have a lower WER than b?
        v, ci = difference(a, b, budget)
        return v, (f"{r[a]['wer'][budget]:.1f} vs {r[b]['wer'][budget]:.1f} WER, difference {ci[0]:+.1f} "
                   f"[{ci[1]:+.1f}, {ci[2]:+.1f}]")

    budgets = list(rows[0]["errors"])
    have = lambda *names: all(n in r for n in names)  # a quick run has only some rows (and budgets)
    out = []
    for name in ("sw", "dt", "dt-disc", "dt-fbank"):
        if have(name, "scratch"):
            budget = "low" if "low" in budgets else budgets[0]
            out.append((f"distillation helps at the {budget} label budget: {r[name]['label']} vs from scratch",
                        *beats(name, "scratch", budget)))
    for budget in budgets if have("dt", "sw") else []:
        v, ev = beats("dt", "sw", budget)
        out.append((f"D&T beats S&W at a similar size ({budget} budget)", v,
                    f"{ev}, {r['dt']['params_M']:.2f}M vs {r['sw']['params_M']:.2f}M"))
    for budget in budgets if have("dt-disc", "dt") else []:
        out.append((f"the discriminative loss helps ({budget} budget)", *beats("dt-disc", "dt", budget)))
    if have("dt-disc", "dt") and budgets == ["low", "high"]:
        # gain at a budget = WER(dt) - WER(dt-disc); helps most at low: gain(low) - gain(high) > 0,
        # and it helps there at all: hurting less at the low budget than at the high one is no help
        gain = lambda budget, i: wer(err("dt", budget), i) - wer(err("dt-disc", budget), i)
        ci = interval(lambda i: gain("high", i) - gain("low", i))
        v, note, helps_low = verdict(ci), "", beats("dt-disc", "dt", "low")[0]
        if v == "holds" and helps_low != "holds":
            v, note = helps_low, f"; but its gain at the low budget: {helps_low}"
        out.append(("the discriminative loss helps most at the low budget", v,
                    f"gain {gain('low', everything):+.1f} (low) vs {gain('high', everything):+.1f} (high) WER "
                    f"points, high minus low {ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}]{note}"))
    if not have("dt-fbank", "dt"):
        return out
    out += fbank_size_and_speed(r)
    for budget in budgets:
        v, ci = difference("dt-fbank", "dt", budget, below=margin)
        out.append((f"Fbank front-end: marginal WER cost, under {margin:g} points ({budget} budget)", v,
                    f"cost {ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}] WER points vs D&T"))
    return out


def markdown(result):
    """The results table (and the automatic claim check) as markdown: README's Results section."""
    h, s = result["label_hours"], result["settings"]
    lines = [f"`{result['command']}` on {result['machine']}, {result['date']}: ran in "
             f"{format_duration(result['wall_seconds'])}.", "",
             "| model | params (M) | CPU time vs teacher | " + " | ".join(
                 f"test WER (CER), {60 * h[b]:.0f} min labels" for b in h) + " |", "|---|---:|---:|" + "---:|" * len(h)]
    for r in result["rows"]:
        err = " | ".join(f"{r['wer'][b]:.1f} ({r['cer'][b]:.1f})" for b in h)
        lines.append(f"| {r['label']} | {r['params_M']:.2f} | {r['time_ratio']:.2f} | {err} |")
    t = result.get("teacher", {})
    lines += ["", f"Toy corpus {s['hours']:g} h (train {h['high']:.2f} h; dev and test voices held out). Teacher "
              f"{s['teacher']} pre-trained {t.get('steps', '?')} steps on a 4 h toy corpus of its own (shipped, "
              f"`teacher/RECORD.md`; masked-unit accuracy {100 * t.get('acc_m', float('nan')):.1f}%); students "
              f"distilled {s['distill_steps']} steps; CTC " + " and ".join(
                  f"{s[k]} steps ({60 * h[b]:.0f} min labels)" for b, k in
                  (("low", "low_finetune_steps"), ("high", "finetune_steps")) if b in h) +
              f" per model (from scratch: {s['distill_steps']} more, as many updates as distillation + CTC); "
              f"batches of {s['batch_seconds']:g} s; greedy decoding; best dev checkpoint. Parameters: encoder "
              f"(CTC head not counted). CPU time: median forward time on {result['timing']['audio_seconds']:.0f} s "
              f"of test audio, {result['timing']['threads']} threads, all models side by side in one process.", "",
              f"Paper's claims, decided on the {result['test_utterances']} test utterances: WER difference "
              f"[95% paired bootstrap interval]; a claim holds when the interval lies on its side of 0, "
              f"is undecided when it spans 0; two WERs both at or above 95 carry no signal:", ""]
    lines += [f"- {claim}: **{verdict}** ({evidence})" for claim, verdict, evidence in result["claims"]]
    spread = [r for r in result["rows"] if r.get("seed_wers")]
    if spread:
        lines += ["", "Fine-tuning seed spread (low budget, same distilled student, CTC seeds " +
                  ", ".join(map(str, range(len(spread[0]["seed_wers"])))) + "): " + "; ".join(
                      f"{r['label']}: {' / '.join(f'{w:.1f}' for w in r['seed_wers'])} WER "
                      f"(range {max(r['seed_wers']) - min(r['seed_wers']):.1f})" for r in spread) + "."]
    lines += ["", f"First test utterances, reference / hypothesis ({60 * h[list(h)[-1]]:.0f} min labels):", ""]
    for r in result["rows"]:
        for _, ref, hyp in r.get("examples", [])[:2]:
            lines.append(f"- {r['name']}: `{ref}` / `{hyp}`")
    return "\n".join(lines) + "\n"


def claim_intervals(result):
    """(claim, verdict, (point, low, high)) of each claim whose detail ends in "x [lo, hi]" (WER points)."""
    out = []
    for claim, verdict_, detail in result["claims"]:
        found = re.findall(r"([+-]?\d+\.\d+) \[([+-]?\d+\.\d+), ([+-]?\d+\.\d+)\]", detail)
        if found:
            out.append((claim, verdict_, tuple(map(float, found[-1]))))
    return out


def plot(result, path):
    """Test WER against encoder size and CPU time, each model's label budgets linked, and each
    claim's WER difference with its 95% paired interval."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(13, 9.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 0.9])
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    h, rows = result["label_hours"], result["rows"]
    budgets = [(b, m) for b, m in (("low", "o"), ("high", "s")) if b in h]
    name = lambda b: f"{60 * h[b]:.0f} min of labels" + (" (the quick run's one budget)" if len(budgets) == 1 else "")
    for ax, key, xlabel in ((axes[0], "params_M", "encoder parameters (M)"),
                            (axes[1], "time_ratio", "CPU inference time vs the teacher")):
        for k, r in enumerate(rows):
            pts = [(r[key], r["wer"][b]) for b, _ in budgets]
            ax.plot(*zip(*pts), color=f"C{k}", lw=0.8, alpha=0.6)
            for (b, marker), (x, y) in zip(budgets, pts):
                ax.scatter(x, y, color=f"C{k}", marker=marker, s=40, label=f"{r['name']}: {r['label']}"
                           if ax is axes[0] and b == budgets[0][0] else None)
        ax.set(xlabel=xlabel, ylabel="test WER (%), lower is better")
        ax.grid(alpha=0.3)
    for b, marker in budgets:
        axes[1].scatter([], [], color="gray", marker=marker, label=name(b))
    axes[0].legend(fontsize=7, title="model", title_fontsize=7)
    axes[1].legend(fontsize=7, title="linked: one model", title_fontsize=7)
    claims_ = claim_intervals(result)
    colors = {"holds": "C2", "does not hold": "C3"}
    for y, (claim, verdict_, (point, low, high)) in enumerate(claims_):
        axes[2].errorbar(point, y, xerr=[[point - low], [high - point]], fmt="o", capsize=3,
                         color=colors.get(verdict_, "gray"))
    axes[2].set_yticks(range(len(claims_)), [textwrap.fill(f"{c}: {v}", 70) for c, v, _ in claims_], fontsize=7)
    axes[2].invert_yaxis()
    axes[2].axvline(0, color="black", lw=0.8)
    axes[2].set(xlabel="the claim's WER difference (points; as in the table's claims), 95% paired bootstrap interval",
                title="The paper's claims: green holds, red does not hold, gray undecided")
    axes[2].grid(alpha=0.3, axis="x")
    fig.suptitle("Test WER of the teacher and its distilled students against their size and CPU time, and the "
                 f"paper's claims decided\n({result['command']}, {result['machine']}, {result['date']})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_section(md, name):
    """The README's part of results/NAME.md: all but the sample transcripts, which stay in that file."""
    table = md.split("\nFirst test utterances")[0].rstrip("\n")
    return f"{table}\n\nSample transcripts of every row: `results/{name}.md`.\n"


def replace_section(text, body):
    """text with everything between the results markers replaced by body."""
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"no {MARKERS[0]} ... {MARKERS[1]} section")
    return text[:start + len(MARKERS[0])] + "\n" + body.rstrip("\n") + "\n" + text[end:]
