VENV ?= .venv
ARGS ?=

.PHONY: setup search test clean

$(VENV)/.pgnas-installed: pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

setup: $(VENV)/.pgnas-installed

## Set everything up and run the embedded default search (digits, small shake-shake).
search: setup
	$(VENV)/bin/pgnas search $(ARGS)

## Set everything up and run the whole test suite: one pytest-xdist worker per core (at most 8), the
## longest tests first, handed out one at a time.
test: setup
	$(VENV)/bin/python -m pytest -q -n auto --dist load --maxschedchunk 1 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
