# The two commands: `make demo` (toy corpus -> toy teacher -> distilled students -> CTC -> WER)
# and `make test`. Both create the virtual environment .venv from the requirements files first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNS   ?= runs/demo

.PHONY: demo test clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements-dev.txt
	touch $@

test: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) -m pytest -q test_all.py

demo: $(VENV)/.installed
	$(PY) data.py synth --out $(RUNS)/corpus --hours 0.05 --seed 0
	$(PY) pretrain.py --data $(RUNS)/corpus/train --out-dir $(RUNS)/teacher --max-steps 5
	$(PY) distill.py --teacher $(RUNS)/teacher/teacher.pt --student tiny --data $(RUNS)/corpus/train \
		--out-dir $(RUNS)/student --max-steps 5 --log-every 1
	$(PY) finetune.py --init $(RUNS)/student/student.pt --train $(RUNS)/corpus/train \
		--valid $(RUNS)/corpus/dev --out-dir $(RUNS)/ctc --max-steps 5 --log-every 1
	$(PY) finetune.py --eval $(RUNS)/ctc/best.pt --data $(RUNS)/corpus/test

clean:
	rm -rf runs
