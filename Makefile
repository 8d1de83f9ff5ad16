# Two commands do all set-up on a fresh machine:
#   make demo   - stream a video from the embedded default model (no downloads) to outputs/demo.mp4
#   make test   - install everything the tests need (incl. a real ComfyUI server and Chromium) and run them
PYTHON ?= python3
VENV ?= .venv
COMFY_VENV ?= .cache/comfy-venv

.PHONY: demo test setup

$(VENV)/.sf_ok: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(VENV)/bin/python -m pip install -q -c $(VENV)/constraints.txt -r requirements.txt pytest
	touch $@

setup: $(VENV)/.sf_ok

demo: setup
	$(VENV)/bin/python -m sf_core.generate --out outputs/demo.mp4 --overwrite

test:
	bash scripts/install_comfyui.sh $(COMFY_VENV)
	bash scripts/install_comfyui_current.sh   # a second host when ../shared/hosts exists (else nothing)
	bash scripts/install_browser.sh
	OMP_NUM_THREADS=1 $(COMFY_VENV)/bin/python -m pytest -q tests
