# Two commands for a new user: `make demo` and `make test`. Both create .venv and install what is
# missing first (tools/install_env.sh, a no-op when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
LINT_PATHS := ovdet_plugin tools tests benchmarks setup.py

.PHONY: install demo test lint format

install:
	@VENV=$(VENV) bash tools/install_env.sh

demo: install
	$(PY) tools/demo_text.py

# pytest's exit code 5 ("no tests collected") is turned into a failure.
test: install
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: install
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m black --check --quiet $(LINT_PATHS)

format: install
	$(PY) -m ruff check --fix $(LINT_PATHS)
	$(PY) -m black --quiet $(LINT_PATHS)
