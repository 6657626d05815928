# The two commands: `make demo` (toy corpus -> toy teacher -> distilled students -> CTC -> WER)
# and `make test`. Both create the virtual environment .venv from the requirements files first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements-dev.txt
	touch $@

test: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) -m pytest -q test_all.py

# make demo: the README's results table (<= 45 min on 2 CPU cores, see README); QUICK=1: the same flow on a
# small corpus with few steps (~3 min); HOURS=h (corpus hours) and STEPS=x (multiplier of every
# stage's steps) for a longer, better run; RUNS=dir for the stages' outputs (default runs/NAME).
# An interrupted `make demo` continues where it stopped.
demo: $(VENV)/.installed
	$(PY) demo.py $(if $(filter 1 yes true,$(QUICK)),--quick) $(if $(HOURS),--hours $(HOURS)) \
		$(if $(STEPS),--steps $(STEPS)) $(if $(RUNS),--runs $(RUNS))

clean:
	rm -rf runs
