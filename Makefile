# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up what they need first: ffmpeg, a virtualenv, the package (editable, dev extras).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BR     := $(VENV)/bin/batch-runner
DEMO   ?= .demo

.PHONY: setup ffmpeg browser demo test bench clean

setup: ffmpeg $(VENV)/.installed

ffmpeg:
	@sh scripts/ensure-tool.sh ffmpeg,ffprobe ffmpeg required "to probe sources and make media"

browser:
	@sh scripts/ensure-tool.sh chromium chromium optional "the HTML report's browser test"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	@sh scripts/demo.sh "$(BR)" "$(DEMO)"

test: setup browser
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_plan.py
	$(PY) bench/bench_run.py
	$(PY) bench/bench_scale.py

clean:
	rm -rf $(VENV) $(DEMO) jobs/media out .pytest_cache bench/.work bench/.work-run bench/.work-scale
