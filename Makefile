# The two commands of the README: `make run` (set up and start the whole engine on embedded
# defaults) and `make test` (the full test suite; .ci/run calls it).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test bench fuzz

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: setup
	$(BIN)/imbill run

test: setup
	bash scripts/postgres-up
	bash scripts/chromium-up
	bash scripts/sip-tools-up
	$(BIN)/python -m pytest -q

fuzz: setup
	bash scripts/postgres-up
	IMBILL_FUZZ_EXAMPLES=$${IMBILL_FUZZ_EXAMPLES:-50} $(BIN)/python -m pytest -q tests/test_fuzz.py

bench: setup
	bash scripts/sip-tools-up
	$(BIN)/python bench/bench_rating.py
	$(BIN)/python bench/bench_processor.py
	$(BIN)/python bench/bench_edge.py
	bash scripts/postgres-up
	$(BIN)/python bench/bench_projection.py
