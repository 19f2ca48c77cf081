"""Installing sparsetel[edge] pulls neither torch nor pandas: the dependency closure of the
edge extra, walked through the installed packages' own metadata (pinned versions, offline)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(name: str, extra: str = "") -> set[str]:
    """Every distribution `name` (with `extra`) needs, transitively, by canonical name."""
    seen: set[str] = set()
    todo = [(name, extra)]
    while todo:
        dist, wanted = todo.pop()
        try:
            specs = requires(dist) or []
        except PackageNotFoundError:
            continue  # a dependency of a platform this machine is not: not installed
        for spec in specs:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": wanted}):
                continue
            key = canonicalize_name(req.name)
            if key == canonicalize_name(name):
                for sub in req.extras:
                    todo.append((dist, sub))
                continue
            if key not in seen:
                seen.add(key)
                todo.append((req.name, ""))
    return seen


def test_the_edge_extra_pulls_neither_torch_nor_pandas() -> None:
    edge = closure("sparsetel", "edge")
    assert {"onnxruntime", "paho-mqtt", "numpy", "cryptography"} <= edge
    assert not edge & {"torch", "pandas"}, sorted(edge)


def test_the_cloud_extra_does_pull_them() -> None:  # the walk can see them when they are there
    cloud = closure("sparsetel", "cloud")
    assert {"torch", "pandas", "onnxruntime"} <= cloud
