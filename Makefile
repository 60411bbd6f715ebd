# ginkgo-livedata: `make demo` runs the system, `make test` runs the tests.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ONLY ?=
ARGS ?=

.PHONY: demo test test-unit lint bench soak install clean

$(STAMP): pyproject.toml deploy/bootstrap.sh
	@bash deploy/bootstrap.sh

install: $(STAMP)

## demo: embedded broker + sim feeder + the three daemons + a live view (Ctrl-C stops)
demo: $(STAMP)
	$(BIN)/livedata demo $(ARGS)

## test: every tier (unit, service on a real broker, end-to-end with the daemons as processes)
test: $(STAMP)
	$(BIN)/pytest $(ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(ARGS)

## lint: import contracts (pyproject.toml [tool.importlinter]), ruff (incl. ASYNC), mypy --strict
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check shared services tests
	$(BIN)/mypy

## bench: throughput/latency figures against a raw-aiokafka baseline (ONLY=name, ARGS=--quick)
bench: $(STAMP)
	$(BIN)/python -m tests.bench $(if $(ONLY),--only $(ONLY)) $(ARGS)

## soak: the full market for 30 minutes on Apache Kafka, each daemon's RSS slope (ARGS=--minutes 5);
## its figures are merged into bench/results.json
soak: $(STAMP)
	$(BIN)/python -m tests.bench --only soak --broker kafka --merge $(ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
