# gridrun: `make demo` runs the embedded default search; `make test` runs the whole test suite.
# Both install into a local virtualenv first (.venv), with torch pinned to the CPU wheel.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gridrun-installed
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	command -v bwrap >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2 >/dev/null)
	command -v bwrap >/dev/null 2>&1 || echo "warning: bubblewrap is missing (sudo apt-get install bubblewrap): code_exec will refuse to run" >&2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/gridrun launch search_spaces/forgetting.yaml

test: install
	$(PY) -m pytest -q --durations=25 -n 2 --dist loadscope --no-loadscope-reorder

lint: install
	$(VENV)/bin/ruff check gridrun trainables evaluators forgetting tests bench
	$(VENV)/bin/ruff format --check gridrun trainables evaluators forgetting tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf gridrun_results mlruns mlruns.db .pytest_cache
