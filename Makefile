# Entry points (DESIGN.md, "Conventions"): make run | test | bench | demo | fuzz
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: run test bench profile demo fuzz lint format system-deps lock clean loader-wheel loader-report

## run: the service on the embedded default (SQLite + software key backend), on 127.0.0.1:8080
run: $(VENV)/.installed-runtime
	$(BIN)/keyserver serve

## test: installs what it needs (Debian packages, the venv), then lint + mypy + pytest on both databases
test: system-deps $(VENV)/.installed-dev
	scripts/run-tests

## fuzz: the fuzz tests (parsers, tokens, the HTTP API) with KEYSERVER_FUZZ_SCALE (default 30) times the
## suite's budgets, random rather than derandomized; failures are kept in .hypothesis/ and replayed first.
## `make fuzz FUZZ_ARGS="-k tdx"` narrows it.
fuzz: system-deps $(VENV)/.installed-dev
	$(BIN)/pytest -m fuzz --hypothesis-profile fuzz -q $(FUZZ_ARGS)

## bench: the benchmarks; figures printed and written to bench/results.json (never asserted in tests)
bench: system-deps $(VENV)/.installed-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

## profile: py-spy samples of a loaded server's release path (bench/profile.py; writes bench/profiles/)
profile: system-deps $(VENV)/.installed-dev
	$(BIN)/python -m bench.profile $(PROFILE_ARGS)

## demo: the confidential-inference design end to end (keyserver, swtpm, loader, inference server, caller)
demo: system-deps $(VENV)/.installed-dev
	$(BIN)/keyserver demo

## loader-wheel: the trusted loader's own distribution (keyserver-loader) in dist/ for the measured
## configuration LOADER_CONFIG=FILE: exactly that loader's image, depending only on the packages of its
## parts (cryptography, joserfc, numpy; tpm2-pytss for a TPM, cbor2 for Nitro) (docs/clients.md)
loader-wheel: $(VENV)/.installed-dev
	@test -n "$(LOADER_CONFIG)" || { echo "make loader-wheel LOADER_CONFIG=FILE: the loader's measured configuration"; exit 2; }
	$(BIN)/python -m clients.loader.build_wheel --config $(LOADER_CONFIG) dist

## loader-report: each loader's measured image (per TEE and optional part), in lines and code lines
## (docs/clients.md); python -m clients.loader.image_report --config FILE lists one, module by module
loader-report: $(VENV)/.installed-dev
	$(BIN)/python -m clients.loader.image_report

system-deps:
	scripts/install-system-deps

$(VENV)/.installed-runtime: pyproject.toml requirements/runtime.txt
	scripts/bootstrap-venv runtime

$(VENV)/.installed-dev: pyproject.toml requirements/dev.txt
	scripts/bootstrap-venv dev

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## lock: re-resolve the hash-pinned lock files from pyproject.toml
lock: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o requirements/runtime.txt pyproject.toml
	$(BIN)/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --extra test -o requirements/dev.txt pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
