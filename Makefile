# `make setup` builds .venv once (idempotent: a stamp file records the inputs it was built from).
# `make test` and `make demo` run setup first, so each is one command on a fresh machine.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.m3ae-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo corpus pretrain-small bench orig-setup bench-original clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(VENV)/bin/python -m pytest -q -rs

# The demo prints how long set-up took (a fresh machine installs everything first) and its own wall time.
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory setup; \
	echo "make demo: set-up took $$(( $$(date +%s) - start )) s"; \
	start=$$(date +%s); $(VENV)/bin/m3ae demo $(DEMO_ARGS); code=$$?; \
	echo "make demo: the demo took $$(( $$(date +%s) - start )) s"; exit $$code

# The open pre-training corpus from the bundled data (docs/data.md, "m3ae corpus"): VQA-Med 2019 (train + val,
# all four categories), SLAKE train + val and VQA-RAD train, with VQA-RAD's and SLAKE's val and test images
# left out by the leakage guard. CORPUS_DIR holds the prepared folders and the corpus.
CORPUS_DIR ?= prepared
M3AE := $(VENV)/bin/python -m m3ae.cli
corpus: setup
	$(M3AE) prepare vqa-med-2019 --src data/vqa_med_2019 --out $(CORPUS_DIR)/vqa_med_2019 --protocol clean --categories all --overwrite
	$(M3AE) prepare slake --src data/slake --out $(CORPUS_DIR)/slake --protocol clean --overwrite
	$(M3AE) prepare vqa-rad --src data/vqa_rad --out $(CORPUS_DIR)/vqa_rad --protocol clean --seed 0 --overwrite
	$(M3AE) corpus --from $(CORPUS_DIR)/vqa_med_2019 $(CORPUS_DIR)/slake $(CORPUS_DIR)/vqa_rad:train \
	  --exclude $(CORPUS_DIR)/vqa_rad $(CORPUS_DIR)/slake --out $(CORPUS_DIR)/open_corpus --overwrite

# The shipped m3ae-small-medvqa, pre-trained again from the bundled data (docs/learning.md): the corpus, then
# the recipe. Resumable: run it again after a kill and it goes on from its last checkpoint.
PRETRAIN_DIR ?= runs/m3ae_small_medvqa
pretrain-small: corpus
	$(M3AE) pretrain --config configs/pretrain/m3ae_small_medvqa.yaml --data $(CORPUS_DIR)/open_corpus \
	  --out $(PRETRAIN_DIR) --resume

bench: setup
	$(VENV)/bin/python benchmarks/bench_data.py
	$(VENV)/bin/python benchmarks/bench_train.py

# The original M3AE code side by side (docs/benchmarks.md, "Side by side with the original"): its own
# venv (torch + transformers 4.x; it cannot import our transformers 5), its source from a git mirror.
ORIG_VENV ?= ../orig-venv
ORIG_SRC ?= /tmp/m3ae-orig
ORIG_GIT ?= ../.mirror/zhjohnchan+M3AE/repo
ORIG_BENCH_ARGS ?= --precision fp32 --threads 2 --steps 3

orig-setup:
	test -x $(ORIG_VENV)/bin/python || $(PYTHON) -m venv $(ORIG_VENV)
	$(ORIG_VENV)/bin/python -c "import torch, transformers, einops, tqdm" 2>/dev/null || \
	  $(ORIG_VENV)/bin/python -m pip install --quiet torch==2.13.0 transformers==4.57.6 einops tqdm numpy
	test -f $(ORIG_SRC)/m3ae/modules/m3ae_module.py || \
	  { mkdir -p $(ORIG_SRC) && git --git-dir=$(ORIG_GIT) archive HEAD | tar -x -C $(ORIG_SRC); }

# Each job in a fresh process; one JSON line each (the fields of `m3ae bench --json`).
bench-original: orig-setup
	for job in infer vqa pretrain; do \
	  $(ORIG_VENV)/bin/python benchmarks/bench_original.py --orig-src $(ORIG_SRC) --job $$job $(ORIG_BENCH_ARGS) --json; \
	done

clean:
	rm -rf $(VENV) build *.egg-info
