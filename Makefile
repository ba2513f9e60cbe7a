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

test: setup images storage-initializer cluster-build kserve-build node-prometheus-build prometheus-operator-build jaeger-build  ## run the test suite (unit + real TorchServe + the chart's pods from their images + a real control plane with KServe)
	$(PY) -m scripts.client.grpc_stubs  # generated here, never by the tests (they write only to temporary folders)
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
	$(PY) -m scripts.serve.archive --checkpoint $(CKPT) --model-name $(MODEL) --out $(STORE)
	$(PY) -m scripts.serve.archive --checkpoint $(IMAGENET_CKPT) --model-name imagenet --out $(STORE)

serve: setup $(CONFIG)  ## start TorchServe in the background; returns when workers are READY
	$(PY) -m scripts.serve start --store $(STORE)

kserve: setup $(CONFIG)  ## KServe-native runtime over the same .mar files: v1/v2 REST :8085, gRPC :8086, /metrics :8087 (foreground)
	$(PY) -m scripts.runtime --model-store $(STORE)/model-store $(KSERVE_ARGS)

stop: setup  ## stop the TorchServe started by `make serve`
	$(PY) -m scripts.serve stop

status: setup  ## is `make serve`'s TorchServe ready?
	$(PY) -m scripts.serve status

predict: setup  ## top-k for IMAGE=path through the running server
	@test -n "$(IMAGE)" || { echo "usage: make predict IMAGE=path/to/image [MODEL=$(MODEL)]" >&2; exit 2; }
	$(PY) -m scripts.client.predict --model $(MODEL) $(IMAGE)

ui: setup $(CONFIG)  ## the try-it page on 127.0.0.1:8090 for `make serve`'s models (UI_ARGS="--api URL [--protocol v1]")
	@echo "ui: the page calls the TorchServe of 'make serve' (start it first); Ctrl-C stops the page"
	$(PY) -m scripts.ui.server --store $(STORE) $(UI_ARGS)

# --- Reproducible pipeline: dvc.yaml's stages with params.yaml; their `python` is the virtualenv's --
.PHONY: pipeline
pipeline: setup  ## dvc repro: rerun the stages whose code, data or params changed → runs/pipeline, build/pipeline
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m dvc repro $(DVC_ARGS)

# --- Recipes: measured in docs/results.md ----------------------------------------------------
.PHONY: recipe-cpu recipe-transfer recipe-gpu
RECIPE_CPU_ARGS ?= --width 16 --depth 2 --epochs 10 --augment --label-smoothing 0.1 --flip-tta
TRANSFER_ARGS ?= --arch efficientnet_lite --image-size 64 --channels 3 --train-per-class 300 --epochs 10 \
                 --batch-size 64 --sched cosine --lr 3e-3

recipe-cpu: setup  ## Fashion-MNIST ≥ 93% test accuracy on 2 CPU cores in ≤ 10 min → runs/recipe-cpu
	$(PY) -m model.train --data-dir $(DATA) --output-dir runs/recipe-cpu $(RECIPE_CPU_ARGS) $(TRAIN_ARGS)

# WRN-16-8, one-cycle SGD, shift + flip + random erasing, flip TTA, bf16 autocast, channels_last.
# Not run yet: no GPU was lent to the sessions so far (docs/results.md). A GPU machine has no
# internet: carry data/FashionMNIST; RECIPE_PY=python3 uses its own PyTorch instead of .venv.
RECIPE_GPU_ARGS ?= --arch wide_resnet --wrn-depth 16 --widen 8 --epochs 40 --batch-size 256 --opt sgd --lr 0.1 \
                   --sched onecycle --augment --random-erasing 0.5 --label-smoothing 0.1 --flip-tta \
                   --amp --channels-last --device cuda
RECIPE_PY ?= $(PY)

recipe-gpu:  ## Fashion-MNIST ≥ 96% on one GPU: WRN-16-8 (see RECIPE_GPU_ARGS) → runs/recipe-gpu
	$(RECIPE_PY) -m model.train --data-dir $(DATA) --output-dir runs/recipe-gpu $(RECIPE_GPU_ARGS) $(TRAIN_ARGS)

recipe-transfer: setup  ## EfficientNet-Lite0 on 3,000 Fashion-MNIST images: ImageNet two-stage fine-tuning vs from scratch
	$(PY) -m model.train --data-dir $(DATA) --output-dir runs/transfer-pretrained $(TRANSFER_ARGS) \
	    --pretrained --freeze-epochs 2 --backbone-lr-scale 0.1 $(TRAIN_ARGS)
	$(PY) -m model.train --data-dir $(DATA) --output-dir runs/transfer-scratch $(TRANSFER_ARGS) $(TRAIN_ARGS)

clean:  ## remove build outputs and runs (keeps the virtualenv and data)
	rm -rf build runs

# --- Kubernetes: the Helm chart is the source, k8s/ is rendered from it ------------------
.PHONY: k8s k8s-check k8s-validate
HELM := .tools/bin/helm

k8s: setup  ## render charts/image-classifier into k8s/ (plain manifests + kustomization.yaml)
	$(PY) -m scripts.deploy.k8s_render

k8s-check: setup  ## fail if k8s/ is not up to date with the chart
	$(PY) -m scripts.deploy.k8s_render --check

k8s-validate: setup  ## helm lint --strict + strict offline schema validation of k8s/ (no cluster)
	$(HELM) lint --strict charts/image-classifier
	$(PY) -m scripts.deploy.k8s_validate k8s/*.yaml

.PHONY: images modelcar kind-e2e
# Here no image registry is reachable: the base image is built from Debian's packages and torch comes
# from PyPI (--no-image-registry). With a registry: IMAGES_ARGS="--push" (python:3.11-slim base,
# PyTorch's CPU wheels), IMAGES_ARGS="--gpu --push" for the GPU tags.
IMAGES_ARGS ?= --no-image-registry
images: setup  ## build both runtime images under values.yaml's names (podman, else docker; layers cached)
	$(PY) -m scripts.deploy.images --build $(IMAGES_ARGS)

# One model's storage layout as a KServe modelcar image (storageUri oci://...): MODEL=fashion-mnist|imagenet.
MODELCAR_ARGS ?= --no-image-registry
modelcar: setup  ## package MODEL's checkpoint (runs/$(MODEL)/model.pt) as a modelcar image (MODELCAR_ARGS="--push")
	$(PY) -m scripts.serve.archive --checkpoint runs/$(MODEL)/model.pt --model-name $(MODEL) --out build/modelcar/$(MODEL)
	$(PY) -m scripts.deploy.modelcar build/modelcar/$(MODEL) --model $(MODEL) $(MODELCAR_ARGS)

kind-e2e: setup  ## whole deploy on a throw-away kind cluster (needs Docker, kind, internet; never run by CI): docs/deploy.md
	bash scripts/deploy/kind_e2e.sh

# --- Monitoring: rules, alerts and dashboard from scripts/monitoring ----------------------
.PHONY: monitor traces jaeger-build tracing-cost
monitor: setup $(CONFIG)  ## Prometheus + bounded load on the local TorchServe (make serve, else started here) → PNG of the panels
	$(PY) -m scripts.monitoring.monitor --store $(STORE) --data-dir $(DATA) $(MONITOR_ARGS)

traces: setup  ## Jaeger on 127.0.0.1 (OTLP :4317 gRPC, :4318 HTTP; UI :16686); then OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make kserve
	$(PY) -m scripts.monitoring.jaeger $(TRACES_ARGS)

jaeger-build: setup  ## Jaeger v2 (the tracing backend of `make traces` and the tracing tests) from its Go module into ~/.cache (once: minutes)
	$(PY) -m scripts.monitoring.jaeger --build-only

tracing-cost: setup $(CKPT)  ## the KServe-native runtime with traces off, all sampled and 1 in 10, sending to Jaeger: req/s, p50/p99, CPU → docs/bench/tracing-cost.{md,json}
	$(PY) -m scripts.harness.bench.tracing_cost --checkpoint $(CKPT) --data-dir $(DATA) --out docs/bench

# --- Reliability: bad inputs, held load, overload, process fault, rollout, on both runtimes --
.PHONY: reliability
reliability: setup $(CKPT)  ## full reliability suite on TorchServe and the KServe-native runtime (~8 min) → build/reliability/results.{md,json}
	$(PY) -m scripts.harness.reliability --checkpoint $(CKPT) --data-dir $(DATA) --out build/reliability $(RELIABILITY_ARGS)

# --- Benchmarks: every serving path, same model and images, one run --------------------
.PHONY: bench bench-gpu abuse
BENCH_MODELS ?= fashion-mnist imagenet resnet50
BENCH_REPEATS ?= 3
bench: setup $(CKPT)  ## every serving path and the FastAPI baseline for each of $(BENCH_MODELS), interleaved rounds, with the in-process limit → docs/bench/bench*.{md,json,png}
	for m in $(BENCH_MODELS); do \
	  $(PY) -m scripts.harness.bench --bench-model $$m --checkpoint $(CKPT) --data-dir $(DATA) --repeats $(BENCH_REPEATS) \
	    --limit --out docs/bench $(BENCH_ARGS) || exit 1; \
	done

abuse: setup $(CKPT)  ## huge bodies, 64 max-size requests, a burst of 400, stalled uploads against both runtimes: answers and peak RSS → docs/bench/abuse.{md,json}
	$(PY) -m scripts.harness.bench.abuse --checkpoint $(CKPT) --out docs/bench

bench-gpu: setup  ## on a GPU machine: stock TorchServe handler vs our GPU path vs raw fp16 forward, ResNet-50 batch 64 → docs/bench/gpu.{md,json}
	$(PY) -m scripts.harness.bench.gpu --out docs/bench $(BENCH_ARGS)

# --- Real Kubernetes, tier 1 (control plane built from upstream source): scripts/cluster ---------
.PHONY: cluster cluster-build cluster-stop cluster-status
cluster-build: setup  ## build etcd + kube-apiserver/controller-manager/scheduler (one binary, Kubernetes 1.34) into ~/.cache (once: many minutes)
	$(PY) -m scripts.cluster build $(CLUSTER_BUILD_ARGS)

cluster: setup  ## start the local control plane on 127.0.0.1:6443 (kubeconfig: build/cluster/kubeconfig; CLUSTER_ARGS=--free-ports)
	$(PY) -m scripts.cluster start $(CLUSTER_ARGS)

cluster-stop: setup  ## stop the control plane of `make cluster` (CLUSTER_STOP_ARGS=--purge also drops its data)
	$(PY) -m scripts.cluster stop $(CLUSTER_STOP_ARGS)

cluster-status: setup  ## is `make cluster`'s control plane healthy? (PIDs, ports, memory)
	$(PY) -m scripts.cluster status

# --- Real Kubernetes, tier 2 (KServe's controller manager built from its module): scripts/cluster/kserve.py
.PHONY: kserve-build kserve-start kserve-stop storage-initializer
kserve-build: setup  ## build KServe v0.20.0's controller manager from its Go module into ~/.cache (once: minutes)
	$(PY) -m scripts.cluster kserve-build $(KSERVE_BUILD_ARGS)

storage-initializer: setup  ## KServe v0.20.0's storage-initializer image from PyPI's kserve-storage (podman; cached by its recipe)
	$(PY) -m scripts.cluster.storage_initializer --build

kserve-start: setup  ## KServe's manager (CRDs, inferenceservice-config, webhooks on loopback) into `make cluster`'s control plane
	$(PY) -m scripts.cluster kserve-start

kserve-stop: setup  ## stop KServe's manager of `make kserve-start` and remove its webhook configurations
	$(PY) -m scripts.cluster kserve-stop

# --- Real Kubernetes, tier 3 (a Node: Debian's containerd + runc + CNI, the kubelet): scripts/cluster/node.py
.PHONY: node-start node-stop node-status node-import node-test node-prometheus-build prometheus-operator-build
node-start: setup  ## containerd (build/cluster/containerd) + the kubelet registered with `make cluster`'s control plane
	$(PY) -m scripts.cluster.node start

node-stop: setup  ## stop the kubelet and containerd of `make node-start` (unmounts, restores the kernel tunables)
	$(PY) -m scripts.cluster.node stop

node-status: setup  ## kubelet and containerd PIDs and the Node's Ready condition
	$(PY) -m scripts.cluster.node status

node-import: setup  ## podman images -> containerd (IMAGES="registry.example.com/image-classifier/torchserve:0.1.0 ...")
	$(PY) -m scripts.cluster.node import $(IMAGES)

node-test: setup images storage-initializer cluster-build kserve-build node-prometheus-build prometheus-operator-build jaeger-build  ## tier 3 tests: a Node, our images in containerd, the chart's InferenceServices Ready and predicting
	$(PY) -m pytest tests/cluster/test_cluster_node.py -m integration -v -s

prometheus-operator-build: setup  ## prometheus-operator v0.93.0 + the promtool of the Prometheus it links, from their Go modules into ~/.cache (once: ~8 min)
	$(PY) -m scripts.cluster.prometheus_operator build $(PROMETHEUS_OPERATOR_BUILD_ARGS)

node-prometheus-build: setup  ## upstream Prometheus with kubernetes_sd_configs (Debian's has none) from its Go module into ~/.cache (once: minutes)
	$(PY) -m scripts.cluster.node prometheus-build
