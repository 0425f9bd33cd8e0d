# The course's two commands: `make book` and `make test`. Each bootstraps .venv on a fresh machine.
# QUICK=1 selects the CPU-friendly quick mode; DEVICE=cuda|cpu|auto picks the device.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICK ?=
QUICK_FLAG := $(if $(filter-out 0,$(QUICK)),--quick,)

.PHONY: help book test test-fast lint data lab exercises solutions grade bench gpu-run vendor-ort vendor-axe clean

help:
	@echo "make book   - install, fetch data, execute every chapter (QUICK=1 for quick mode), build _build/html"
	@echo "make test   - install, fetch data, lint and run the whole test suite (what CI runs)"
	@echo "make test-fast - lint and the tests that execute no notebook, browser or install (inner loop)"
	@echo "make lab    - open the course in JupyterLab"
	@echo "make data   - fetch and verify Fashion-MNIST only"
	@echo "make exercises - regenerate exercises/ from solutions/"
	@echo "make solutions - re-execute solutions/ in place (nbval's reference outputs), then regenerate exercises/"
	@echo "make grade  - run your exercise notebooks in a fresh kernel: a table per task (passed/failed/not started) + _build/grade/grade.json"
	@echo "make bench  - training-speed benchmark (python -m course_utils.build.bench), table + _build/bench/*.json"
	@echo "make gpu-run - on a CUDA machine: every notebook in full mode with DEVICE=cuda, then the benchmark"
	@echo "              (no venv needed; without papermill the notebooks run in process)"
	@echo "make vendor-ort - re-vendor ONNX Runtime Web (npm) into book/_static/ort/ for the Try-the-model page"
	@echo "make vendor-axe - re-vendor axe-core (npm, latest 4.x) into tests/vendor/axe-core/ for the accessibility test"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

data: $(STAMP)
	$(PY) -m course_utils.data

book: $(STAMP) data
	$(PY) -m course_utils.build.pipeline book $(QUICK_FLAG)

lint: $(STAMP)
	$(VENV)/bin/ruff check course_utils serving apps tests notebooks solutions exercises book
	$(VENV)/bin/ruff format --check course_utils serving apps tests notebooks solutions exercises book
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

test: $(STAMP) data lint
	$(PY) -m course_utils.exercises check
	$(PY) -m pytest --nbval --nbval-sanitize-with solutions/nbval_sanitize.cfg -p no:cacheprovider tests solutions

# The inner loop: no notebook execution, no browser, no package index (markers in pyproject.toml).
test-fast: $(STAMP) data lint
	$(PY) -m pytest -p no:cacheprovider -m "not slow and not browser and not network" tests

# As root (a container, a CI box) Jupyter refuses to start without --allow-root.
lab: $(STAMP) data
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks/

exercises: $(STAMP)
	$(PY) -m course_utils.exercises build

solutions: $(STAMP) data
	$(PY) -m course_utils.exercises execute

grade: $(STAMP) data
	$(PY) -m course_utils.build.grade

bench: $(STAMP) data
	$(PY) -m course_utils.build.bench

# gpu-run uses the machine's own Python when there is no .venv (a GPU image with its own PyTorch
# and no network: nothing is installed). Without papermill the notebooks run through the
# pipeline's fallback runner (nbclient, else in process); GPU_PYTHON=... picks the interpreter.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-run:
	$(GPU_PYTHON) -m course_utils.data
	DEVICE=cuda $(GPU_PYTHON) -m course_utils.build.bench --device cuda --run-notebooks full

# The "Try the model" page's runtime: `npm pack onnxruntime-web@<pinned>`, two files copied, their
# SHA-256 recorded in book/_static/ort/ort-web.json (course_utils/build/web_model.py).
vendor-ort: $(STAMP)
	$(PY) -m course_utils.build.web_model vendor

clean:
	rm -rf _build

vendor-axe:
	cd "$$(mktemp -d)" && npm pack axe-core@4 --silent >/dev/null && tar xzf axe-core-*.tgz \
	  && cp package/axe.min.js package/LICENSE "$(CURDIR)/tests/vendor/axe-core/" \
	  && grep -m1 -o 'axe v[0-9.]*' package/axe.min.js && sha256sum "$(CURDIR)/tests/vendor/axe-core/axe.min.js"
	@echo "update the version and SHA-256 in tests/vendor/axe-core/README.md"
