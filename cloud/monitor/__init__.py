"""Watching the fleet: `sparsetel monitor` (dashboard, page, metrics), `status` and `query`."""
