# NodeScope: `make demo` runs the platform with demo data; `make test` runs the whole suite.
# Everything is installed by these targets (virtualenv, torch==2.13.0 first, Python packages,
# the npm bundle, Debian's Chromium for the browser tests).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUNDLE := frontend/static/dist/viewer.js
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: setup demo test lint format migrate bench chromium clean screenshots

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU build on disk; anything else pulls CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUNDLE): frontend/package.json $(wildcard frontend/package-lock.json) frontend/build.mjs $(wildcard frontend/src/*)
	cd frontend && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund) && npm run build

setup: $(STAMP) $(BUNDLE)
	mkdir -p var

migrate: setup
	$(PY) manage.py migrate --noinput

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's Chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core; }

demo: migrate
	$(PY) manage.py load_demo
	$(PY) manage.py run_demo --host $(HOST) --port $(PORT)

test: setup chromium
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# A picture of each main screen of the demo, as its user, into docs/screenshots/ (after make demo).
screenshots: migrate chromium
	$(PY) manage.py load_demo
	$(PY) frontend/screenshots.py --out docs/screenshots

bench: migrate
	$(PY) benchmarks/tiles.py --quick

clean:
	rm -rf var frontend/static/dist
