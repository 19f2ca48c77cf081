"""The test suite's own layout: shared helpers live in helper modules beside tests/helpers.py
and fixtures in conftest.py files, so no module of the suite imports from a test module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# The helper modules in tests/, importable as tests.<name> (see tests/helpers.py).
HELPERS = {
    "agents", "chainfleet", "codeccases", "conftest", "frames", "helpers", "mosquitto",
    "mqttclients", "processes", "quickrun", "stores", "temporalagent", "tinymodel",
}  # fmt: skip
SUITES = {"unit", "integration"}


def imported_names(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every module, and every name taken from one, that `source`
    imports: ``from tests.x import y`` gives tests.x and tests.x.y (y may be a module)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def imports_a_test_module(name: str) -> bool:
    """Whether the dotted `name` is, or is in, a test module rather than a helper module or
    a conftest.py."""
    parts = name.split(".")
    if any(part.startswith("test_") for part in parts):
        return True
    if parts[0] != "tests" or len(parts) == 1:
        return False
    if parts[1] in SUITES:
        return len(parts) < 3 or parts[2] != "conftest"
    return parts[1] not in HELPERS


@pytest.mark.parametrize(
    ("statement", "bad"),
    [
        ("from tests.unit.test_service import FakeCodec", True),
        ("from tests.unit.test_store import _frame as frame", True),
        ("from tests.integration.test_edge_agent import broker", True),
        ("import tests.unit.test_service", True),
        ("from tests.unit import test_service", True),
        ("from test_service import TOPIC", True),  # tests/unit on sys.path under pytest
        ("from tests.unknown import thing", True),  # a new helper belongs in HELPERS
        ("from tests.helpers import ANY_TIME, wait_until", False),
        ("from tests.frames import FakeCodec", False),
        ("from tests import helpers", False),
        ("from tests.conftest import skip_or_fail", False),
        ("from tests.integration.conftest import _working_url", False),
        ("from sparsetel.cloud.ingest.handler import FrameIngest", False),
        ("import pytest", False),
    ],
)
def test_the_rule_tells_test_modules_from_helpers(statement: str, bad: bool) -> None:
    assert any(imports_a_test_module(n) for _, n in imported_names(statement)) is bad


def test_no_module_of_the_suite_imports_from_a_test_module() -> None:
    offences = [
        f"{path.relative_to(TESTS.parent)}:{line}: {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, name in imported_names(path.read_text(encoding="utf-8"))
        if imports_a_test_module(name)
    ]
    assert offences == [], "move what is shared to a helper module or a conftest.py"


def test_every_helper_module_in_tests_is_listed_and_exists() -> None:
    on_disk = {p.stem for p in TESTS.glob("*.py") if not p.stem.startswith("test_")}
    assert on_disk == HELPERS
    assert not list(TESTS.glob("test_*.py")), "test modules live in tests/unit, tests/integration"
