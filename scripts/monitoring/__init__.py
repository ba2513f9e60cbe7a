"""Monitoring as code: recording rules and alerts from one Python source
(rules.py), a Grafana dashboard built with grafana-foundation-sdk (dashboard.py), a local
Prometheus for `make monitor` and the tests (prometheus.py), a bounded load generator (load.py)
and a PNG rendering of the dashboard's main panels from live Prometheus data (render.py).
`python -m scripts.monitoring.generate` writes the chart's generated files."""
