# Readiness of TorchServe 0.12 (exec probe; exit 0 = ready). Ready means: every model of
# config.properties' model_snapshot has a READY worker, read from the loopback management API.
# /ping answers "Healthy" while workers are still loading, and /v2/health/ready exists only with
# a service_envelope (404 in the native configuration), so neither says "models loaded".
import json, os, sys, urllib.request
config = sys.argv[1] if len(sys.argv) > 1 else "/mnt/models/config/config.properties"
with open(config) as f:
    snapshot = next(line.split("=", 1)[1] for line in f if line.startswith("model_snapshot="))
base = os.environ.get("TS_MANAGEMENT_ADDRESS", "http://127.0.0.1:8081")
for name, versions in json.loads(snapshot)["models"].items():
    for version in versions:
        with urllib.request.urlopen(f"{base}/models/{name}/{version}", timeout=3) as answer:
            workers = [w for d in json.load(answer) for w in d.get("workers", [])]
        if not any(w.get("status") == "READY" for w in workers):
            sys.exit(f"{name} {version}: no READY worker yet")
