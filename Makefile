# `make setup` builds .venv once (idempotent: a stamp file records the inputs it was built from).
# `make test` and `make demo` run setup first, so each is one command on a fresh machine.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.m3ae-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo bench clean

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

bench: setup
	$(VENV)/bin/python benchmarks/bench_data.py
	$(VENV)/bin/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build *.egg-info
