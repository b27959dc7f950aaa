# keras-topomap: the two commands a newcomer runs.
#   make demo   - set up and run the main demo on the bundled data
#   make test   - set up and run the test suite on the TensorFlow, JAX and PyTorch backends
# Both create (or reuse) a local virtual environment in $(VENV) and install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On these machines torch==2.13.0 is a local CPU wheel; any other spec downloads a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_BACKEND ?= jax
ARGS ?=
# The bundled corpus (and pretrained models) is its own distribution, installed from the checkout.
CORPUS_PKG := ./keras-topomap-corpus

.PHONY: demo test notebooks docs lint venv browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when the project's metadata changes.
$(VENV)/.test-deps: pyproject.toml setup.cfg $(CORPUS_PKG)/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e $(CORPUS_PKG) -e ".[all,dev]" "$(TORCH_SPEC)"
	@$(MAKE) --no-print-directory browser
	touch $@

# Headless Chromium for the test that opens the demo's index.html. Installed only where that is
# possible (root and apt-get); elsewhere the test skips and says why (and fails under CI=true).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	    || command -v google-chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q chromium >/dev/null 2>&1 \
	     || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
	    || echo "could not install chromium with apt-get: the browser test will skip"; \
	else echo "no chromium (install it as root: apt-get install chromium): the browser test will skip"; fi

# The demo installs only its backend (DEMO_BACKEND = jax, tensorflow or torch).
DEMO_PKGS := $(if $(filter torch,$(DEMO_BACKEND)),"$(TORCH_SPEC)",)

$(VENV)/.demo-deps-$(DEMO_BACKEND): pyproject.toml setup.cfg $(CORPUS_PKG)/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e $(CORPUS_PKG) -e ".[$(DEMO_BACKEND),audio,corpus]" $(DEMO_PKGS)
	touch $@

venv: $(VENV)/.test-deps

lint: $(VENV)/.test-deps
	$(PY) -m ruff check .

# The suite on TensorFlow, the backend-agnostic tests again on JAX and PyTorch, the example
# notebooks executed top to bottom (once: the docs site renders those executed copies), and the
# docs site built with warnings as errors.
# Each pytest runs in PYTEST_WORKERS processes (pytest-xdist, the dev extra); --dist loadfile
# keeps every test file in one worker, so its module fixtures are built once. PYTEST_WORKERS=0
# runs in one process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
test: $(VENV)/.test-deps
	$(PY) -m ruff check .
	KERAS_BACKEND=tensorflow $(PY) -m pytest $(PYTEST_ARGS)
	KERAS_BACKEND=jax $(PY) -m pytest -m backend $(PYTEST_ARGS)
	KERAS_BACKEND=torch $(PY) -m pytest -m backend $(PYTEST_ARGS)
	$(MAKE) notebooks docs

# Each notebook executed once, top to bottom, in its own folder, into build/notebooks/examples/
# (a failing cell fails the target; examples/ stays output-free). docs/_hooks/notebooks.py serves
# these executed copies as the site's Examples pages.
notebooks: $(VENV)/.test-deps
	rm -rf build/notebooks
	KERAS_BACKEND=jax $(PY) -m nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 \
	    --output-dir build/notebooks/examples examples/*.ipynb

docs: $(VENV)/.test-deps
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site

demo: $(VENV)/.demo-deps-$(DEMO_BACKEND)
	KERAS_BACKEND=$(DEMO_BACKEND) $(PY) -m keras_topomap.demo $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
