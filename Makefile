# Developer entry points. Every target that runs the project's Python first runs `setup`, which
# is idempotent and takes well under a second when everything is already there.
#   make test                     lint, type-check and the whole test suite (what CI runs)
#   make demo [APP=fastapi] [PORT=8000]
#   make bench | lint | clean | distclean

VENV := .venv
PY := $(VENV)/bin/python
APP ?= fastapi
PORT ?= 8000
# Only folders that exist: git does not keep empty ones, and ruff fails on a missing path.
LINT_PATHS := $(wildcard replay_middleware tests examples benchmarks hatch_build.py)

.PHONY: setup lint test demo bench clean distclean

setup:
	bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# The inspector needs its token (docs/inspector.md): a fresh one per run unless
# REPLAY_INSPECTOR_TOKEN is set, passed to the example (every example reads REPLAY_*).
demo: setup
	@REPLAY_INSPECTOR_TOKEN="$${REPLAY_INSPECTOR_TOKEN:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(32))')}"; \
	export REPLAY_INSPECTOR_TOKEN; \
	echo "Inspector: http://127.0.0.1:$(PORT)$${REPLAY_PREFIX:-/_replay}/inspect?token=$$REPLAY_INSPECTOR_TOKEN"; \
	case "$(APP)" in \
	  fastapi) \
	    echo "Open http://127.0.0.1:$(PORT)/"; \
	    exec $(PY) -m uvicorn examples.fastapi_app.app:app --host 127.0.0.1 --port $(PORT) ;; \
	  flask) \
	    exec $(PY) -m examples.flask_app $(PORT) ;; \
	  django) \
	    exec $(PY) -m examples.django_app $(PORT) ;; \
	  *) echo "make demo: unknown APP=$(APP) (known: fastapi, flask, django)" >&2; exit 2 ;; \
	esac

bench: setup
	bash scripts/bench-setup.sh
	$(PY) benchmarks/run.py

# Build and test leftovers; keeps .venv and the fetched SDK.
clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage htmlcov
	rm -rf *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also what setup.sh makes: the next `make setup` starts from scratch.
distclean: clean
	rm -rf $(VENV) .cache static/vendor
