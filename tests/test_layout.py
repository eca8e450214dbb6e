"""queuectl.py reads top to bottom: each section uses only what the sections above it define
(DESIGN.md's layout), and only the folder store touches the data folder's files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "queuectl.py"
BANNER = re.compile(r"# (\d+)\. (.+)")


def sections() -> tuple[list[tuple[int, str]], list[ast.stmt]]:
    text = SOURCE.read_text("utf-8")
    starts = [(number, match.group(2)) for number, line in enumerate(text.splitlines(), 1)
              if (match := BANNER.fullmatch(line))]
    return starts, ast.parse(text).body


def section_of(line: int, starts: list[tuple[int, str]]) -> str:
    title = "the module's head"
    for start, name in starts:
        if start <= line:
            title = name
    return title


def defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def used(node: ast.stmt) -> set[str]:
    """Names a definition reads when it runs (annotations are strings here: not uses)."""
    annotations: set[int] = set()
    for inner in ast.walk(node):
        parts = [getattr(inner, "returns", None), getattr(inner, "annotation", None)]
        for part in parts:
            if part is not None:
                annotations.update(id(sub) for sub in ast.walk(part))
    return {inner.id for inner in ast.walk(node)
            if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load) and id(inner) not in annotations}


def test_the_sections_are_numbered_in_order_and_each_is_named_for_one_thing() -> None:
    starts, _ = sections()
    titles = [name for _, name in starts]
    assert len(titles) >= 10
    assert [int(BANNER.fullmatch(f"# {n}. x").group(1)) for n in range(1, len(titles) + 1)] == list(
        range(1, len(titles) + 1))
    for expected in ("job model", "rules", "store interface", "folder store", "Processes", "attempt", "worker",
                     "command line", "dashboard", "main"):
        assert any(expected in title for title in titles), (expected, titles)


def test_no_definition_uses_a_name_defined_in_a_later_section() -> None:
    starts, body = sections()
    where: dict[str, int] = {}
    for node in body:
        for name in defined(node):
            where.setdefault(name, node.lineno)
    order = {name: index for index, (_, name) in enumerate(starts)}
    late = []
    for node in body:
        mine = section_of(node.lineno, starts)
        for name in sorted(used(node)):
            if name in where:
                theirs = section_of(where[name], starts)
                if order.get(theirs, -1) > order.get(mine, -1):
                    late.append(f"{', '.join(defined(node)) or node.lineno} ({mine}) uses {name} ({theirs})")
    assert late == []


def test_the_check_itself_finds_a_use_of_a_later_section() -> None:
    """The test above would pass vacuously if it saw no uses: a body that calls a later
    section's function is caught by the same functions."""
    starts, body = sections()
    rules = next(node for node in body if defined(node) == ["settle_outcome"])
    assert "backoff_delay" in used(rules)
    worker_pool = next(node for node in body if defined(node) == ["WorkerPool"])
    assert "Runner" in used(worker_pool)
    assert section_of(worker_pool.lineno, starts) != section_of(rules.lineno, starts)


def test_only_the_folder_store_opens_files_in_the_data_folder() -> None:
    """Outside the folder store's section, no code names a state file, the logs or workers
    folder, or hands the store's location to a file operation."""
    starts, body = sections()
    folder_names = {"QUEUE_FILE", "PROCESSED_FILE", "FAILED_FILE", "CANCELLED_FILE", "CONFIG_FILE", "STOP_FILE",
                    "HISTORY_INDEX_FILE", "LOCK_FILE", "STATE_FILES", "LOGS_DIR", "LATE_DIR", "WORKERS_DIR",
                    "HISTORY_FILE_OF", "STATE_OF_FILE"}
    offenders = []
    for node in body:
        mine = section_of(node.lineno, starts)
        if "folder store" in mine or "Constants" in mine:
            continue
        names = used(node) & folder_names
        paths = [ast.unparse(call) for call in ast.walk(node) if isinstance(call, ast.Call)
                 and ast.unparse(call.func).split(".")[0] in ("os", "open", "shutil", "Path")
                 and any(isinstance(inner, ast.Attribute) and inner.attr in ("location", "_folder")
                         for arg in call.args for inner in ast.walk(arg))]
        if names or paths:
            offenders.append(f"{', '.join(defined(node))} ({mine}): {sorted(names)} {paths}")
    assert offenders == []
