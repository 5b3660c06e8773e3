# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up what they need first: ffmpeg, a virtualenv, the package (editable, dev extras).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BR     := $(VENV)/bin/batch-runner
DEMO   ?= .demo
# fal's JavaScript client, pinned in tests/js/package-lock.json: an outside check of the emulator.
# npm ci writes node_modules/.package-lock.json, so this reinstalls only when the pins change.
JS_CLIENT := tests/js/node_modules/.package-lock.json
# s3rver (an S3 server that checks signatures and expiry) and Azurite, pinned in tests/s3server/package-lock.json.
S3_SERVER := tests/s3server/node_modules/.package-lock.json

.PHONY: setup ffmpeg browser node demo lint test bench clean

# An editable install leaves the package uncompiled, and where PYTHONDONTWRITEBYTECODE is set (as on
# this project's machines) every `batch-runner` process would compile its modules again: about 0.1 s
# of CPU per process. compileall writes the bytecode a regular install would, and only what changed.
setup: ffmpeg $(VENV)/.installed
	@$(PY) -m compileall -q batch_runner

ffmpeg:
	@sh scripts/ensure-tool.sh ffmpeg,ffprobe ffmpeg required "to probe sources and make media"

browser:
	@sh scripts/ensure-tool.sh chromium chromium optional "the HTML report's browser test"

node:
	@sh scripts/ensure-tool.sh node,npm npm required "fal's JavaScript client checks the emulator"

$(JS_CLIENT): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	@touch $@

$(S3_SERVER): tests/s3server/package.json tests/s3server/package-lock.json
	npm ci --prefix tests/s3server --no-audit --no-fund --loglevel=error
	@touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	@sh scripts/demo.sh "$(BR)" "$(DEMO)"

# ruff (lint and format check) and mypy (strict on batch_runner/ and bench/), all configured in pyproject.toml.
# `ruff format` fixes the formatting, `ruff check --fix` the fixable findings.
lint: setup
	$(PY) -m ruff check
	$(PY) -m ruff format --check
	$(PY) -m mypy

# `make test` (and so CI) lints first; a rule of its own, so the test recipe stays as it is.
test: lint

test: setup browser node $(JS_CLIENT) $(S3_SERVER)
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_plan.py
	$(PY) bench/bench_run.py
	$(PY) bench/bench_scale.py
	$(PY) bench/bench_big.py

clean:
	rm -rf $(VENV) $(DEMO) tests/js/node_modules tests/s3server/node_modules jobs/media out .pytest_cache .ruff_cache .mypy_cache bench/.work bench/.work-run bench/.work-scale bench/.work-big
