"""Training curves of one run from its log.jsonl (distill.py, finetune.py, pretrain.py), in one PNG:
the loss and its parts, the gradient norm and learning rate, and dev WER (fine-tuning) or the
unit agreements (distillation: does the student pick the teacher's codeword?), each by step.

    python -m tools.curves runs/demo/students/dt/log.jsonl        # writes runs/demo/students/dt/curves.png
    python -m tools.curves runs/demo/ctc/dt-low/log.jsonl --out dt-low.png
"""
import argparse
import json
import os

# Logged numbers that are not loss parts: bookkeeping, optimizer state, the other panels' values
NOT_LOSSES = {"step", "grad_norm", "lr", "ms_per_step", "audio_s_per_s", "frozen", "dev_wer"}


def read_log(path):
    """The log's lines as dicts, in order; a missing or empty file is an error naming it."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such log; every run writes OUT_DIR/log.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise SystemExit(f"error: {path}: empty; the first line comes after --log-every steps")
    return rows


def series(rows, key):
    """(steps, values) of the rows that logged a number under key."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return tuple(zip(*pts)) if pts else ((), ())


def plot(rows, out, title):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    losses = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))} - NOT_LOSSES
                    - {k for r in rows for k in r if k.startswith("unit_")})
    for key in losses:
        ax[0].plot(*series(rows, key), marker=".", label=key, lw=2 if key == "loss" else 1)
    ax[0].set(yscale="log", title="loss and its parts (lower is better)")
    ax[1].plot(*series(rows, "grad_norm"), marker=".", color="C3", label="gradient norm (before clipping)")
    ax[1].set(yscale="log", title="gradient norm and learning rate")
    lr = ax[1].twinx()
    lr.plot(*series(rows, "lr"), color="C7", ls="--", label="learning rate")
    lr.set_ylabel("learning rate")
    (h1, l1), (h2, l2) = ax[1].get_legend_handles_labels(), lr.get_legend_handles_labels()
    ax[1].legend(h1 + h2, l1 + l2, fontsize=7)
    if series(rows, "dev_wer")[0]:
        ax[2].plot(*series(rows, "dev_wer"), marker="o", color="C2", label="dev WER (%)")
        ax[2].set(title="dev WER (lower is better)", ylabel="WER (%)")
    else:
        for key in sorted({k for r in rows for k in r if k.startswith("unit_")}):
            ax[2].plot(*series(rows, key), marker=".", label=key)
        ax[2].set(title="share of frames: the teacher's unit picked", ylabel="share of frames")
    for a in ax:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        if a is not ax[1] and a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("log", help="a run's log.jsonl")
    p.add_argument("--out", help="PNG to write (default: curves.png beside the log)")
    return p.parse_args(argv)


def main(args):
    out = args.out or os.path.join(os.path.dirname(args.log), "curves.png")
    plot(read_log(args.log), out, f"{args.log}: training curves")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(parse_args())
