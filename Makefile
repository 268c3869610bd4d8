# Two commands on a fresh machine:  make demo  and  make test.  Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch and torchvision first, pinned as a pair that imports together (PyPI's torchvision 0.28 fails beside the
# 2.13.0 CPU wheel: "operator torchvision::nms does not exist"); a bare requirement would pull another build
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo demo-loop demo-loop-images test test-fast lint bench schema docs clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[train,serve,deploy,monitor,score,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlops validate recipes/quickstart.yaml
	$(BIN)/mlops plan recipes/quickstart.yaml
	$(BIN)/mlops run recipes/quickstart.yaml
	@echo ""
	@echo "Next: look at the run, serve the model, sweep, or try the other recipes:"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.mlops/mlflow.db"
	@echo "  $(BIN)/mlops serve quickstart@champion      # KServe V1/V2 on 127.0.0.1:8080"
	@echo "  $(BIN)/mlops run -m recipes/quickstart.yaml model.lr=1e-3,1e-2"
	@echo "  $(BIN)/mlops sweep recipes/quickstart_sweep.yaml"
	@echo "  $(BIN)/mlops run recipes/churn_csv.yaml"

# the whole loop, no human in it: train, serve, drift, monitor, retrain, shadow, canary, promote (a few minutes)
demo-loop: $(STAMP)
	$(BIN)/python examples/demo_loop.py

# the same loop on the digits CNN: production images drift (a brighter, noisier scanner)
demo-loop-images: $(STAMP)
	$(BIN)/python examples/demo_loop.py --images

# ruff, and the import contract in pyproject.toml: layers import downwards only, no import cycles
lint: $(STAMP)
	$(BIN)/ruff check mlops tests benchmarks examples docs
	$(BIN)/lint-imports --no-cache

test: lint system-deps
	$(BIN)/pytest -n 2 --dist loadgroup -q -p no:cacheprovider --durations=25 tests

# headless Chromium renders the evaluation report in tests/integration/test_report_render.py;
# Prometheus (+ promtool) scrapes `mlops serve` in tests/integration/test_serve_prometheus.py. Debian's package
# enables a prometheus.service on :9090: it is disabled and stopped at once (the tests run their own on free ports)
system-deps:
	@command -v chromium >/dev/null || ( \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium )
	@{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || ( \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends prometheus && \
		{ $$SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || \
		  $$SUDO systemctl disable prometheus.service >/dev/null 2>&1 || true; } && \
		{ $$SUDO service prometheus stop >/dev/null 2>&1 || true; } )

# PySpark 4 needs Java 17+ (tests/integration/test_score_spark.py): Debian 12's default-jre-headless is 17
	@command -v java >/dev/null || ( \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends default-jre-headless )

test-fast: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: $(STAMP) bench-deps
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/batch.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/media.py
	$(BIN)/python benchmarks/predlog.py

# benchmarks/serve.py drives the servers with Debian's wrk (HTTP load generator, Lua-scripted POST bodies)
.PHONY: bench-deps
bench-deps:
	@command -v wrk >/dev/null || ( \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk )

schema: $(STAMP)
	$(BIN)/mlops schema --output recipe.schema.json

# docs/reference/{recipe,cli}.md from the schema and the parser, and the recipe blocks of README.md and docs/
docs: $(STAMP)
	$(BIN)/python docs/generate.py

clean:
	rm -rf .mlops .pytest_cache .ruff_cache
