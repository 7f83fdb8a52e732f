"""Bad input as a user meets it, through the real CLI: empty, unreadable or missing game folders,
linked folders (followed, loops and broken links counted), storage URL typos and a storage path
typo that would start a sweep over. Each is one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from sweep_helpers import REPO, one_line_error, run_cli

from maou.cli import main as sweep
from maou.data.sources import scan_record_files
from maou.sweep.storage import url_typo

GAMES = sorted((REPO / "data" / "games").glob("*.csa"))


def copy_games(folder: Path, games: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for game in games:
        shutil.copy(game, folder / game.name)
    return folder


# --- game folders ----------------------------------------------------------------------------------------


def test_an_empty_games_folder_is_one_line_in_data_build(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(run_cli("data", "build", "--games", str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                          "no readable games in", "no files found", ".csa", ".kif", ".feather")
    assert "need at least one array" not in line
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_files_none_of_which_is_a_game_are_counted_by_kind_and_reason(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.csa").write_text("hello\n")
    (junk / "b.kif").write_bytes(b"\xff\xfe\x00garbage")
    (junk / "notes.txt").write_text("not a record\n")
    (junk / "table.json").write_text("{}\n")
    one_line_error(run_cli("data", "build", "--games", str(junk), "--out", str(tmp_path / "o")),
                   "4 files: csa 1, kif 1, other 2 (.json, .txt)", "every game skipped", "malformed 1", "unreadable 1")


def test_only_other_files_say_what_a_record_file_is(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("# games\n")
    one_line_error(run_cli("data", "build", "--games", str(tmp_path / "docs"), "--out", str(tmp_path / "o")),
                   "1 file: other 1 (.md)", "record files are .csa, .kif, .kifu (optionally .gz) and HCPE .feather")


def test_a_missing_path_and_a_broken_link_given_as_input(tmp_path):
    one_line_error(run_cli("data", "build", "--games", str(tmp_path / "nope"), "--out", str(tmp_path / "o")),
                   "no such game record file or folder", "nope")
    (tmp_path / "gone").symlink_to(tmp_path / "elsewhere")
    one_line_error(run_cli("data", "build", "--games", str(tmp_path / "gone"), "--out", str(tmp_path / "o")),
                   "a broken link to", "elsewhere")


def test_an_unreadable_folder_is_one_line_with_what_was_left_out(tmp_path, monkeypatch, capsys):
    locked = copy_games(tmp_path / "games" / "locked", GAMES[:2])
    locked.chmod(0)
    try:
        if os.geteuid() == 0:  # root reads any folder: have the folder refuse as it would anyone else
            real_scandir = os.scandir

            def scandir(path):
                if Path(path) == locked:
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real_scandir(path)

            monkeypatch.setattr(os, "scandir", scandir)
        code = sweep(["data", "build", "--games", str(tmp_path / "games"), "--out", str(tmp_path / "o")])
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "no readable games" in err and "no files found" in err
    assert f"unreadable folder 1 (e.g. {locked}: Permission denied)" in err


def test_an_empty_games_folder_is_one_line_in_sweep_run(tmp_path):
    (tmp_path / "empty").mkdir()
    spec = tmp_path / "empty-games.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "empty-games", "stage": 2, "seeds": 1, "steps": [{"name": "baseline"}],
        "data": {"games": [str(tmp_path / "empty")], "dir": str(tmp_path / "build")},
        "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "batch_size": 16},
        "budget": {"max_steps": 10, "eval_every": 5},
        "storage": f"sqlite:///{tmp_path}/studies/x.db", "runs_dir": str(tmp_path / "runs")}))
    one_line_error(run_cli("run", str(spec)), "sweep run: error: no readable games in", "no files found")


def test_linked_folders_and_files_are_followed_and_loops_and_broken_links_counted(tmp_path):
    real = copy_games(tmp_path / "real", GAMES[:6])
    more = copy_games(tmp_path / "more", GAMES[6:8])
    games = copy_games(tmp_path / "games", GAMES[8:9])
    (games / "linked").symlink_to(real)                      # a linked folder: followed
    (games / "nested").mkdir()
    (games / "nested" / "again").symlink_to(real)            # the same folder twice: read once
    (games / "nested" / "up").symlink_to(games)              # a loop: a link to a folder above it
    (games / "one.csa").symlink_to(more / GAMES[6].name)     # a linked file
    (games / "gone.csa").symlink_to(tmp_path / "deleted.csa")  # a broken link
    (games / "self").symlink_to(games / "self")              # a link to itself
    scan = scan_record_files([games])
    assert len(scan.files) == 8  # 1 + 6 through the link + 1 linked file
    assert {f.resolve().name for f in scan.files} == {g.name for g in GAMES[:7]} | {GAMES[8].name}
    assert scan.left_out == {"broken link": 1, "folder linked twice": 1, "link loop": 2}

    result = run_cli("data", "build", "--games", str(games), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["games"]["games_read"] == 8 and manifest["sources"]["files"] == 8
    assert manifest["sources"]["search"]["left_out"] == {"broken link": 1, "folder linked twice": 1, "link loop": 2}
    assert "gone.csa: -> " in manifest["sources"]["search"]["left_out_examples"]["broken link"][0]
    for row in ("left out: broken link", "left out: link loop", "left out: folder linked twice"):
        assert row in result.stdout  # the build summary says what it left out


# --- storage URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, fix", [
    ("postgres://u:secret@db.example/sweeps", "did you mean postgresql://u:***@db.example/sweeps?"),
    ("postgresql+psycopg2://u@db.example/sweeps", "did you mean postgresql://u@db.example/sweeps (psycopg 3"),
    ("sqlite:/studies/x.db", "did you mean sqlite:///studies/x.db (a relative path)"),
    ("sqlite://studies/x.db", "did you mean sqlite:///studies/x.db"),
    ("sqlite:studies/x.db", "did you mean sqlite:///studies/x.db"),
    ("studies/x.db", "did you mean sqlite:///studies/x.db?"),
    ("journal:/tmp/x.log", "did you mean journal:///tmp/x.log?"),
])
def test_storage_url_typos_get_the_likely_fix(url, fix):
    assert fix in (url_typo(url) or "")


def test_good_storage_urls_are_no_typos():
    for url in ("sqlite:///studies/x.db", "sqlite:////abs/x.db", "postgresql://u:p@h/db",
                "postgresql+psycopg://u@h/db", "journal:///tmp/x.log", "memory:"):
        assert url_typo(url) is None, url


def tiny_stage1(project: Path, name: str = "tiny", **changes) -> Path:
    (project / "sweeps").mkdir(parents=True, exist_ok=True)
    spec = project / "sweeps" / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "stage": 1, "seeds": 1, "steps": [{"name": "baseline"}],
                                    "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1},
                                    "budget": {"max_steps": 10, "eval_every": 5},
                                    "executor": {"kind": "local"}, **changes}))  # in process: one training
    return spec


@pytest.mark.parametrize("url, fragments", [
    ("postgres://u:secret@localhost/sweeps", ("did you mean postgresql://u:***@localhost/sweeps?",)),
    ("sqlite://studies/x.db", ("did you mean sqlite:///studies/x.db",)),
    ("nosuch://x", ("unknown storage scheme nosuch:", "supported: sqlite:///PATH")),
])
def test_storage_url_typos_through_sweep_run(tmp_path, url, fragments):
    spec = tiny_stage1(tmp_path)
    line = one_line_error(run_cli("run", str(spec), "--storage", url, cwd=tmp_path), *fragments)
    assert "secret" not in line and "Can't load plugin" not in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_new_storage_beside_the_sweeps_own_is_refused_until_asked_for(tmp_path):
    spec = tiny_stage1(tmp_path)
    first = run_cli("run", "tiny", cwd=tmp_path)  # the default storage: studies/tiny.db
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    typo = run_cli("run", "tiny", "--storage", f"sqlite:///{tmp_path}/studeis/tiny.db", cwd=tmp_path)
    one_line_error(typo, "storage studeis/tiny.db does not exist", "studies/tiny.db (1 step) already holds",
                   "sweep tiny", "--new-storage")
    assert not (tmp_path / "studeis").exists()
    spec.write_text(spec.read_text() + "storage: sqlite:///studies/tiny-2.db\n")  # the same typo in the spec
    one_line_error(run_cli("run", "tiny", cwd=tmp_path), "storage studies/tiny-2.db does not exist",
                   "studies/tiny.db (1 step)")
    other = tiny_stage1(tmp_path, "other", storage="sqlite:///studies/other.db")  # another sweep: no refusal
    assert run_cli("run", str(other), cwd=tmp_path).returncode == 0
    again = run_cli("run", "tiny", "--new-storage", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert (tmp_path / "studies" / "tiny-2.db").is_file()
