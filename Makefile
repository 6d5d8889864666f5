# mmfleet: `make demo` runs the fleet on the built-in simulator; `make test` runs the test suite.
# Each target sets up what it needs: a virtual environment with the pinned dependencies.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench sim clean bytecode prometheus chromium postgresql redis

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# The project's modules compiled ahead (only the changed ones): every agent is a process of its own,
# and where PYTHONDONTWRITEBYTECODE is set (this development box) each one compiled them again at
# import, some 0.055 of its 0.24 CPU-s of our imports, 2.7 CPU-s of a 50-symbol start.
bytecode: $(STAMP)
	@$(PY) -m compileall -q agents controller fleet journal simulate

demo: $(STAMP) bytecode
	$(PY) -m fleet demo

# The metrics tests start a real Prometheus, and the alert tests a real Alertmanager behind it; install
# Debian's packages when they are missing.
prometheus:
	@{ command -v prometheus && command -v prometheus-alertmanager && command -v amtool; } >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus and prometheus-alertmanager packages (used by the metrics and alert tests)"; \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus \
	    prometheus-alertmanager >/dev/null; }

# The console's browser test drives Debian's chromium through chromium-driver (never a downloaded browser).
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium and chromium-driver packages (used by the console's browser test)"; \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# The journal's tests start a real PostgreSQL (initdb into a temporary directory); install Debian's package when missing.
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  echo "installing Debian's postgresql package (used by the journal's tests)"; \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

# The GCS fault-tolerance test keeps the Ray head's GCS tables in a real Redis; install Debian's package when missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian's redis-server package (used by the GCS fault-tolerance test)"; \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# Two pytest-xdist workers: most tests wait on sockets and timers, not the CPU. Each takes whole modules,
# and the tests that start Ray share one worker and run one after another (tests/conftest.py).
test: $(STAMP) bytecode prometheus chromium postgresql redis
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -n 2 --durations=15

bench: $(STAMP) bytecode
	@for b in bench/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

sim: $(STAMP) bytecode
	$(PY) -m fleet sim

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find agents controller fleet journal simulate bench tests -name __pycache__ -type d -prune -exec rm -rf {} +
