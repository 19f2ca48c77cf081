"""`sparsetel serve`'s entry: one decoder service in this process, or `workers` of them as
processes sharing the DATA stream (`cloud.ingest.workers`), and the stats they print."""

from __future__ import annotations

import json

from .service import ServeConfig, run_service_stats
from .workers import run_workers

__all__ = ["run_service"]


def run_service(cfg: ServeConfig, print_json: bool = True) -> int:
    """`sparsetel serve`: run until SIGINT/SIGTERM, `stop_after_records` or the idle timeout;
    then print the stats on stdout, as one JSON object when `print_json` (nothing else goes to
    stdout), else as one summary line. 0 on a clean stop, 1 when it cannot start or the idle
    timeout came before `stop_after_records` were stored. With `workers` > 1, the workers of
    `cloud.ingest.workers` do the work."""
    if cfg.workers > 1:
        return run_workers(cfg, print_json)
    code, stats = run_service_stats(cfg)
    if not stats:
        return code
    if print_json:
        print(json.dumps(stats, sort_keys=True), flush=True)
    else:
        print(
            f"sparsetel serve: stored {stats['records_stored']} measurements in "
            f"{stats['frames_ok']} frames; {stats['duplicates']} duplicates, "
            f"rejects {stats['rejects'] or 0}, gaps {stats['gaps'] or 0}",
            flush=True,
        )
    return code
