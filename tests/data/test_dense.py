"""Upstream's dense copy of a built Stage 2/3 split (``sweep export --upstream-data``): exactly
upstream's columns, every row's targets the tensors a trial trains on from the compact file, read
back by our own dense reader, written a slice at a time, kept when it is already current."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from maou.data import dense
from maou.data.dense import (
    SOURCE_ROWS,
    SOURCE_SHA256,
    copy_metadata,
    dense_bytes,
    dense_schema,
    is_current_copy,
    needs_dense_copy,
    size_text,
    write_dense_copy,
)
from maou.shogi import MOVE_LABELS_NUM
from maou.trainer.columns import BitpackedTarget, DenseTarget, SparseTarget
from maou.trainer.tensors import load_stage_data

UPSTREAM_COLUMNS = {2: ["id", "boardIdPositions", "piecesInHand", "legalMovesLabel"],
                    3: ["id", "boardIdPositions", "piecesInHand", "moveLabel", "resultValue"]}


def read(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def manifest_entry(build: Path, stage: int, split: str) -> dict:
    return json.loads((build / f"stage{stage}" / "manifest.json").read_text())["files"][split]


@pytest.fixture(scope="module")
def dense_dirs(bundled_data_dir, tmp_path_factory):
    """The bundled build's Stage 2 and 3 splits converted into a folder laid out like a build, in
    slices of about 1 MB (dozens of record batches)."""
    out = tmp_path_factory.mktemp("dense")
    copies = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dense, "SLICE_BYTES", 1 << 20)
        for stage in (2, 3):
            for split in ("train", "val"):
                source = bundled_data_dir / f"stage{stage}" / f"{split}.feather"
                copies[stage, split] = write_dense_copy(source, out / f"stage{stage}" / f"{split}.feather", stage,
                                                        manifest_entry(bundled_data_dir, stage, split)["sha256"],
                                                        progress=False)
    return out, copies


@pytest.mark.parametrize("stage", [2, 3])
def test_the_dense_copy_has_exactly_upstreams_columns_and_every_row(stage, bundled_data_dir, dense_dirs):
    out, copies = dense_dirs
    copy = copies[stage, "train"]
    path = out / f"stage{stage}" / "train.feather"
    table = read(path)
    assert table.column_names == UPSTREAM_COLUMNS[stage]
    assert table.schema.remove_metadata().equals(dense_schema(stage))
    target = table.schema.field(UPSTREAM_COLUMNS[stage][3]).type
    assert pa.types.is_fixed_size_list(target) and target.list_size == MOVE_LABELS_NUM
    assert target.value_type == (pa.uint8() if stage == 2 else pa.float32())
    if stage == 3:
        assert table.schema.field("resultValue").type == pa.float32()
    assert table.num_rows == copy.rows == manifest_entry(bundled_data_dir, stage, "train")["rows"] > 10_000
    assert copy.written and copy.bytes == path.stat().st_size and copy.rows_per_s > 0
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches > 10  # written a slice at a time, never the whole table
        batch_rows = max(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    assert batch_rows * dense.dense_row_bytes(stage) <= 1 << 20
    built = read(bundled_data_dir / f"stage{stage}" / "train.feather")
    assert table.column("id").equals(built.column("id"))  # the same rows, in the same order


@pytest.mark.parametrize("stage", [2, 3])
def test_our_dense_reader_gives_the_tensors_the_compact_file_decodes_to(stage, bundled_data_dir, dense_dirs):
    out, _ = dense_dirs
    mapped = load_stage_data(stage, out)
    for split in (mapped.train, mapped.val):  # read through upstream's dense columns, not a compact one
        assert all(type(c) is DenseTarget for c in split.columns.values())
    compact = load_stage_data(stage, bundled_data_dir)
    assert any(isinstance(c, (BitpackedTarget, SparseTarget)) for c in compact.train.columns.values())
    copy, reference = load_stage_data(stage, out, storage="memory"), load_stage_data(stage, bundled_data_dir,
                                                                                       storage="memory")
    for name in ("train", "val"):
        a, b = getattr(copy, name), getattr(reference, name)
        assert len(a) == len(b)
        for x, y in ((a.board, b.board), (a.hand, b.hand)):
            assert x.dtype == y.dtype and torch.equal(x, y)
        assert a.targets.keys() == b.targets.keys()
        for key in a.targets:  # every row, bit for bit, in the trainer's dtype
            assert a.targets[key].dtype == b.targets[key].dtype and torch.equal(a.targets[key], b.targets[key]), key


def test_the_dense_targets_are_the_compact_ones_decoded_independently(bundled_data_dir, dense_dirs):
    """Not only the codecs against themselves: numpy's unpackbits and the sparse entries agree."""
    out, _ = dense_dirs
    built2, copy2 = read(bundled_data_dir / "stage2" / "train.feather"), read(out / "stage2" / "train.feather")
    bits = built2.column("legalMovesBits").combine_chunks().flatten().to_numpy().reshape(-1, MOVE_LABELS_NUM // 8)
    legal = copy2.column("legalMovesLabel").combine_chunks().flatten().to_numpy().reshape(-1, MOVE_LABELS_NUM)
    assert np.array_equal(legal, np.unpackbits(bits, axis=1, bitorder="little"))
    assert 50 < legal.sum(axis=1).mean() < 200  # real positions: about a hundred legal labels
    built3, copy3 = read(bundled_data_dir / "stage3" / "train.feather"), read(out / "stage3" / "train.feather")
    policy = copy3.column("moveLabel").combine_chunks().flatten().to_numpy().reshape(-1, MOVE_LABELS_NUM)
    sparse = built3.column("moveLabelSparse").to_pylist()
    for row in (0, 1, len(sparse) // 2, len(sparse) - 1):
        expected = np.zeros(MOVE_LABELS_NUM, dtype=np.float32)
        for entry in sparse[row]:
            expected[entry["label"]] = np.float32(np.float16(entry["weight"]))
        assert np.array_equal(policy[row], expected)
    assert np.allclose(policy.sum(axis=1), 1.0, atol=1e-2)
    assert np.array_equal(copy3.column("resultValue").to_numpy(), built3.column("resultValue").to_numpy())


def test_a_copy_of_the_same_data_is_kept_another_rewritten(bundled_data_dir, tmp_path):
    source = bundled_data_dir / "stage3" / "val.feather"
    sha = manifest_entry(bundled_data_dir, 3, "val")["sha256"]
    dest = tmp_path / "upstream-data" / "stage3" / "train.feather"
    first = write_dense_copy(source, dest, 3, sha, progress=False)
    assert first.written and is_current_copy(dest, 3, sha)
    meta = copy_metadata(dest) or {}
    assert meta[SOURCE_SHA256] == sha.encode() and int(meta[SOURCE_ROWS]) == first.rows
    again = write_dense_copy(source, dest, 3, sha, progress=False)
    assert not again.written and again.rows == first.rows and again.bytes == first.bytes
    assert not is_current_copy(dest, 3, "0" * 64) and not is_current_copy(dest, 3, None)
    assert not is_current_copy(dest, 2, sha)  # another stage's columns
    other = write_dense_copy(source, dest, 3, "0" * 64, progress=False)
    assert other.written and is_current_copy(dest, 3, "0" * 64)
    assert [p.name for p in dest.parent.iterdir()] == ["train.feather"]  # no temporary file left behind


def test_a_failed_conversion_leaves_no_file(bundled_data_dir, tmp_path, monkeypatch):
    source = bundled_data_dir / "stage2" / "val.feather"
    dest = tmp_path / "stage2" / "train.feather"

    def broken(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(dense, "_dense_slice", broken)
    with pytest.raises(RuntimeError, match="killed"):
        write_dense_copy(source, dest, 2, "a" * 64, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_an_unreadable_built_file_is_named(tmp_path):
    from maou.errors import UserError

    bad = tmp_path / "stage2" / "train.feather"
    bad.parent.mkdir()
    bad.write_bytes(b"not arrow at all")
    with pytest.raises(UserError, match="not a readable Arrow file"):
        write_dense_copy(bad, tmp_path / "out.feather", 2, progress=False)
    with pytest.raises(UserError, match="no dataset file"):
        write_dense_copy(tmp_path / "missing.feather", tmp_path / "out.feather", 2, progress=False)


def test_sizes_and_which_stages_need_a_copy():
    assert not needs_dense_copy(1) and needs_dense_copy(2) and needs_dense_copy(3)
    assert dense_bytes(2, 5_000_000) == 5_000_000 * (8 + 81 + 14 + 1496)  # about 8 GB: 7.5 of it the targets
    assert dense_bytes(3, 1) == 8 + 81 + 14 + 1496 * 4 + 4
    assert size_text(dense_bytes(2, 5_000_000)) == "8.0 GB"
    assert [size_text(n) for n in (999, 12_345, 3_210_000, 216_000_000)] == ["999 B", "12.3 kB", "3.2 MB", "216 MB"]


def test_upstreams_polars_reading_gives_the_same_arrays(dense_dirs):
    """Upstream reads the file into polars and explodes each list column (its
    ``convert_stage2_df_to_columnar``); polars is not a dependency here, so this runs where it is."""
    pl = pytest.importorskip("polars")
    out, _ = dense_dirs
    for stage, target, dtype in ((2, "legalMovesLabel", np.uint8), (3, "moveLabel", np.float32)):
        table = read(out / f"stage{stage}" / "train.feather")
        frame = pl.from_arrow(table)
        rows = len(frame)
        exploded = frame[target].explode().to_numpy().reshape(rows, MOVE_LABELS_NUM)
        expected = table.column(target).combine_chunks().flatten().to_numpy().reshape(rows, MOVE_LABELS_NUM)
        assert exploded.dtype == dtype and np.array_equal(exploded, expected)
        board = frame["boardIdPositions"].explode().explode().to_numpy().reshape(rows, 9, 9)
        assert np.array_equal(board, table.column("boardIdPositions").combine_chunks().flatten().flatten()
                              .to_numpy().reshape(rows, 9, 9))


def test_the_copy_is_lz4_compressed_as_upstream_writes_its_files(dense_dirs):
    out, _ = dense_dirs
    path = out / "stage2" / "train.feather"
    rows = read(path).num_rows
    assert path.stat().st_size < dense_bytes(2, rows) / 3  # mostly zeros: compressed
