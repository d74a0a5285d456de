# The two commands the README opens with: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test chaos lint format workers bench soak clean lock

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the project into $(VENV) (versions from constraints.txt) ..."
	@$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: local Kafka + mail catcher + one worker in the foreground (Ctrl-C stops all of it)
run: $(STAMP)
	@scripts/run-dev

## workers: like run, with N workers (make workers N=3)
N ?= 2
workers: $(STAMP)
	@WORKERS=$(N) scripts/run-dev

## test: the whole suite against a real Kafka broker on its own port
test: $(STAMP)
	@scripts/run-tests $(PYTEST_ARGS)

## chaos: only the scaling test (three workers, a kill -9 and a SIGTERM under load), counts printed
chaos: $(STAMP)
	@scripts/run-tests -n 0 -m chaos -s

lint: $(STAMP)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: $(STAMP)
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

## bench: the OTP pipeline against raw aiokafka and Faust echo baselines (README, Performance);
## options as make or environment variables: BENCH_REQUESTS, BENCH_RATES, BENCH_WORKERS,
## BENCH_CHANNELS, BENCH_NOTIFY, BENCH_STEP_SECONDS, BENCH_BASELINE_RATES, BENCH_PARTITIONS (bench/run.py -h)
BENCH_STAMP := $(VENV)/.bench-installed-stamp

$(BENCH_STAMP): pyproject.toml constraints.txt | $(STAMP)
	@echo "installing the bench extras into $(VENV) ..."
	@$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	@$(PY) bench/run.py

## soak: ten minutes of generate + validate at 200 req/s on one worker: RSS, table size, lag
## (not in make test; SOAK_MINUTES, SOAK_RATE change it; bench/soak.py -h)
SOAK_MINUTES ?= 10
SOAK_RATE ?= 200
soak: $(STAMP) $(BENCH_STAMP)
	@$(PY) bench/soak.py --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)

## lock: write constraints.txt from a fresh venv with the newest versions pyproject.toml allows
lock:
	@rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	@.venv-lock/bin/python -m pip install -q -e '.[dev,bench]'
	@{ head -2 constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.new
	@mv constraints.new constraints.txt && rm -rf .venv-lock
	@echo "constraints.txt updated; run make test before committing it"

clean:
	-scripts/kafka-local stop
	-scripts/s3-local stop
	rm -rf .local
