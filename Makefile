# Two entry points: `make demo` (the embedded default run) and `make test`.
# Each creates .venv and installs the project if needed.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# The embedded default run, then the leaderboard with the new run next to the reported rows.
demo: $(STAMP)
	@run=outputs/demo/$$(date +%Y-%m-%d_%H-%M-%S); \
	$(VENV)/bin/fedvid run hydra.run.dir=$$run && \
	$(VENV)/bin/fedvid leaderboard build $$run leaderboard/reported out=$$run/leaderboard

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q --durations=15 -n 2

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
