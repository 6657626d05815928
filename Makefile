# The two commands: `make demo` (toy corpus -> toy teacher -> distilled students -> CTC -> WER)
# and `make test`. Both create the virtual environment .venv from the requirements files first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test teacher study clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements-dev.txt
	touch $@

test: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) -m pytest -q test_all.py

# make demo: the README's results table from the shipped teacher (~40 min on 2 CPU cores;
# results/NOTES.md, Demo run time);
# QUICK=1: the teacher, a student from scratch and an S&W student at one label budget
# (~4-5 min; results/NOTES.md, Quick run sizing);
# HOURS=h (corpus hours) and STEPS=x (multiplier of every stage's steps) for a longer, better run;
# RUNS=dir for the stages' outputs (default runs/NAME).
# An interrupted `make demo` continues where it stopped.
demo: $(VENV)/.installed
	$(PY) demo.py $(if $(filter 1 yes true,$(QUICK)),--quick) $(if $(HOURS),--hours $(HOURS)) \
		$(if $(STEPS),--steps $(STEPS)) $(if $(RUNS),--runs $(RUNS))

# make study: the claims study (study.py; ~4.5 h on 2 CPU cores, ~4 h after make demo, whose runs/demo
# it shares; resumable: run it again to go on;
# PARTS=a,b for some parts; DEVICE=cuda on a GPU); results in results/study.{json,md,png}.
study: $(VENV)/.installed
	$(PY) study.py $(if $(PARTS),--parts $(PARTS)) $(if $(DEVICE),--device $(DEVICE))

# make teacher: re-create the shipped toy teacher (teacher/toy-teacher.pt, its RECORD.md and
# pretrain-log.jsonl) from scratch: its own 5 h corpus, then 3000 pre-training steps (~65 min on
# one core); interrupted, it continues where it stopped.
teacher: $(VENV)/.installed
	$(PY) demo.py --make-teacher

clean:
	rm -rf runs
