# make test   - install into .venv, build the tiny models, run the whole suite (what CI runs)
# make serve  - install if needed and serve serve_config.yaml (real NVIDIA models, GPU shares)
# make demo   - the same graph on CPU with tiny random-weight models on http://127.0.0.1:8000
# Both run Ray on 127.0.0.1:6379 (RAY_PORT=...), where Python drivers join to call handles.
# make device-wheels - .whl/ for the GPU device run (bench/device_run.sh, bench/RESULTS.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TINY := models/tiny/asr.nemo models/tiny/diarizer.nemo models/tiny/embedder.nemo \
	models/tiny/diarizer_streaming.nemo models/tiny/canary.nemo
RAY_PORT ?= 6379
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=disabled

.PHONY: install test serve demo tiny lint clean device-wheels

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The constraints file pins torch: its CPU build here, a CUDA build from PyPI on GPU boxes.
	$(PY) -m pip install -c constraints.txt -e '.[server,test]'
	touch $(STAMP)

install: $(STAMP)

$(TINY) &: $(STAMP) scripts/make_tiny_models.py
	$(PY) scripts/make_tiny_models.py --out models/tiny

tiny: $(TINY)

test: install tiny
	$(PY) -m ruff check .
	$(PY) -m pytest -q

serve: install
	$(PY) scripts/serve_local.py serve_config.yaml --ray-port $(RAY_PORT)

demo: install tiny
	VOXGRAPH_CPU_ONLY=1 $(PY) scripts/serve_local.py configs/tiny.yaml --ray-port $(RAY_PORT)

# The wheels a lent GPU machine lacks (NeMo & co., ~48 MiB) for bench/device_run.sh.
device-wheels: install
	scripts/device_wheels.sh

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) models/tiny .pytest_cache
