"""Finding a spec by name, and reading its paths against its project, wherever a command starts.

``sweep run stage2-asl`` (or ``stage2-asl.yaml``, or ``sweeps/stage2-asl.yaml``) finds
``sweeps/stage2-asl.yaml`` in this folder or the nearest parent holding a ``sweeps/`` folder, and
suggests near names when none matches. A spec's *project root* is the folder holding its
``sweeps/`` folder (or the spec's own folder); every relative path inside the spec (game records,
dataset, storage, runs, results, ``init_from``, ``winner-of:``) is read against that root, and the
defaults (``studies/<name>.db``, ``runs/<name>``, ``results/<name>``, ``data/build/<key>``) live there.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.strict import from_dict, read_yaml_file
from maou.sweep.spec import WINNER_OF, SweepSpec, validate

SPECS_FOLDER = "sweeps"


def projects_above(start: Path) -> list[Path]:
    """The projects ``start`` is in: ``start`` and its parents that hold a ``sweeps/`` folder,
    nearest first (where a spec name is looked up, and ``sweep train`` writes its runs)."""
    return [folder for folder in (start, *start.parents) if (folder / SPECS_FOLDER).is_dir()]


def locate_spec(name: str, cwd: Path | None = None) -> Path:
    """The spec file ``name`` means (a path, or a spec name under a ``sweeps/`` folder)."""
    cwd = cwd or Path.cwd()
    given = Path(name)
    if (cwd / given).is_file():  # an absolute path stays itself
        return cwd / given
    stem = given.name[: -len(".yaml")] if given.name.endswith(".yaml") else given.name
    known: list[Path] = []
    for root in dict.fromkeys([cwd, *projects_above(cwd)]):  # this folder first, a project or not
        for candidate in (root / given, root / SPECS_FOLDER / f"{stem}.yaml", root / f"{stem}.yaml"):
            if candidate.is_file():
                return candidate
        known += sorted((root / SPECS_FOLDER).glob("*.yaml")) if (root / SPECS_FOLDER).is_dir() else []
    names = sorted({p.stem for p in known})
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else (f"; known specs: {', '.join(names)}" if names else "")
    raise UserError(f"no such sweep spec: {name}{hint}")


def project_root(spec_path: Path) -> Path:
    """The folder holding the nearest ``sweeps/`` folder above the spec (``sweeps/cpu/x.yaml`` is in
    the project too), or the spec's own folder."""
    folder = spec_path.resolve().parent
    for candidate in (folder, *folder.parents):
        if candidate.name == SPECS_FOLDER:
            return candidate.parent
    return folder


def _under(root: Path, path: str) -> str:
    return path if Path(path).is_absolute() else str(root / path)


def _file_url(root: Path, url: str) -> str:
    for scheme in ("sqlite:///", "journal://"):
        if url.startswith(scheme):
            return scheme + _under(root, url[len(scheme):])
    return url


def _init_from(root: Path, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    match = WINNER_OF.match(value)
    return f"winner-of:{_under(root, match.group('spec'))}" if match else _under(root, value)


def resolve_paths(spec: SweepSpec, root: Path) -> SweepSpec:
    """``spec`` with every relative path read against ``root`` and the defaults placed there."""
    from maou.data.build import build_dir

    games = tuple(_under(root, g) for g in spec.data.games)
    data = dataclasses.replace(spec.data, games=games)
    data = dataclasses.replace(data, dir=_under(root, data.dir) if data.dir else str(root / build_dir(data)))
    base = dict(spec.base)
    if "init_from" in base:
        base["init_from"] = _init_from(root, base["init_from"])
    steps = tuple(dataclasses.replace(
        step, grid={k: [_init_from(root, v) for v in vs] if k == "init_from" else vs for k, vs in step.grid.items()},
        configs=[{k: _init_from(root, v) if k == "init_from" else v for k, v in c.items()} for c in step.configs])
        for step in spec.steps)
    return dataclasses.replace(
        spec, data=data, base=base, steps=steps,
        storage=_file_url(root, spec.storage or f"sqlite:///studies/{spec.name}.db"),
        runs_dir=_under(root, spec.runs_dir or f"runs/{spec.name}"),
        results_dir=_under(root, spec.results_dir or f"results/{spec.name}"))


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec (safe YAML, YAML 1.2 numbers), its relative paths read
    against its project root; raises :class:`~maou.strict.ConfigError`."""
    spec: SweepSpec = from_dict(SweepSpec, read_yaml_file(path, "sweep spec"))
    validate(spec)
    resolved = resolve_paths(spec, project_root(Path(path)))
    object.__setattr__(resolved, "source", str(Path(path).resolve()))
    return resolved


__all__ = ["load_spec", "locate_spec", "project_root", "projects_above", "resolve_paths"]
