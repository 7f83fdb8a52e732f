"""Datasets that prove themselves: every file of a stage against its manifest before anything trains on
it (sizes always, SHA-256 once per run, not read again while untouched), a damaged file rebuilt from
its games or, the games gone, refused in one line naming it; a file Arrow cannot read names its path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from maou.data.build import ensure_datasets
from maou.data.resolve import dataset_of, load_datasets, open_dataset
from maou.data.sources import file_sha256
from maou.data.verify import VERIFIED, verify_dataset
from maou.errors import UserError
from maou.layout import Dataset
from maou.trainer.columns import UnreadableDataset
from maou.trainer.config import DataConfig, train_config_from_dict

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "games"
TRAIN = "stage2/train.feather"


def small_build(tmp_path: Path, games: int = 8):
    """A stage 2 training config on its own copy of ``games`` bundled games, built."""
    folder = tmp_path / "games"
    folder.mkdir()
    for f in sorted(BUNDLED.glob("*.csa"))[:games]:
        shutil.copy2(f, folder / f.name)
    config = train_config_from_dict({"stage": 2, "data": {"games": [str(folder)], "dir": str(tmp_path / "build")}})
    ensure_datasets(config.data, progress=False)
    return config, tmp_path / "build"


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def flip(path: Path, offset_fraction: float = 0.5, length: int = 4096) -> None:
    """Invert ``length`` bytes in the middle of ``path`` (its size unchanged)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    data[start:start + length] = bytes(b ^ 0xFF for b in data[start:start + length])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_an_untouched_dataset_is_hashed_once_then_only_stat(bundled_data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bundled_data_dir, out)  # a copy: new ctimes, so its files are read once
    first = verify_dataset(out, [2], "full")
    assert first.ok and first.hashed == ["stage2/train.feather", "stage2/val.feather"]
    cache = (out / VERIFIED).read_bytes()
    second = verify_dataset(out, [2], "full")
    assert second.ok and second.hashed == [] and second.checked == first.checked
    assert (out / VERIFIED).read_bytes() == cache  # nothing re-recorded
    train = out / TRAIN
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert verify_dataset(out, [2], "full").hashed == [TRAIN]
    assert verify_dataset(out, [2], "full").hashed == []
    assert verify_dataset(out, [3], "full").hashed == ["stage3/train.feather", "stage3/val.feather"]


def test_a_fresh_build_needs_no_second_read(tmp_path):
    _, out = small_build(tmp_path)
    entries = json.loads((out / VERIFIED).read_text())["files"]
    assert set(entries) == set(manifest(out)["files"])  # the build hashed what it wrote
    assert verify_dataset(out, None, "full").hashed == []


def test_flipped_bytes_of_the_same_size_are_caught_and_rebuilt_from_the_games(tmp_path, capsys):
    config, out = small_build(tmp_path)
    recorded = manifest(out)
    flip(out / TRAIN)
    corrupt = file_sha256(out / TRAIN)
    assert verify_dataset(out, [2], "size").ok  # the size cannot tell...
    assert verify_dataset(out, [2], "full").mismatch.what == "sha256"  # ...the hash does
    dataset = dataset_of(config)
    directory, content_hash = dataset.folder, dataset.content_hash
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dataset file {out / TRAIN} does not match its manifest: SHA-256 {recorded['files'][TRAIN]['sha256'][:12]} "
        f"expected, found {corrupt[:12]}; rebuilding from {config.data.games[0]}"]
    assert file_sha256(out / TRAIN) == recorded["files"][TRAIN]["sha256"]  # the data is right again
    assert content_hash == recorded["content_hash"] and directory == str(out)
    assert load_datasets(config, dataset).content_hash == recorded["content_hash"]


def test_a_truncated_file_is_caught_by_the_size_check_of_every_load(tmp_path, capsys):
    config, out = small_build(tmp_path)
    recorded = manifest(out)
    expected = recorded["files"][TRAIN]["bytes"]
    truncate(out / TRAIN)
    check = verify_dataset(out, [2], "size")
    assert check.mismatch.what == "size" and check.hashed == []
    data = load_datasets(config, Dataset(2, str(out), recorded["content_hash"]))  # a trial's load: sizes only
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dataset file {out / TRAIN} does not match its manifest: {expected:,} bytes expected, found "
        f"{expected // 2:,}; rebuilding from {config.data.games[0]}"]
    assert len(data.train) == recorded["rows"]["stage2"]["train"]
    assert file_sha256(out / TRAIN) == recorded["files"][TRAIN]["sha256"]


@pytest.mark.parametrize("damage, found", [(flip, "SHA-256"), (truncate, "bytes expected")])
def test_with_the_games_gone_a_damaged_file_is_refused_in_one_line(tmp_path, damage, found):
    config, out = small_build(tmp_path)
    games = Path(config.data.games[0])
    games.rename(tmp_path / "elsewhere")
    dataset_of(config)  # intact: the datasets outlive their games
    damage(out / TRAIN)
    with pytest.raises(UserError) as raised:
        dataset_of(config)
    message = str(raised.value)
    assert "\n" not in message and f"dataset file {out / TRAIN} does not match its manifest" in message
    assert found in message
    assert message.endswith(f"its games ({games}) are not there to rebuild it from: restore them and run "
                            f"`sweep data build --games {games} --out {out}`")
    if damage is truncate:  # a trial's size check refuses it too
        with pytest.raises(UserError, match="bytes expected"):
            load_datasets(config)


def test_a_manifest_whose_list_is_not_its_content_hash_is_refused(tmp_path):
    config, out = small_build(tmp_path)
    data = manifest(out)
    data["files"][TRAIN]["sha256"] = "0" * 64  # edited to fit other data
    (out / "manifest.json").write_text(json.dumps(data))
    Path(config.data.games[0]).rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="manifest.json does not match itself"):
        dataset_of(config)


def test_a_corrupt_file_that_reaches_training_names_its_path(bundled_data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bundled_data_dir, out)
    truncate(out / TRAIN)
    with pytest.raises(UnreadableDataset) as raised:
        open_dataset(2, out)  # no check in between: the trainer's own open
    message = str(raised.value)
    assert message.startswith(f"dataset file {out / TRAIN} is not a readable Arrow file (")
    games = manifest(out)["sources"]["inputs"][0]
    assert message.endswith(f"rebuild it with `sweep data build --games {games} --out {out}`")
    assert "\n" not in message and isinstance(raised.value, UserError)


def test_a_missing_file_is_rebuilt_when_the_games_are_there(tmp_path):
    config, out = small_build(tmp_path)
    (out / "stage2" / "val.feather").unlink()
    ensure_datasets(DataConfig(games=config.data.games, dir=str(out)), progress=False)
    assert verify_dataset(out, None, "full").ok


def test_trials_check_sizes_and_never_hash(tmp_path, monkeypatch):
    from maou.data import verify

    config, out = small_build(tmp_path)
    shutil.copy2(out / TRAIN, tmp_path / "train.copy")
    os.replace(tmp_path / "train.copy", out / TRAIN)  # same bytes, a new file: the run's check reads it
    hashed: list[Path] = []
    real = verify.file_sha256
    monkeypatch.setattr(verify, "file_sha256", lambda path: hashed.append(path) or real(path))
    dataset_of(config)  # the run's preparation
    assert hashed == [out / TRAIN]
    for _ in range(3):  # its trials
        load_datasets(config)
    dataset_of(config)  # a resumed run on the untouched data
    assert hashed == [out / TRAIN]


def tiny_spec(tmp_path: Path, config) -> Path:
    import yaml

    data = {"name": "proven", "stage": 2, "seeds": 1, "steps": [{"name": "baseline"}],
            "data": {"games": list(config.data.games), "dir": config.data.dir},
            "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "eval_rows": 64, "batch_size": 32},
            "budget": {"max_steps": 4, "eval_every": 2},
            "storage": f"sqlite:///{tmp_path}/proven.db", "runs_dir": str(tmp_path / "runs")}
    path = tmp_path / "proven.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
    return lines[0]


@pytest.mark.slow
def test_sweep_run_and_train_prove_the_data_first(tmp_path):
    from sweep_helpers import run_cli

    config, out = small_build(tmp_path)
    spec = tiny_spec(tmp_path, config)
    first = run_cli("run", str(spec), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "rebuilding" not in first.stderr
    flip(out / TRAIN)
    resumed = run_cli("run", str(spec), cwd=tmp_path)  # same recorded hash once rebuilt: the sweep resumes
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"dataset file {out / TRAIN} does not match its manifest: SHA-256" in resumed.stderr
    assert f"; rebuilding from {config.data.games[0]}" in resumed.stderr

    games = Path(config.data.games[0])
    games.rename(tmp_path / "elsewhere")
    truncate(out / TRAIN)
    rebuild = f"restore them and run `sweep data build --games {games} --out {out}`"
    line = one_line_error(run_cli("run", str(spec), cwd=tmp_path))
    assert line.startswith(f"sweep run: error: dataset file {out / TRAIN} does not match its manifest: ")
    assert line.endswith(rebuild)
    train_config = tmp_path / "train.yaml"
    train_config.write_text(json.dumps({"stage": 2, "data": {"games": [str(games)], "dir": str(out)},
                                        "budget": {"max_steps": 2, "eval_every": 1}}))
    line = one_line_error(run_cli("train", str(train_config), "--out", str(tmp_path / "t"), cwd=tmp_path))
    assert line.startswith(f"sweep train: error: dataset file {out / TRAIN}") and line.endswith(rebuild)
    assert not (tmp_path / "t").exists()  # refused before anything was written
