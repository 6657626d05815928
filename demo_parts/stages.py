"""Run command lines as stages, side by side, resumable: the runner of demo.py.

A stage is one of this project's command lines (e.g. `finetune.py --init ...`) with the file it
writes when done and the files it needs. run_stages starts each as soon as what it needs exists,
up to --jobs at a time, each on STAGE_THREADS threads (so that no number depends on how stages
were paired), copies its output line by line to the console with a tag and whole to RUNS/logs/,
skips stages whose file exists and continues interrupted ones with --resume. Ctrl-C (or a plain
`kill`) asks every running stage to stop at its next step with a checkpoint.

    run_stages([Stage("corpus", "corpus", ["data.py", "synth", "--out", "c"], "c/synth.json")], "runs/x", time.time())
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from runtime import format_duration

# Torch threads of every stage, alone or side by side: results never depend on the pairing, and
# small models use one core better than two (results/NOTES.md, Stage threads).
STAGE_THREADS = 1


@dataclass
class Stage:
    title: str         # printed in the stage header
    tag: str           # short name: prefix of its output lines, RUNS/logs/TAG.log
    argv: list         # script and its arguments
    done: str          # the file that exists once the stage has finished
    out_dir: str = ""  # holds checkpoint.pt when an interrupted stage can --resume
    seconds: float = 0.0  # estimated duration
    needs: tuple = ()  # files that must exist before it starts (other stages' done files)


def command(script, *positional, **flags):
    """command("finetune.py", max_steps=300, cache_frontend=True) -> ["finetune.py", "--max-steps",
    "300", "--cache-frontend"] (a boolean is a switch: --name or --no-name)."""
    argv = [script, *positional]
    for name, value in flags.items():
        flag = name.replace("_", "-")
        argv += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return argv


def stage_state(stage):
    """"done" (skip it), "resume" (continue from its checkpoint) or "new"."""
    if os.path.exists(stage.done):
        return "done"
    if stage.out_dir and os.path.exists(os.path.join(stage.out_dir, "checkpoint.pt")):
        return "resume"
    return "new"


def check_settings(runs, settings, name="demo_settings.json"):
    """A runs folder holds one sizing: refuse to mix its outputs with those of other settings."""
    path = os.path.join(runs, name)
    settings = json.loads(json.dumps(settings))  # as the file holds them: tuples become lists
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SystemExit(f"error: {runs} holds a demo run with other settings ({', '.join(changed)}); "
                             f"delete it or pass --runs DIR")
    else:
        os.makedirs(runs, exist_ok=True)
        with open(path, "w") as f:
            json.dump(settings, f, indent=2)


def relay(proc, tag, log_path, lock):
    """Copy a stage's output to RUNS/logs/TAG.log and, line by line with its tag, to the console.
    Progress-bar redraws (text ending in a carriage return) go to the log only."""
    with open(log_path, "ab") as log:
        pending = b""
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            log.write(chunk)
            log.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            with lock:
                for line in lines:
                    line = line.rsplit(b"\r", 1)[-1].decode(errors="replace").rstrip()
                    if line:
                        print(f"[{tag}] {line}", flush=True)


class Running:
    """One started stage: its process, the thread relaying its output, its start time."""

    def __init__(self, stage, number, runs, lock, resume):
        argv = [sys.executable, *stage.argv] + (["--resume"] if resume else [])
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(STAGE_THREADS)}
        os.makedirs(os.path.join(runs, "logs"), exist_ok=True)
        log_path = os.path.join(runs, "logs", stage.tag.replace(" ", "-") + ".log")
        with lock:
            print(f"$ {shlex.join(['python', *argv[1:]])}  # {STAGE_THREADS} thread(s), log {log_path}", flush=True)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     **own_group())
        self.thread = threading.Thread(target=relay, args=(self.proc, stage.tag, log_path, lock), daemon=True)
        self.thread.start()
        self.stage, self.number, self.t0 = stage, number, time.time()


# Each stage runs in a process group of its own: Ctrl-C reaches only this process, which passes it
# on once (stop_all), so that each stage stops at its next step with a checkpoint instead of being
# killed. Windows has no SIGINT to send to a child: there the group gets CTRL_BREAK_EVENT, which
# the child's GracefulStop (runtime.py) reads as SIGBREAK.
def own_group():
    """Popen's arguments that start a stage in its own process group (session on POSIX)."""
    return dict(creationflags=subprocess.CREATE_NEW_PROCESS_GROUP) if os.name == "nt" else dict(start_new_session=True)


def stop_signal():
    return signal.CTRL_BREAK_EVENT if os.name == "nt" else signal.SIGINT


def stop_all(running):
    """Ask every running stage to stop with a checkpoint (their Ctrl-C handling) and wait for them."""
    for r in running:
        r.proc.send_signal(stop_signal())
    for r in running:
        r.proc.wait()
        r.thread.join()


def time_left(todo, running, jobs, now):
    """Seconds until the last stage ends if each takes its estimate: run_stages' schedule replayed
    (each stage in turn takes the first free slot, once the stages it needs have ended)."""
    ends = {r.stage.done: max(now, r.t0 + r.stage.seconds) for r in running}
    slots = sorted(ends.values()) + [now] * (jobs - len(running))
    for st in todo:
        slot = min(slots)
        slots.remove(slot)
        ends[st.done] = max([slot] + [ends.get(f, now) for f in st.needs]) + st.seconds
        slots.append(ends[st.done])
    return max(ends.values(), default=now) - now


def run_stages(stages, runs, start, jobs=1):
    """Run the stages not done yet, up to `jobs` at a time, each as soon as the files it needs
    exist; the seconds each took accumulate in RUNS/stage_seconds.json. Every stage runs on
    STAGE_THREADS threads whatever runs beside it, so that its numbers never depend on how the
    stages happened to be paired (float sums change with the thread count)."""
    times_path = os.path.join(runs, "stage_seconds.json")
    times = {}
    if os.path.exists(times_path):
        with open(times_path) as f:
            times = json.load(f)
    numbers = {id(st): i for i, st in enumerate(stages, 1)}
    todo = [st for st in stages if stage_state(st) != "done"]
    for st in stages:
        if st not in todo:
            print(f"[{numbers[id(st)]}/{len(stages)}] {st.title}: done ({st.done})", flush=True)
    running, lock, t_start = [], threading.Lock(), time.time()
    # Ctrl-C, and a plain `kill` too, end up in the `except KeyboardInterrupt` below.
    previous = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"demo: {len(stages)} stages, {len(todo)} to run, up to {jobs} at a time; estimated "
          f"{format_duration(time_left(todo, running, jobs, time.time()))} (times measured on 2 idle cores)",
          flush=True)
    try:
        while todo or running:
            busy = {r.stage.done for r in running}  # a stage may write its file a moment before it ends
            ready = [st for st in todo if all(os.path.exists(f) and f not in busy for f in st.needs)]
            for st in ready[:jobs - len(running)]:
                todo.remove(st)
                with lock:
                    print(f"\n[{numbers[id(st)]}/{len(stages)}] {st.title} | elapsed "
                          f"{format_duration(time.time() - start)} | estimate {format_duration(st.seconds)}, "
                          f"~{format_duration(time_left([st, *todo], running, jobs, time.time()))} left in all",
                          flush=True)
                running.append(Running(st, numbers[id(st)], runs, lock, stage_state(st) == "resume"))
            if not running:
                raise SystemExit(f"demo: no stage can start: {todo[0].title} needs {', '.join(todo[0].needs)}")
            time.sleep(0.2)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                r.thread.join()
                if r.proc.returncode != 0:
                    stop_all(running)
                    raise SystemExit(f"demo: stage '{r.stage.title}' failed (exit {r.proc.returncode}); its output "
                                     f"is in {runs}/logs; fix the error and rerun: finished stages are kept and "
                                     f"unfinished ones continue from their checkpoints")
                times[r.stage.title] = times.get(r.stage.title, 0.0) + time.time() - r.t0
                with open(times_path, "w") as f:
                    json.dump(times, f, indent=2)
                with lock:
                    print(f"[{r.number}/{len(stages)}] finished: {r.stage.title} in "
                          f"{format_duration(time.time() - r.t0)}", flush=True)
    except KeyboardInterrupt:
        print("\ndemo: Ctrl-C: stopping the running stages at their next step, with checkpoints ...", flush=True)
        stop_all(running)
        raise SystemExit("demo: stopped; rerun the same command to continue where it stopped")
    finally:
        add_wall_seconds(runs, time.time() - t_start)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return times


def wall_seconds(runs):
    """Wall time spent running stages, summed over the invocations of a demo (RUNS/wall_seconds)."""
    path = os.path.join(runs, "wall_seconds")
    return float(open(path).read()) if os.path.exists(path) else 0.0


def add_wall_seconds(runs, seconds):
    total = wall_seconds(runs) + seconds  # read before the file is opened for writing
    with open(os.path.join(runs, "wall_seconds"), "w") as f:
        f.write(f"{total:.1f}\n")
