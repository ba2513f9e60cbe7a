#!/usr/bin/env bash
# End-to-end deploy on a throw-away kind cluster: KServe (+ cert-manager) and kube-prometheus-stack,
# the two runtime images built and `kind load`ed, the models archived and copied into the claim,
# `kubectl apply -k k8s/`, wait for every InferenceService to be Ready, predict over v1 and v2 REST,
# scrape /metrics, tear down.
#
# NOT run by CI or `make test`: it needs a Docker engine, kind and internet access (charts and images
# from their registries), none of which CI has. tests/deploy/test_deploy_docs.py only checks it with
# `bash -n` and shellcheck. Step by step, the same as docs/deploy.md.
#
#   bash scripts/deploy/kind_e2e.sh           # or: make kind-e2e
#   KEEP=1 bash scripts/deploy/kind_e2e.sh    # leave the cluster up afterwards (kind delete cluster --name ...)
#
# Needs: docker (engine running), kind, and the project's set-up (scripts/setup.sh: .venv, helm and
# kubectl in .tools/bin). Versions are pinned below; override them through the environment.
set -euo pipefail

CLUSTER=${CLUSTER:-image-classifier-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.32.2}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.16.2}
KSERVE_VERSION=${KSERVE_VERSION:-v0.20.0}              # the CRDs the chart is validated against
PROM_STACK_VERSION=${PROM_STACK_VERSION:-79.7.1}      # kube-prometheus-stack chart
NAMESPACE="image-classifier"
KEEP=${KEEP:-0}
TIMEOUT=${TIMEOUT:-600s}

here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
PY=${PY:-.venv/bin/python}
PATH="$here/.tools/bin:$PATH"   # the project's helm and kubectl first

say()  { printf '\n[kind-e2e] %s\n' "$*"; }
fail() { printf '[kind-e2e] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || fail "$tool not found (see docs/deploy.md, 'kind end to end')"
done
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"
[ -x "$PY" ] || fail "$PY not found: run scripts/setup.sh (make setup) first"

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then
    say "KEEP=1: cluster $CLUSTER left running (kind delete cluster --name $CLUSTER)"
  else
    say "deleting cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" || true
  fi
}

say "1/9 kind cluster $CLUSTER ($KIND_NODE_IMAGE)"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" && fail "cluster $CLUSTER exists: delete it or set CLUSTER"
kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER"

say "2/9 cert-manager $CERT_MANAGER_VERSION (KServe's webhook certificates)"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager wait deployment --all --for=condition=Available --timeout="$TIMEOUT"

say "3/9 kube-prometheus-stack $PROM_STACK_VERSION (Prometheus selects every PodMonitor/rule; Grafana loads grafana_dashboard=1 ConfigMaps)"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack --version "$PROM_STACK_VERSION" \
  --namespace monitoring --create-namespace --wait --timeout "$TIMEOUT" \
  --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false \
  --set grafana.sidecar.dashboards.enabled=true \
  --set grafana.sidecar.dashboards.label=grafana_dashboard \
  --set grafana.sidecar.dashboards.searchNamespace=ALL

say "4/9 KServe $KSERVE_VERSION, Standard mode (Deployments + HPA, no Knative)"
helm install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "$KSERVE_VERSION" \
  --namespace kserve --create-namespace --wait
helm install kserve-resources oci://ghcr.io/kserve/charts/kserve-resources --version "$KSERVE_VERSION" --namespace kserve \
  --set kserve.controller.deploymentMode=Standard --wait --timeout "$TIMEOUT"

say "5/9 runtime images (scripts/deploy/images.py: names from values.yaml) into the kind node"
"$PY" -m scripts.deploy.images --build
while read -r image; do
  kind load docker-image --name "$CLUSTER" "$image"
done < <("$PY" -m scripts.deploy.images --names)

say "6/9 one storage layout per model (scripts/serve/archive.py) in build/k8s/"
make runs/fashion-mnist/model.pt runs/imagenet/model.pt
for model in fashion-mnist imagenet; do
  rm -rf "build/k8s/$model"
  "$PY" -m scripts.serve.archive --checkpoint "runs/$model/model.pt" --model-name "$model" --out "build/k8s/$model"
done

say "7/9 kubectl apply -k k8s/, then the layouts into the claim through the upload pod"
kubectl apply -k k8s/
kubectl -n "$NAMESPACE" wait pod/image-classifier-model-upload --for=condition=Ready --timeout="$TIMEOUT"
for model in fashion-mnist imagenet; do
  kubectl cp "build/k8s/$model" "$NAMESPACE/image-classifier-model-upload:/models/$model"
done
kubectl -n "$NAMESPACE" delete pod image-classifier-model-upload
# Predictor pods that started before the copy wait in their storage initializer's back-off: restart them.
kubectl -n "$NAMESPACE" delete pod -l app.kubernetes.io/component=predictor --ignore-not-found

say "8/9 waiting for the InferenceServices to be Ready"
kubectl -n "$NAMESPACE" wait inferenceservice --all --for=condition=Ready --timeout="$TIMEOUT"
kubectl -n "$NAMESPACE" get inferenceservices

say "9/9 predict (v1 and v2 REST through each predictor Service) and scrape /metrics"
image=build/k8s/chelsea.png
"$PY" -c "from PIL import Image; from skimage import data; Image.fromarray(data.chelsea()).save('$image')"
port=18080
for model in fashion-mnist imagenet; do
  kubectl -n "$NAMESPACE" port-forward "svc/$model-predictor" "$port:80" >/dev/null &
  pids+=("$!")
  for _ in $(seq 30); do curl -s -o /dev/null "http://127.0.0.1:$port/ping" && break; sleep 1; done
  "$PY" -m scripts.client.predict "$image" --model "$model" --protocol v1 --url "http://127.0.0.1:$port"
  "$PY" -m scripts.client.predict "$image" --model "$model" --protocol v2 --url "http://127.0.0.1:$port"
  port=$((port + 1))
done
pod=$(kubectl -n "$NAMESPACE" get pod -l image-classifier/model=fashion-mnist -o jsonpath='{.items[0].metadata.name}')
kubectl -n "$NAMESPACE" port-forward "pod/$pod" 18082:8082 >/dev/null &
pids+=("$!")
sleep 3
curl -sf http://127.0.0.1:18082/metrics | grep -m1 '^ts_inference_requests_total' ||
  fail "no ts_inference_requests_total on the model pod's metrics port"

say "end to end: OK"
