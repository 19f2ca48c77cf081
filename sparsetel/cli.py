"""The `sparsetel` command line: one entry point, a subcommand per job.

Nothing heavy is imported at module import time: `sparsetel edge` must run on a box with
only `sparsetel[edge]` installed (no torch, no pandas), so each subcommand imports what it
needs when it runs. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main"]

log = logging.getLogger("sparsetel")

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
MULTILABEL_K = 128  # `benchmark --suite multilabel`'s codebook without --K


def _add_data_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        help="a KPI CSV file or a folder of CSVs (one file = one session)",
    )
    parser.add_argument(
        "--kpis", help="comma-separated KPI column names (spaces inside names allowed)"
    )
    parser.add_argument("--target", help="the KPI column to predict")
    parser.add_argument(
        "--horizon", type=int, help="predict the target this many measurements ahead"
    )
    parser.add_argument(
        "--sentinels",
        help="values that mean 'missing', comma-separated, optionally per column "
        "(e.g. '2147483647,RSRP=-200'); default: the int32 extremes",
    )


def _add_store_arg(parser: argparse.ArgumentParser) -> None:
    """--db for the commands that read the decoder's store (only `serve` creates one)."""
    parser.add_argument(
        "--db",
        required=True,
        help="the store `sparsetel serve` writes: an existing SQLite file or a postgresql:// URL",
    )


def _add_window_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds for the rates (default 60)"
    )


def _add_broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default=None,
        help=f"broker URL mqtt://host:port or mqtts://host:port (default {DEFAULT_BROKER}); "
        "username and password come from SPARSETEL_MQTT_USERNAME / SPARSETEL_MQTT_PASSWORD",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (flags override it)")


def _edge_list(text: str) -> list[str]:
    """``"e1, e2"`` -> ["e1", "e2"]; the ids are checked by the command."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsetel", description="Sparse discrete codes for network KPI telemetry."
    )
    parser.add_argument("--version", action="version", version=f"sparsetel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an SDLGM codec and KPI predictor on KPI CSVs")
    _add_data_args(p)
    p.add_argument("--L", type=int, default=4, help="at most L codes per measurement")
    p.add_argument("--K", type=int, help="codebook size (memoryless codec; default 128)")
    p.add_argument("--window", type=int, default=8, help="predictor window W (measurements)")
    p.add_argument("--steps", type=int, help="training steps (default: the model's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small, fast model (demo, tests)")
    p.add_argument(
        "--objective",
        choices=("generative", "discriminative", "conditional"),
        help="what shapes the codes: KPIs and target (generative, the default), the target "
        "only (discriminative), or the target through q(z | x, y) (conditional)",
    )
    p.add_argument(
        "--sparsity",
        choices=("fixed", "adaptive"),
        help="fixed: L code slots throughout (default); adaptive: start with --slots open "
        "gates and tighten to L while validation holds",
    )
    p.add_argument("--slots", type=int, help="code slots of the adaptive schedule (default 4 L)")
    p.add_argument(
        "--code-cost",
        type=float,
        help="nats charged per sent code in training (default 0): above 0, gates close where "
        "a code buys less, so the codes per measurement adapt",
    )
    p.add_argument(
        "--codec",
        choices=("temporal", "memoryless"),
        help="temporal (default): each measurement coded against the one before, context "
        "across frames; memoryless: each measurement on its own (the ONNX encoder; --K, "
        "--objective, --sparsity, --slots and --code-cost apply to it only)",
    )
    p.add_argument(
        "--snr-db",
        type=float,
        help="temporal codec: the fidelity aimed at in dB (default: the one validation chose "
        "for L, 10 + 7.5 log2 L)",
    )
    p.add_argument(
        "--key-interval",
        type=int,
        help="temporal codec: measurements per key measurement in training (default 50)",
    )
    p.add_argument(
        "--lossless",
        action="store_true",
        default=None,
        help="temporal codec without loss: every move sent (words past L are counted escape "
        "words), KPIs on a native grid come back exactly; instead of --snr-db",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")

    p = sub.add_parser("export", help="export a run's encoder to ONNX with its manifest")
    p.add_argument("run", type=Path, help="run directory made by `sparsetel train`")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser("evaluate", help="evaluate a run on sessions it never saw")
    p.add_argument("--model", type=Path, required=True, help="run directory")
    _add_data_args(p)
    p.add_argument(
        "--level-column",
        help="column whose tertiles (low, mid, high) split the codes-used report "
        "(default: the target)",
    )
    p.add_argument(
        "--state-column",
        help="column of hidden state labels (the simulator's 'state'): codes used per state "
        "and how well the codes recover the states",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("benchmark", help="compare every codec on the same split and seeds")
    _add_data_args(p, required=False)
    p.add_argument(
        "--task",
        choices=("codecs", "multilabel"),
        default="codecs",
        help="codecs: every codec on --data (default); multilabel: the paper's supervised "
        "SDLGMs against logistic, softmax and sparsemax on --datasets (no --data needed)",
    )
    p.add_argument("--datasets", default="yeast,simulator", help="multilabel data sets")
    p.add_argument(
        "--code-cost", type=float, default=0.0, help="multilabel: nats per sent code in training"
    )
    p.add_argument("--L", default="1,2,4,8", help="comma-separated caps on nonzeros to compare")
    p.add_argument(
        "--K",
        type=int,
        help="learned baselines' dictionary size (default: each its own, chosen on "
        "validation); multilabel: codebook size (default 128)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds to average over")
    p.add_argument("--window", type=int, default=8, help="predictor window W (measurements)")
    p.add_argument("--methods", help="comma-separated method families to run (default: all)")
    p.add_argument("--quick", action="store_true", help="small, fast models (demo, tests)")
    p.add_argument(
        "--on",
        choices=("test", "validation"),
        default="test",
        help="sessions to score: test (default) or validation (where choices are made)",
    )
    p.add_argument(
        "--framing",
        default="50,agent",
        help="frame sizes to code at; agent: the edge agent's default at the data's pace",
    )
    p.add_argument(
        "--target-weight",
        type=float,
        help="target KPI's precision relative to the others, for every codec "
        "(default: the weight chosen on validation, docs/benchmark/validation.md)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="fits run side by side in this many processes (default 0: one per CPU core; "
        "1: all in this process)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for results and plots")
    p.add_argument("--json", action="store_true", help="print the result rows as a JSON list")

    p = sub.add_parser("simulate", help="write simulated 5G KPI sessions as CSV files")
    p.add_argument("--out", type=Path, required=True, help="folder to write CSVs into")
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--rows", type=int, default=1800, help="measurements per session (1 Hz)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("edge", help="run an edge agent: measure, encode, publish")
    p.add_argument("--model", type=Path, help="folder with encoder.onnx and manifest.json")
    p.add_argument("--source", help="CSV file to replay, or '-' for JSON lines on stdin")
    p.add_argument("--group", help="fleet group id")
    p.add_argument("--edge-id", help="this edge's id")
    p.add_argument(
        "--rate", type=float, help="measurements per second (default: as fast as possible)"
    )
    p.add_argument("--limit", type=int, help="stop after this many measurements")
    p.add_argument("--batch", type=int, help="measurements per frame (default 50)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where bdSeq, the spool and deployed models persist (default "
        "$XDG_STATE_HOME/sparsetel/edges/EDGE, i.e. ~/.local/state/sparsetel/edges/EDGE; "
        "a new folder starts bdSeq at a random value)",
    )
    p.add_argument("--health-interval", type=float, help="seconds between heartbeats (default 30)")
    p.add_argument(
        "--trust-key",
        type=Path,
        help="Ed25519 public key (sparsetel keygen) that deployed models must be signed with; "
        "without it the agent refuses deployments",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        help="seconds to wait for the broker before measuring offline (default 10)",
    )
    p.add_argument(
        "--confirm",
        choices=("broker", "store"),
        help="a frame leaves the spool only on the cloud's receipt that it is stored (default; "
        "survives a broker or decoder restart) or already on the broker's ack",
    )
    p.add_argument(
        "--confirm-wait",
        type=float,
        help="with --confirm store: seconds before a frame without receipt is sent again "
        "(doubling per try; default 30)",
    )
    p.add_argument(
        "--audit-share",
        type=float,
        help="share of measurements also sent raw, for the cloud's live accuracy (e.g. 0.01; "
        "default 0)",
    )
    p.add_argument(
        "--ack-timeout",
        type=float,
        help="seconds to wait for acks (and receipts) at the end of the source (default 10)",
    )
    p.add_argument(
        "--spool-max-bytes", type=int, help="frames kept on disk until acked (default 256 MiB)"
    )
    p.add_argument(
        "--spool-max-age", type=float, help="seconds a frame may wait for its ack (default 7 days)"
    )
    p.add_argument("--kpis", help="KPI columns of the source (default: the model's)")
    p.add_argument("--sentinels", help="values that mean 'missing' (see train)")
    p.add_argument(
        "--time-column", help="CSV column with each measurement's time (epoch ms or ISO 8601)"
    )
    p.add_argument(
        "--range-margin",
        type=float,
        help="reject a measurement beyond the model's training range widened by this many "
        "range widths each side (default 1; inf: no check)",
    )
    p.add_argument(
        "--key-interval",
        type=int,
        help="temporal codec: a key measurement (a new chain) at most every this many "
        "measurements (default 60)",
    )
    p.add_argument(
        "--key-interval-s",
        type=float,
        help="temporal codec: ... and at most every this many seconds (default: off)",
    )
    _add_broker_args(p)
    p.add_argument("--json", action="store_true", help="print the agent's counters as JSON")

    p = sub.add_parser("serve", help="run the cloud decoder service: decode, predict, store")
    p.add_argument("--model", type=Path, action="append", help="run directory (repeatable)")
    p.add_argument(
        "--models-dir",
        type=Path,
        help="folder of run directories searched for models not loaded yet (new deployments); "
        "their frames are parked until the run appears there",
    )
    p.add_argument("--group", help="fleet group to serve (default: all)")
    p.add_argument("--db", help="SQLite path or postgresql:// URL (default sparsetel.db)")
    p.add_argument("--stop-after", type=int, help="exit once this many measurements are stored")
    p.add_argument("--idle-timeout", type=float, help="exit after this many idle seconds")
    p.add_argument(
        "--workers",
        type=int,
        help="decoder processes sharing the DATA stream through $share (MQTT 5; default 1)",
    )
    p.add_argument(
        "--shared",
        action="store_true",
        help="take DATA through the shared subscription, to split it with services elsewhere",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve the counters as Prometheus metrics at http://HOST:PORT/metrics while "
        "running (e.g. 127.0.0.1:9108; default off); with --workers N, worker i on PORT+i",
    )
    p.add_argument(
        "--clean-session",
        action="store_true",
        help="a throwaway MQTT session with a random client id (tools, tests) instead of the "
        "persistent session of a stable id, which keeps frames while serve is away",
    )
    _add_broker_args(p)
    p.add_argument("--json", action="store_true", help="print the service's counters as JSON")

    p = sub.add_parser("query", help="one KPI of one edge over a time range, from the store")
    _add_store_arg(p)
    p.add_argument("--edge", required=True, help="edge id")
    p.add_argument("--kpi", required=True, help="KPI name, as the model names it")
    p.add_argument("--from", dest="start", help="first time, inclusive (epoch ms or ISO 8601)")
    p.add_argument("--to", dest="end", help="end time, exclusive (epoch ms or ISO 8601)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of CSV")

    p = sub.add_parser("status", help="the fleet at a glance, from the decoder's store")
    _add_store_arg(p)
    _add_window_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    p = sub.add_parser(
        "monitor",
        help="serve the web dashboard and Prometheus metrics of the fleet and its accuracy",
    )
    _add_store_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=9464, help="port (default 9464)")
    _add_window_arg(p)
    p.add_argument(
        "--model", type=Path, action="append", help="exported run directory (repeatable)"
    )
    p.add_argument("--models-dir", type=Path, help="folder of run directories (new ones show up)")
    p.add_argument(
        "--benchmark",
        type=Path,
        action="append",
        help="`sparsetel benchmark` results (folder or results.json) for the offline curves",
    )
    p.add_argument(
        "--accuracy-window", type=float, default=3600.0, help="seconds of live accuracy (3600)"
    )
    p.add_argument(
        "--drift-window", type=float, default=600.0, help="seconds a KPI's drift is judged on (600)"
    )
    p.add_argument(
        "--drift-ratio",
        type=float,
        default=3.0,
        help="alert when a KPI's live NMSE exceeds this many times its offline NMSE (3)",
    )
    p.add_argument(
        "--drift-min-values", type=int, default=30, help="audited values needed to alert (30)"
    )
    p.add_argument(
        "--refresh", type=float, default=15.0, help="seconds between page reloads (0: never)"
    )

    p = sub.add_parser("keygen", help="write an Ed25519 key pair for signing model bundles")
    p.add_argument("--out", type=Path, required=True, help="folder for the two key files")
    p.add_argument("--force", action="store_true", help="replace a key pair already there")
    p.add_argument("--json", action="store_true", help="print the two paths as JSON")

    p = sub.add_parser("deploy", help="send a signed model to the edges of a group")
    p.add_argument("--group", required=True, help="fleet group id")
    p.add_argument("--model", type=Path, required=True, help="exported run directory")
    p.add_argument("--key", type=Path, required=True, help="private key from `sparsetel keygen`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--edges", type=_edge_list, help="comma-separated edge ids (default: all)")
    which.add_argument(
        "--canary", type=float, help="share of the online edges to deploy to, in (0, 1]"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for reports")
    _add_broker_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("rollback", help="send edges of a group back to their previous model")
    p.add_argument("--group", required=True, help="fleet group id")
    p.add_argument("--edges", type=_edge_list, help="comma-separated edge ids (default: all)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for reports")
    _add_broker_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("broker", help="run an embedded MQTT broker (for demos)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)

    p = sub.add_parser("demo", help="the whole pipeline on one machine, with a report")
    p.add_argument("--broker", help="use this broker instead of finding or starting one")
    p.add_argument("--workdir", type=Path, help="where to write data, model and database")
    p.add_argument("--measurements", type=int, default=3000, help="measurements in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_train(args: argparse.Namespace) -> int:
    from .cloud.training.train import TrainOptions, train_run
    from .shared.rundir import read_summary

    options = TrainOptions.from_cli(args)
    run = train_run(options)
    summary = read_summary(run)
    if args.json:
        _print_json({"run": str(run), **summary})
    else:
        print(f"trained {run}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .cloud.codec.export import export_run

    manifest = export_run(args.run)
    if args.json:
        print(manifest.to_json())
    else:
        print(f"exported {args.run / 'encoder.onnx'} (sha256 {manifest.model_sha256[:16]}...)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .cloud.training.evaluate import evaluate_run

    result = evaluate_run(
        args.model,
        args.data,
        kpis=args.kpis,
        target=args.target,
        horizon=args.horizon,
        sentinels=args.sentinels,
        level_column=args.level_column,
        state_column=args.state_column,
    )
    if args.json:
        _print_json(result)
    else:
        for key, value in result.items():
            if not isinstance(value, dict | list):
                print(f"{key:>30}  {value}")
        _print_sparsity(result.get("sparsity") or {})
    return 0


def _print_sparsity(report: dict[str, Any]) -> None:
    """The codes-used lines of `sparsetel evaluate`: overall, then per regime and state."""
    if report.get("mean_codes") is None:
        return
    print(f"{'codes used per measurement':>30}  {report['mean_codes']:.3f} (at most {report['L']})")
    for key in ("by_change", "by_level"):
        regimes = (report.get(key) or {}).get("regimes") or {}
        cells = ", ".join(
            f"{k} {v['mean_codes']:.2f}"
            for k, v in regimes.items()
            if v.get("mean_codes") is not None
        )
        if cells:
            print(f"{'codes used ' + key.replace('_', ' '):>30}  {cells}")
    states = (report.get("by_state") or {}).get("states") or {}
    cells = ", ".join(
        f"{k} {v['mean_codes']:.2f}" for k, v in states.items() if v.get("mean_codes") is not None
    )
    if cells:
        print(f"{'codes used by state':>30}  {cells}")


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .cloud.bench.options import BenchOptions
    from .cloud.bench.runner import run_benchmark

    if args.task == "multilabel":
        return _multilabel(args)
    if args.data is None:
        from .shared.errors import ConfigError

        raise ConfigError("--data is required", key="benchmark.data")
    options = BenchOptions.from_cli(args)
    rows = run_benchmark(options)
    if args.json:
        _print_json(rows)
    else:
        keys = ("bits_per_measurement", "wire_bytes_per_measurement", "nmse", "target_r2")
        for row in rows:
            values = (f"{k} {row[k]:.4g}" if row.get(k) is not None else f"{k} -" for k in keys)
            print(f"{row['method']} {row['setting']}: " + ", ".join(values))
        print(f"wrote {args.out / 'results.md'}")
    return 0


def _multilabel(args: argparse.Namespace) -> int:
    from .cloud.bench.multilabel import MultilabelOptions, format_table, run_multilabel
    from .cloud.bench.options import parse_ints

    options = MultilabelOptions(  # ValueError on a bad option: exit 2 with its message
        datasets=tuple(d.strip() for d in args.datasets.split(",")),
        seeds=parse_ints(args.seeds, "seeds"),
        Ls=parse_ints(args.L, "L"),
        K=MULTILABEL_K if args.K is None else args.K,
        quick=bool(args.quick),
        out=args.out,
        code_cost=args.code_cost,
    )
    results = run_multilabel(options)
    if args.json:
        _print_json(results)
    else:
        print(format_table(results))
        print(f"wrote {args.out / 'results.md'}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .cloud.data.simulator import write_sessions

    paths = write_sessions(args.out, n_sessions=args.sessions, rows=args.rows, seed=args.seed)
    print(f"wrote {len(paths)} sessions to {args.out}")
    return 0


def _cmd_edge(args: argparse.Namespace) -> int:
    from .edge.agent import run_agent
    from .edge.settings import edge_config_from_flags

    return run_agent(edge_config_from_flags(args), print_json=args.json)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .cloud.ingest.serve import run_service
    from .cloud.ingest.service import serve_config_from_flags

    return run_service(serve_config_from_flags(args), print_json=args.json)


def _cmd_query(args: argparse.Namespace) -> int:
    from .cloud.monitor.query import run_query

    return run_query(args.db, args.edge, args.kpi, args.start, args.end, args.limit, args.json)


def _cmd_status(args: argparse.Namespace) -> int:
    from .cloud.monitor.status import run_status

    return run_status(args.db, args.json, args.window)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from .cloud.monitor.dashboard import DashboardOptions
    from .cloud.monitor.server import run_monitor

    options = DashboardOptions(
        window_s=args.window,
        accuracy_window_s=args.accuracy_window,
        drift_window_s=args.drift_window,
        drift_ratio=args.drift_ratio,
        drift_min_values=args.drift_min_values,
    )
    return run_monitor(
        args.db,
        args.host,
        args.port,
        options,
        models=args.model or (),
        models_dir=args.models_dir,
        benchmarks=args.benchmark or (),
        refresh_s=args.refresh,
    )


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .cloud.fleet.keys import keygen

    private_key, public_key = keygen(args.out, force=args.force)
    if args.json:
        _print_json({"private_key": str(private_key), "public_key": str(public_key)})
    else:
        print(f"private key {private_key} (keep it secret: it signs models)")
        print(f"public key  {public_key} (install it on the edges)")
    return 0


def _print_rollout(result: dict[str, Any], success: str) -> None:
    """One line per target, then a summary line, for deploy and rollback."""
    for edge, entry in result["results"].items():
        step = entry["step"] or "no report"
        reason = f" ({entry['reason']})" if entry["reason"] else ""
        unknown = " [no online birth]" if edge in result["unknown"] else ""
        timed_out = " [timed out]" if edge in result["timed_out"] else ""
        print(f"{edge}: {step}{reason}{unknown}{timed_out}")
    print(
        f"{result['deployment']} in group {result['group']}: {result[success]} {success}, "
        f"{result['failed']} failed, {len(result['timed_out'])} timed out "
        f"of {len(result['targets'])} edge(s)"
    )


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .cloud.fleet.rollout import broker_from_flags, deploy

    result = deploy(
        broker_from_flags(args),
        args.group,
        args.model,
        args.key,
        edges=args.edges,
        canary=args.canary,
        timeout_s=args.timeout,
    )
    if args.json:
        _print_json(result)
    else:
        _print_rollout(result, "switched")
    return 0 if result["switched"] == len(result["targets"]) else 1


def _cmd_rollback(args: argparse.Namespace) -> int:
    from .cloud.fleet.rollout import broker_from_flags, rollback

    result = rollback(broker_from_flags(args), args.group, edges=args.edges, timeout_s=args.timeout)
    if args.json:
        _print_json(result)
    else:
        _print_rollout(result, "rolled_back")
    return 0 if result["rolled_back"] == len(result["targets"]) else 1


def _cmd_broker(args: argparse.Namespace) -> int:
    from .cloud.demo.broker import run_broker

    return run_broker(args.host, args.port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .cloud.demo.pipeline import run_demo

    return run_demo(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _cmd_train,
    "export": _cmd_export,
    "evaluate": _cmd_evaluate,
    "benchmark": _cmd_benchmark,
    "simulate": _cmd_simulate,
    "edge": _cmd_edge,
    "serve": _cmd_serve,
    "query": _cmd_query,
    "status": _cmd_status,
    "monitor": _cmd_monitor,
    "keygen": _cmd_keygen,
    "deploy": _cmd_deploy,
    "rollback": _cmd_rollback,
    "broker": _cmd_broker,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return its exit code (0 ok, 1 runtime failure, 2 usage/config)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse exits 2)
        return exc.code if isinstance(exc.code, int) else 2
    # our own INFO lines tell an operator what happens; other libraries speak up on warnings
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from .shared.errors import ConfigError, SparsetelError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError) as exc:
        print(f"sparsetel {args.command}: {exc}", file=sys.stderr)
        return 2
    except SparsetelError as exc:
        print(f"sparsetel {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
