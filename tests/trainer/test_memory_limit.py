"""A dataset larger than a process's memory limit still trains: its file is mapped, not loaded.

The child process limits its data segment (``RLIMIT_DATA``: heap and private writable mappings;
a read-only file mapping does not count) to what it uses after its imports and a warm-up plus 64 MB, and the
dataset file is larger than that whole limit. Loading the split into memory fails there;
training on the mapping runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maou.data.writers import DatasetFile, stage2_schema, stage2_table
from maou.shogi.shapes import BOARD_SHAPE, HCP_BYTES, MOVE_LABELS_PACKED_BYTES, PIECES_IN_HAND_NUM

pytestmark = pytest.mark.slow
ROWS = 2_000_000
CHUNK = 100_000

CHILD = r"""
import json, resource, sys
import torch
from maou.strict import with_overrides
from maou.trainer.config import train_config_from_dict
from maou.trainer.loop import train_stage
from maou.trainer.tensors import load_stage_data

torch.set_num_threads(1)
folder, mode = sys.argv[1], sys.argv[2]
config = train_config_from_dict({"stage": 2, "model": {"blocks": 2, "channels": 16}, "batch_size": 256,
                                 "budget": {"max_steps": 40, "eval_every": 20}, "eval_rows": 512,
                                 "device": "cpu", "threads": 1})
# before the limit: map the files, start pyarrow's threads, and let oneDNN build its kernels
data = load_stage_data(2, folder)
train_stage(with_overrides(config, {"budget.max_steps": 2, "budget.eval_every": 2}), data)

def vm_data():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmData"].split()[0]) * 1024

limit = vm_data() + (64 << 20)
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
out = {"limit": limit}
if mode == "memory":
    try:
        load_stage_data(2, folder, storage="memory")
        out["loaded"] = True
    except (MemoryError, RuntimeError) as error:  # numpy's MemoryError, torch's allocator error
        out["error"] = str(error)[:200] or type(error).__name__
else:
    result = train_stage(config, data)
    out.update(steps=result.steps_done, val_loss=result.final_metrics["val_loss"], vm_data=vm_data())
print(json.dumps(out))
"""


def _random_split(path: Path, rows: int, seed: int) -> None:
    """Stage 2 rows of the real schema with random contents (training needs no meaning here)."""
    rng = np.random.default_rng(seed)
    out = DatasetFile(path, stage2_schema())
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        board = rng.integers(0, 29, (n, *BOARD_SHAPE), dtype=np.uint8)
        hand = rng.integers(0, 3, (n, PIECES_IN_HAND_NUM), dtype=np.uint8)
        bits = rng.integers(0, 256, (n, MOVE_LABELS_PACKED_BYTES), dtype=np.uint8)
        out.write(stage2_table(np.arange(start, start + n, dtype=np.uint64), np.zeros((n, HCP_BYTES), np.uint8),
                               board, hand, bits))
    out.close()


def _child(folder: Path, mode: str) -> dict:
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def disk_folder():
    """A folder on disk, not in memory (the suite's temporary folders may be a tmpfs, whose pages a
    mapping of them would hold in memory)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="maou-memory-limit-", dir="/var/tmp" if Path("/var/tmp").is_dir() else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_dataset_larger_than_the_memory_limit_trains_from_the_mapping(disk_folder):
    folder = disk_folder / "big"
    _random_split(folder / "stage2" / "train.feather", ROWS, seed=0)
    _random_split(folder / "stage2" / "val.feather", 4096, seed=1)
    size = (folder / "stage2" / "train.feather").stat().st_size
    dense = _child(folder, "memory")
    assert "loaded" not in dense and size > dense["limit"], dense  # in memory it does not fit
    mapped = _child(folder, "mapped")
    assert size > mapped["limit"] >= mapped["vm_data"]
    assert mapped["steps"] == 40 and np.isfinite(mapped["val_loss"])
    print(json.dumps({"file_mb": size >> 20, "limit_mb": mapped["limit"] >> 20, "dense": dense["error"]}))
