# nnlab: two commands. `make run` serves the dashboard; `make test` runs the whole suite.
# Both create .venv and install the pinned requirements on a fresh machine by themselves.
# For developers: `make test-fast` runs the suite without the browser and slow tests (pytest -m "not browser
# and not slow"; markers in pyproject.toml), so it needs no chromium.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8501
# WORKSPACE=/path/to/folder overrides where models and variants are stored (default ~/.cache/nnlab/workspace)
WORKSPACE ?=
# RAY_ADDRESS=host:port runs job pieces (sweep configurations …) on that Ray cluster; by default the server
# starts a local Ray when a job first needs it (NNLAB_RAY=0 runs them in-process instead)
RAY_ADDRESS ?=
SUDO   := $(shell [ "$$(id -u)" = 0 ] && echo "" || (command -v sudo >/dev/null && sudo -n true 2>/dev/null && echo "sudo -n"))
CAN_APT := $(shell [ "$$(id -u)" = 0 ] || (command -v sudo >/dev/null && sudo -n true 2>/dev/null) && command -v apt-get >/dev/null && echo yes)

.PHONY: run test test-fast venv data chromium bench clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST from Debian's package when we may install packages; nnlab falls back by itself otherwise.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: Debian package present"; \
	elif [ "$(CAN_APT)" = yes ]; then ($(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
	  && echo "Fashion-MNIST: installed dataset-fashion-mnist" || echo "Fashion-MNIST: apt failed; nnlab will try torchvision, then digits"; \
	else echo "Fashion-MNIST: cannot install Debian packages here; nnlab will try torchvision, then digits"; fi

# Debian's chromium for the browser tests, which are part of the suite: without it `make test` stops here.
# fonts-dejavu-core with it: a font covering Cyrillic (the Russian UI), whatever chromium's dependencies pull in.
chromium:
	@if [ -x /usr/bin/chromium ] && [ -n "$$(fc-list :lang=ru 2>/dev/null)" ]; then echo "chromium: present"; \
	elif [ "$(CAN_APT)" = yes ]; then ($(SUDO) apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1)) \
	  && echo "chromium: installed" || { echo "ERROR: chromium could not be installed (apt-get install chromium failed); the browser tests need Debian's /usr/bin/chromium" >&2; exit 1; }; \
	else echo "ERROR: /usr/bin/chromium (or a font with Cyrillic) is missing and Debian packages cannot be installed here (needs root or password-less sudo); install chromium, then run make test again" >&2; exit 1; fi

run: venv data
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) \
	  --browser.gatherUsageStats false --server.headless true $(if $(WORKSPACE)$(RAY_ADDRESS),--) \
	  $(if $(WORKSPACE),--workspace $(WORKSPACE)) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS))

# The suite runs on TEST_WORKERS pytest-xdist workers (default 2, one per core of the 2-core CI machine; 0 runs it
# in one process): a file's tests stay on one worker, the Ray files share one, heavy files go first (tests/conftest.py).
TEST_WORKERS ?= 2
test: venv chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-fast: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not browser and not slow" tests

bench: venv data
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
