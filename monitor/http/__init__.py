"""taskmon's HTTP surface: the REST API under /api/v1 (and, on the same app, the dashboard and /metrics)."""
