# Two commands for a new user: `make demo` and `make test`. Both create .venv and install what is
# missing first (tools/install_env.sh, a no-op when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
LINT_PATHS := ovdet_plugin tools tests benchmarks configs/lazy setup.py

.PHONY: install demo demo-text benchmark-synthetic test lint format

install:
	@VENV=$(VENV) bash tools/install_env.sh

# The end-to-end benchmark on generated data (11.5-22 min on 2-core Intel Xeons, 14-32 min on
# 2-core AMD EPYCs, with the shared host's load and the CPU model; README): data, the shipped
# tiny CLIPs' zero-shot figures, CLIPSelf, ViLD / F-VLM / F-ViT / RO-ViT via tools/train_net.py,
# the stock LVISEvaluator, results.md + pictures. Finished steps are reused on the next run.
demo: install
	$(PY) tools/run_synthetic_benchmark.py --output output/synthetic_benchmark

# Everything from nothing plus the ablation table (3 seeds): the tiny CLIP is pretrained here too,
# by tools/pretrain_rovit.py with configs/pretraining/tiny_synthetic.yaml on a caption folder
# written by tools/generate_synthetic_data.py --pretrain-style scene_crops, the two side by side
# (the main run: 59 min on a 2-core AMD EPYC with the former 8000-step ViT, about 1 h 40 min to
# 2 h estimated with today's 16000 steps; the ablations: hours more; README).
benchmark-synthetic: install
	$(PY) tools/run_synthetic_benchmark.py --output output/synthetic_benchmark_full \
		--from-scratch --ablations

# Text-only demo: zero-shot ranking of a typed vocabulary with a random tiny CLIP.
demo-text: install
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
