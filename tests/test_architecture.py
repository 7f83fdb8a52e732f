"""The package's shape: no import cycles, the tree as docs/architecture.md describes it, the
sweep layer's reads of Optuna user attributes confined to the read model and the writers, the
layers each owner sits in, each stored key spelled once, and modules of at most 400 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maou"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports, at module level or inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_running_a_sweep_never_imports_its_presentation_nor_the_cli():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("maou.sweep.run"):
            bad = {m for m in imported if m.startswith(("maou.sweep.results", "maou.cli"))}
            assert not bad, f"{name} imports {sorted(bad)}"
        if name.startswith(("maou.trainer", "maou.data", "maou.shogi")):
            bad = {m for m in imported if m.startswith(("maou.sweep", "maou.cli"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_the_trainer_core_stands_alone_and_the_recorder_only_writes():
    """The trainer imports nothing of the data package (the dataset folder is maou/layout.py's, below
    both); the recorder knows the Stopper interface, not racing nor pruning."""
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("maou.trainer"):
            bad = {m for m in imported if m.startswith("maou.data")}
            assert not bad, f"{name} imports {sorted(bad)}"
    assert not {m for m in graph["maou.layout"] if m.startswith(("maou.data", "maou.trainer", "maou.sweep"))}
    recorder = graph["maou.sweep.run.recorder"]
    assert "maou.sweep.run.stopping" in recorder
    assert not {m for m in recorder if m.startswith(("maou.sweep.run.racing", "maou.sweep.run.pruning"))}, recorder


def test_every_stored_key_and_the_manifest_name_are_spelled_in_one_module():
    """A trial's attribute keys (sweep/attrs.py) and the dataset manifest's name (layout.py) appear as
    string literals in exactly one module of maou/."""
    for literal, owner in (("prune_reason", "maou/sweep/attrs.py"), ("prune_detail", "maou/sweep/attrs.py"),
                           ("reused_from", "maou/sweep/attrs.py"), ("config_key", "maou/sweep/attrs.py"),
                           ("manifest.json", "maou/layout.py")):
        spelled = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                         if re.search(rf"[\"']{re.escape(literal)}[\"']", p.read_text(encoding="utf-8")))
        assert spelled == [owner], (literal, spelled)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_the_tree_is_the_one_docs_architecture_describes():
    """Every module of maou/ is named in docs/architecture.md's tree, and every file the tree names
    exists."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = text.split("```")[1]
    named: set[str] = set()
    folder_at: dict[int, str] = {}
    for line in tree.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match or line.strip().startswith(("#",)):
            continue
        indent, entry = len(match.group(1)), match.group(2)
        if not re.fullmatch(r"[a-z_0-9]+(\.py|/)", entry):
            continue
        parent = next((folder_at[i] for i in sorted(folder_at, reverse=True) if i < indent), "")
        folder_at = {i: f for i, f in folder_at.items() if i < indent}
        path = parent + entry
        if entry.endswith("/"):
            folder_at[indent] = path
        else:
            named.add(path)
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert named, "no tree found in docs/architecture.md"
    assert actual - named == set(), f"modules missing from docs/architecture.md: {sorted(actual - named)}"
    assert named - actual == set(), f"docs/architecture.md names files that do not exist: {sorted(named - actual)}"


def test_only_the_read_model_and_the_writers_read_user_attributes():
    readers = sorted(str(p.relative_to(ROOT)) for p in (PACKAGE / "sweep").rglob("*.py")
                     if "user_attrs" in p.read_text(encoding="utf-8"))
    assert len(readers) <= 4, readers
    assert "maou/sweep/records.py" in readers


def test_every_reference_of_the_stage_registry_resolves_and_names_upstream_flags():
    import json

    import pytest

    from maou.stages import STAGES, Dataset, Stage, UpstreamFlags, resolve_reference, stage

    upstream = set(json.loads((ROOT / "tests" / "golden" / "upstream_learn_model.json").read_text())["flags"])
    for info in STAGES.values():
        flags = info.upstream
        for flag in (flags.batch, flags.learning_rate, flags.epochs, flags.data_path, flags.scheduler):
            assert flag in upstream, (info.number, flag)
        assert callable(resolve_reference(flags.loss_and_head))
        if info.dataset is not None:
            assert callable(resolve_reference(info.dataset.schema)) and callable(resolve_reference(info.dataset.rows))
    with pytest.raises(ValueError, match="got 4"):
        stage(4)
    one = STAGES[1]
    with pytest.raises(ValueError, match="declares its dataset"):  # a games-built stage must say how
        Stage(9, "x", one.targets, one.metrics, one.selection_metric, one.selection_direction, one.rules, "games",
              UpstreamFlags(*[getattr(one.upstream, f) for f in UpstreamFlags.__dataclass_fields__]), one.task)
    assert Dataset("a:b", "c:d").rows == "c:d"
