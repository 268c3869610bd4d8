# Two commands on a fresh machine:  make demo  and  make test.  Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch and torchvision first, pinned as a pair that imports together (PyPI's torchvision 0.28 fails beside the
# 2.13.0 CPU wheel: "operator torchvision::nms does not exist"); a bare requirement would pull another build
# Where pip finds that pair is pip's own configuration; for PyTorch's CPU-only build elsewhere, e.g.:
#   make install TORCH="torch==2.14.1+cpu torchvision==0.29.1+cpu --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# Every other package of every extra, pinned (`make lock` writes it). torch, torchvision and the CUDA libraries a
# PyPI torch declares stay out of it: which build of torch (CPU or CUDA) is the machine's choice, made by TORCH
LOCK   := requirements.lock
EXTRAS := train,serve,deploy,monitor,score,dev
comma  := ,
# a PyPI torch 2.14 declares these (CUDA 13, Linux x86_64): the lock never installs them
NO_EMIT := torch torchvision triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti \
	nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver \
	nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx

.PHONY: install lock demo demo-loop demo-loop-images test test-fast lint bench schema docs clean system-deps

install: $(STAMP)

# torch first, its own dependencies (sympy, networkx, ...) held to the lock's versions; then the lock and mlops
# itself in one resolve, so nothing moves off a pin
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH) -c $(LOCK)
	$(BIN)/pip install --quiet -r $(LOCK) -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Re-resolve the lock with uv: the versions it pins now are kept where they still fit (UPGRADE=--upgrade moves
# them all). Universal: one file for Python 3.11-3.14 and any platform, markers where they differ. torch is
# resolved at TORCH's version (so its dependencies are pinned) and left out with the CUDA packages (NO_EMIT)
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	printf '%s\n' $(filter torch%,$(TORCH)) > $(VENV)/torch-pins.txt
	$(BIN)/uv pip compile pyproject.toml $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) --universal \
		--python-version 3.11 -c $(VENV)/torch-pins.txt $(foreach p,$(NO_EMIT),--no-emit-package $(p)) \
		--custom-compile-command "make lock" --quiet $(UPGRADE) -o $(LOCK)
	@# nvidia-ml-py is NVML's Python binding (pure Python, no CUDA): GPU metrics of `mlops serve` and of training runs
	@! grep -E '^((torch|torchvision|triton)==|(nvidia|cuda)-)' $(LOCK) | grep -v '^nvidia-ml-py==' || { echo "$(LOCK) pins a CUDA package: add it to NO_EMIT"; exit 1; }

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

# the whole loop, no human in it: train, serve, drift, monitor, retrain, shadow, canary, promote (a few minutes).
# ARGS go to examples/demo_loop.py; on shared infrastructure, two replicas on one prediction log in PostgreSQL
# (an existing, empty database: createdb -h 127.0.0.1 -U postgres mlops_loop):
#   make demo-loop ARGS="--log postgresql://postgres@127.0.0.1:5432/mlops_loop --replicas 2"
demo-loop: $(STAMP)
	$(BIN)/python examples/demo_loop.py $(ARGS)

# the same loop on the digits CNN: production images drift (a brighter, noisier scanner)
demo-loop-images: $(STAMP)
	$(BIN)/python examples/demo_loop.py --images

# ruff, and the import contract in pyproject.toml: layers import downwards only, no import cycles
lint: $(STAMP)
	$(BIN)/ruff check mlops tests benchmarks examples docs
	$(BIN)/lint-imports --no-cache

test: lint system-deps label-studio
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

# Label Studio (tests/integration/test_label_studio.py: `mlops label` export and import against a real server)
# lives in its own venv: it pins Django and many packages of its own, so it is never a dependency of mlops.
# The test finds it at .venv-labelstudio/bin/label-studio (or the env MLOPS_LABEL_STUDIO)
LABEL_STUDIO_VENV := .venv-labelstudio
LABEL_STUDIO      ?= label-studio==1.23.2

.PHONY: label-studio
label-studio: $(LABEL_STUDIO_VENV)/.installed

$(LABEL_STUDIO_VENV)/.installed:
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/pip install --quiet --upgrade pip
	$(LABEL_STUDIO_VENV)/bin/pip install --quiet "$(LABEL_STUDIO)"
	touch $@

test-fast: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: $(STAMP) bench-deps
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/batching.py
	$(BIN)/python benchmarks/batch.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/media.py
	$(BIN)/python benchmarks/predlog.py
	$(BIN)/python benchmarks/predlog_stores.py
	$(BIN)/python benchmarks/monitor_windows.py
	$(BIN)/python benchmarks/sweep_startup.py
	$(BIN)/python benchmarks/light.py
	$(BIN)/python benchmarks/run_overhead.py
	$(BIN)/python benchmarks/bundle.py

# benchmarks/serve.py drives the servers with Debian's wrk (HTTP load generator, Lua-scripted POST bodies), and
# runs its peers LitServe and BentoML (benchmarks/peers.py) from their own venv, never mlops's dependencies
PEERS_VENV := .venv-peers

.PHONY: bench-deps
bench-deps: $(PEERS_VENV)/.installed
	@command -v wrk >/dev/null || ( \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk )

$(PEERS_VENV)/.installed: benchmarks/peers-requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet -r benchmarks/peers-requirements.txt
	touch $@

schema: $(STAMP)
	$(BIN)/mlops schema --output recipe.schema.json

# docs/reference/{recipe,cli}.md from the schema and the parser, and the recipe blocks of README.md and docs/
docs: $(STAMP)
	$(BIN)/python docs/generate.py

clean:
	rm -rf .mlops .pytest_cache .ruff_cache
