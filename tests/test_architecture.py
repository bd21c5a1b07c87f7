"""docs/architecture.md stays true to the code: every module is placed, every topic is
listed with modules that really write and read it, and the imports run with the grain."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from streams import topics
from streams.settings import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "architecture.md"
PACKAGES = ("streams", "models", "infra")


def section(title: str) -> str:
    """The text of the page's ``## title`` section."""
    text = PAGE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def modules() -> set[str]:
    """Every Python module of the project's packages, as a path from the repository root."""
    return {str(path.relative_to(REPO_ROOT)) for top in PACKAGES
            for path in (REPO_ROOT / top).rglob("*.py")
            if path.name != "__init__.py" and "generated" not in path.parts}


def module_paths(text: str) -> list[str]:
    return re.findall(r"`((?:streams|models|infra)/[\w/]+\.py)`", text)


def test_every_module_is_placed_once_in_the_tree_section() -> None:
    listed = module_paths(section("Where each part lives"))
    assert len(listed) == len(set(listed)), "a module is listed twice"
    missing, stale = modules() - set(listed), set(listed) - modules()
    assert not missing and not stale, f"not on the page: {sorted(missing)}; " \
                                      f"gone from the code: {sorted(stale)}"


def topic_rows() -> dict[str, tuple[list[str], list[str]]]:
    """``topic -> (writers, readers)`` from the Topics table."""
    rows = {}
    for line in section("Topics").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and (name := re.fullmatch(r"`([\w-]+)`", cells[0])):
            rows[name.group(1)] = (module_paths(cells[2]), module_paths(cells[3]))
    return rows


def test_every_topic_is_listed_with_who_writes_and_who_reads_it() -> None:
    rows = topic_rows()
    assert set(rows) == set(topics.topic_partitions(1))
    constants = {getattr(topics, name): name for name in dir(topics)
                 if name.isupper() and isinstance(getattr(topics, name), str)}
    for topic, (writers, readers) in rows.items():
        assert writers, f"{topic}: no module named as its writer"
        for path in writers + readers:
            source = (REPO_ROOT / path).read_text()
            assert re.search(rf"\b{constants[topic]}\b|[\"']{re.escape(topic)}[\"']", source), \
                f"{path} is said to write or read {topic!r} but never names it"


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("models", ("streams", "infra")),
    ("infra", ("streams",)),
    ("streams/clients", ("streams.dataplane", "streams.lifecycle", "streams.replay",
                         "streams.jobs")),
    ("streams/dataplane", ("streams.lifecycle", "streams.replay", "streams.jobs")),
    ("streams/replay", ("streams.dataplane", "streams.lifecycle", "streams.jobs")),
    ("streams/lifecycle", ("streams.dataplane", "streams.replay", "streams.jobs")),
])
def test_imports_run_with_the_grain(package: str, forbidden: tuple[str, ...]) -> None:
    """The dependency direction the page states: jobs on top of the lifecycle, the replay
    and the data plane, all three on the clients, everything on models; infra below the
    stream code, models below everything."""
    wrong = sorted(f"{path.relative_to(REPO_ROOT)} imports {name}"
                   for path in (REPO_ROOT / package).rglob("*.py")
                   for name in imports_of(path)
                   if any(name == f or name.startswith(f + ".") for f in forbidden))
    assert not wrong, wrong
