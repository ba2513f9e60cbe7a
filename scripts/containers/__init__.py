"""Container images and pods on this machine: the engine (podman or docker), base images made from
Debian's packages, and the chart's predictor pods run from their images exactly as declared."""
