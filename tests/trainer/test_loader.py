"""The memory-mapped loader: the same tensors as the in-memory splits, bit for bit, across record
batches; the same training; upstream's dense columns; the row order; the prefetching thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sweep_helpers import bundled_games

from maou.data import writers
from maou.data.build import build_datasets
from maou.trainer.loop import train_stage
from maou.trainer.mapped import MappedSplit
from maou.trainer.prefetch import BLOCK_ROWS, Prefetcher, batch_indices, resolve_shuffle
from maou.trainer.split import Split
from maou.trainer.tensors import load_stage_data

BUNDLED_GAMES = Path(__file__).resolve().parents[2] / "data" / "games"


@pytest.fixture(scope="module")
def chunked_dir(tmp_path_factory):
    """Datasets of 40 bundled games written in record batches of 300 rows (several per file)."""
    files = bundled_games(40)
    out = tmp_path_factory.mktemp("chunked")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writers, "RECORD_BATCH_ROWS", 300)
        build_datasets(files, out, val_fraction=0.2, progress=False, workers=1)
    return out


def assert_same(a: tuple, b: tuple) -> None:
    for x, y in zip(a[:2], b[:2]):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert a[2][name].dtype == b[2][name].dtype and torch.equal(a[2][name], b[2][name]), name


@pytest.mark.parametrize("stage", [2, 3])
def test_mapped_batches_equal_the_in_memory_split(chunked_dir, stage):
    mapped = load_stage_data(stage, chunked_dir).train
    memory = load_stage_data(stage, chunked_dir, storage="memory").train
    assert isinstance(mapped, MappedSplit) and isinstance(memory, Split)
    assert mapped.zero_copy and len(mapped.board.chunks) > 3 and len(mapped) == len(memory)
    generator = torch.Generator().manual_seed(stage)
    for size in (1, 7, 300, 1000):  # unsorted, repeated rows across record batches
        index = torch.randint(0, len(mapped), (size,), generator=generator)
        assert_same(mapped.batch(index), memory.batch(index))
    assert_same(mapped.batch(torch.zeros(0, dtype=torch.long)), memory.batch(torch.zeros(0, dtype=torch.long)))
    for a, b in zip(mapped.iter_batches(250), memory.iter_batches(250)):
        assert_same(a, b)
    for a, b in zip(mapped.iter_targets(333), memory.iter_targets(333)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    keep = torch.tensor([5, 1, 900])
    assert_same(mapped.subset(keep).batch(torch.arange(3)), memory.batch(keep))


def test_compact_rows_are_a_few_hundred_bytes(chunked_dir):
    stage2, stage3 = load_stage_data(2, chunked_dir).train, load_stage_data(3, chunked_dir).train
    assert stage2.bytes_per_row() == 81 + 14 + 187           # board, hand, bit-packed legal moves
    assert 81 + 14 + 4 + 4 + 4 <= stage3.bytes_per_row() < 300  # + value, offset, >= 1 (label, weight)


@pytest.mark.parametrize("stage", [2, 3])
def test_the_bundled_corpus_trains_to_the_same_metrics_mapped_and_in_memory(stage, bundled_data_dir, tiny_config):
    config = tiny_config(stage, max_steps=30, eval_every=15, eval_rows=2000,
                         model={"hidden_dim": 16, "dropout": 0.1} if stage == 2 else {})
    mapped = train_stage(config, load_stage_data(stage, bundled_data_dir))
    memory = train_stage(config, load_stage_data(stage, bundled_data_dir, storage="memory"))
    assert mapped.history == memory.history and mapped.steps_done == 30  # every metric of every evaluation
    assert 0.0 <= mapped.data_wait_share < 1.0


def test_upstream_dense_lz4_files_load_through_the_mapping(synthetic_datasets, tmp_path):
    folder = synthetic_datasets(tmp_path, 50, 10)  # upstream's dense columns, lz4 compressed
    for stage in (2, 3):
        mapped = load_stage_data(stage, folder).train
        memory = load_stage_data(stage, folder, storage="memory").train
        assert not mapped.zero_copy  # compressed: decompressed into memory, not mapped
        assert_same(mapped.batch(torch.arange(50).flip(0)), memory.batch(torch.arange(50).flip(0)))
        assert memory.targets[("legal_moves" if stage == 2 else "policy")].dtype == \
            (torch.uint8 if stage == 2 else torch.float32)


def _as_upstream(table, stage: int):
    """``table`` (fixed-size lists) as upstream's polars ``write_ipc`` writes its Stage 2/3 files:
    every list a large_list (the board 9 x 9), only upstream's columns (no ``count``)."""
    import pyarrow as pa

    def values(name: str) -> np.ndarray:
        array = table.column(name).combine_chunks()
        while pa.types.is_fixed_size_list(array.type):
            array = array.flatten()
        return array.to_numpy()

    def large(flat: np.ndarray, *widths: int):
        array = pa.array(flat)
        for width in reversed(widths):
            array = pa.LargeListArray.from_arrays(pa.array(np.arange(0, len(array) + 1, width, dtype=np.int64)), array)
        return array

    target = {"legalMovesLabel": large(values("legalMovesLabel"), 1496)} if stage == 2 else \
        {"moveLabel": large(values("moveLabel").astype(np.float32), 1496), "resultValue": table.column("resultValue")}
    return pa.table({"id": table.column("id"), "boardIdPositions": large(values("boardIdPositions"), 9, 9),
                     "piecesInHand": large(values("piecesInHand"), 14), **target})


@pytest.mark.parametrize("stage", [2, 3])
def test_upstream_preprocessed_dense_files_train(stage, synthetic_datasets, tiny_config, tmp_path):
    """Upstream's pre-processed Stage 2/3 feathers (``legalMovesLabel`` / ``moveLabel`` and
    ``resultValue``, large_list columns, ZSTD, several record batches) load as the same tensors and
    train."""
    import pyarrow.feather as feather

    fixed = synthetic_datasets(tmp_path / "fixed", 60, 20)
    upstream = tmp_path / "upstream"
    (upstream / f"stage{stage}").mkdir(parents=True)
    for split in ("train", "val"):
        table = feather.read_table(fixed / f"stage{stage}" / f"{split}.feather")
        feather.write_feather(_as_upstream(table, stage), upstream / f"stage{stage}" / f"{split}.feather",
                              compression="zstd", chunksize=16)
    data = load_stage_data(stage, upstream)
    reference = load_stage_data(stage, fixed, storage="memory")
    for split in ("train", "val"):
        rows = torch.arange(len(getattr(reference, split))).flip(0)
        assert_same(getattr(data, split).batch(rows), getattr(reference, split).batch(rows))
    result = train_stage(tiny_config(stage, max_steps=2, eval_every=2, batch_size=16), data)
    assert result.steps_done == 2 and np.isfinite(result.final_metrics["val_loss"])


def test_full_shuffle_draws_the_in_memory_loops_batches():
    generator, again = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = list(batch_indices(10, 4, 7, generator))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2, 4]  # epochs of ceil(10 / 4) batches
    first, second = torch.randperm(10, generator=again), torch.randperm(10, generator=again)
    assert torch.equal(torch.cat(batches[:3]), first) and torch.equal(torch.cat(batches[3:6]), second)


def test_block_shuffle_visits_every_row_once_in_nearly_sequential_blocks():
    rows = 3 * BLOCK_ROWS + 123
    epoch = torch.cat(list(batch_indices(rows, 1000, -(-rows // 1000), torch.Generator().manual_seed(0), "block")))
    assert torch.equal(epoch.sort().values, torch.arange(rows))
    assert not torch.equal(epoch, torch.arange(rows))
    again = torch.cat(list(batch_indices(rows, 1000, -(-rows // 1000), torch.Generator().manual_seed(0), "block")))
    assert torch.equal(epoch, again)
    window = epoch[:BLOCK_ROWS * 2]  # rows of one window come from whole blocks
    assert len(torch.unique(window // BLOCK_ROWS)) <= 4


def test_auto_shuffle_blocks_only_data_larger_than_half_the_memory(chunked_dir):
    split = load_stage_data(2, chunked_dir).train
    assert resolve_shuffle("auto", split) == "full" and resolve_shuffle("block", split) == "block"
    assert resolve_shuffle("auto", Split(torch.zeros(1, 9, 9), torch.zeros(1, 14), {})) == "full"

    class Huge:
        def __len__(self) -> int:
            return 1 << 40

        def bytes_per_row(self) -> float:
            return 282.0

    assert resolve_shuffle("auto", Huge()) == "block"


def test_block_shuffled_training_runs(dataset_dir, tiny_config):
    config = tiny_config(2, max_steps=10, eval_every=10, loader={"shuffle": "block", "prefetch_batches": 2})
    result = train_stage(config, load_stage_data(2, dataset_dir))
    assert result.steps_done == 10 and np.isfinite(result.final_metrics["val_loss"])


def test_the_prefetcher_runs_ahead_in_order_and_stops_when_closed():
    produced: list[int] = []

    def produce(index: torch.Tensor) -> torch.Tensor:
        produced.append(int(index))
        return index * 10

    stream = Prefetcher(produce, iter(torch.arange(1000)), depth=3, device=torch.device("cpu"))
    assert [int(next(stream)) for _ in range(5)] == [0, 10, 20, 30, 40]
    deadline = time.time() + 5
    while len(produced) < 5 + 3 and time.time() < deadline:
        time.sleep(0.01)
    assert 5 + 3 <= len(produced) <= 5 + 3 + 1  # ahead by its depth, not more
    stream.close()
    assert not stream.thread.is_alive() and len(produced) < 20
    assert list(Prefetcher(produce, iter(torch.arange(3)), 2, torch.device("cpu"))) == [0, 10, 20]


def test_an_error_in_the_prefetch_thread_is_raised_in_the_training_thread():
    def produce(index: torch.Tensor) -> torch.Tensor:
        if int(index) == 2:
            raise ValueError("bad row 2")
        return index

    stream = Prefetcher(produce, iter(torch.arange(5)), 2, torch.device("cpu"))
    assert [int(next(stream)) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="bad row 2"):
        next(stream)
    stream.close()
    assert not stream.thread.is_alive() and stream.thread not in threading.enumerate()  # its thread ended


def test_on_cpu_the_training_thread_gathers_each_batch_itself(chunked_dir):
    """No prefetch thread competes with torch's CPU threads: the batches of a mapped split's stream
    are gathered and decoded when asked for, and equal the in-memory split's."""
    mapped = load_stage_data(2, chunked_dir).train
    memory = load_stage_data(2, chunked_dir, storage="memory").train
    indices = list(batch_indices(len(mapped), 64, 30, torch.Generator().manual_seed(1)))
    before = threading.active_count()
    stream = mapped.stream(iter(indices), depth=4)
    assert threading.active_count() == before and not isinstance(stream, Prefetcher)
    for index in indices:
        assert_same(next(stream), memory.batch(index))
    with pytest.raises(StopIteration):
        next(stream)
    stream.close()
