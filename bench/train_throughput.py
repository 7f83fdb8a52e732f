"""Training throughput: ``train_stage`` against a bare hand-written PyTorch loop, and the compact
(memory-mapped) data path against the dense in-memory one.

1. Framework overhead: same model (``build_model``), batch, optimizer (AdamW), gradient clipping,
   autocast and data (whole tensors on the device, batches by slicing a seeded permutation); the
   bare loop has no schedule, no loss bookkeeping, no callbacks. Samples/s of both, their ratio
   (goal >= 0.95) and the share of the step time spent taking batches (goal < 5%).
2. Compact vs dense, Stages 2 and 3: the same synthetic rows written as a dataset file (bit-packed
   legal moves, sparse policy) and trained through the mapping (gathered, copied to the device,
   unpacked there; prefetched in a thread on CUDA), against the same rows as dense tensors moved to the
   device once. Samples/s of both, their ratio (goal >= 0.95) and the compact path's data wait.
3. ``--demo``: the demo sweep's shape (``sweeps/demo.yaml``: the bundled corpus built with
   ``maou.data.build``, Stage 2, ResNet 2 blocks x 32 channels, batch 64, 2 threads, eval_rows
   1024, 200 steps evaluated every 25): ``train_stage`` on the memory-mapped split against the
   same rows held in memory (``storage="memory"``). Samples/s of both (median of ``--repeats``
   interleaved runs), their ratio (goal >= 0.95), and that both reach the same ``val_f1``.

Timings on a shared machine are noisy: each is the best of ``--repeats`` interleaved runs (the
median in ``--demo``).

    python bench/train_throughput.py                        # small, a few minutes on 2 CPU cores
    python bench/train_throughput.py --demo                 # the demo's shape, mapped vs in memory
    python bench/train_throughput.py --device cuda --blocks 10 --channels 128 --batch 1024 \\
        --rows 65536 --steps 300                            # realistic, bf16 autocast on CUDA
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from maou.data.writers import stage2_table, stage3_table, write_table
from maou.layout import pack_flags
from maou.shogi.shapes import BOARD_SHAPE, HCP_BYTES, MOVE_LABELS_NUM, PIECE_IDS_NUM, PIECES_IN_HAND_NUM
from maou.strict import with_overrides
from maou.trainer.config import train_config_from_dict
from maou.trainer.loop import resolve_device, train_stage
from maou.trainer.models import build_model
from maou.trainer.split import Split
from maou.trainer.tensors import StageData, load_stage_data

REPO = Path(__file__).resolve().parents[1]


def synthetic_stage2(rows: int, seed: int = 0) -> Split:
    """Random boards (30% occupied), hands and 7.5%-dense legal-move targets: the stage 2 shapes."""
    g = torch.Generator().manual_seed(seed)
    occupied = torch.rand(rows, *BOARD_SHAPE, generator=g) < 0.3
    board = (torch.randint(1, PIECE_IDS_NUM, (rows, *BOARD_SHAPE), generator=g) * occupied).to(torch.uint8)
    hand = torch.randint(0, 3, (rows, PIECES_IN_HAND_NUM), generator=g).to(torch.uint8)
    legal = (torch.rand(rows, MOVE_LABELS_NUM, generator=g) < 0.075).to(torch.uint8)
    return Split(board, hand, {"legal_moves": legal})


def synthetic_stage3(rows: int, seed: int = 0) -> Split:
    """Stage 2's boards and hands, a policy over 1 to 3 played moves (float16 frequencies) and a value."""
    base = synthetic_stage2(rows, seed)
    g = torch.Generator().manual_seed(seed + 100)
    policy = torch.zeros(rows, MOVE_LABELS_NUM)
    for _ in range(3):
        policy[torch.arange(rows), torch.randint(0, MOVE_LABELS_NUM, (rows,), generator=g)] += \
            (torch.rand(rows, generator=g) < 0.6).float() + 0.01
    policy = (policy / policy.sum(1, keepdim=True)).half().float()  # what the files hold: float16
    value = torch.rand(rows, generator=g).round(decimals=1)
    return Split(base.board, base.hand, {"policy": policy, "value": value})


def write_compact(split: Split, stage: int, path: Path) -> None:
    """``split`` as a dataset file in the compact layout sweep data build writes."""
    n = len(split)
    common = (np.arange(n, dtype=np.uint64), np.zeros((n, HCP_BYTES), np.uint8), split.board.numpy(),
              split.hand.numpy())
    if stage == 2:
        write_table(path, stage2_table(*common, pack_flags(split.targets["legal_moves"].numpy())))
        return
    policy = split.targets["policy"].numpy()
    rows, labels = np.nonzero(policy)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    write_table(path, stage3_table(*common, (offsets, labels, policy[rows, labels].astype(np.float16)),
                                   split.targets["value"].numpy(), np.ones(n, np.uint32)))


def compact_vs_dense(config, stage: int, rows: int, repeats: int) -> dict[str, float]:
    """Samples/s of train_stage on the same rows, memory-mapped compact file vs dense tensors (the
    best of ``repeats`` interleaved runs), printed and returned with their ratio and the data wait."""
    make = synthetic_stage2 if stage == 2 else synthetic_stage3
    train, val = make(rows), make(512, seed=1)
    config = with_overrides(config, {"stage": stage, "eval_at_start": False})
    with tempfile.TemporaryDirectory() as tmp:
        for name, split in (("train", train), ("val", val)):
            write_compact(split, stage, Path(tmp) / f"stage{stage}" / f"{name}.feather")
        data = {"dense": StageData(stage, train, val), "compact": load_stage_data(stage, tmp)}
        train_stage(with_overrides(config, {"budget.max_steps": 5, "budget.eval_every": 5}), data["compact"])
        speed: dict[str, list[float]] = {"dense": [], "compact": []}
        waits = []
        for _ in range(repeats):
            for kind in ("dense", "compact"):
                result = train_stage(config, data[kind])
                speed[kind].append(result.samples_per_s)
                if kind == "compact":
                    waits.append(result.data_wait_share)
    dense, compact = max(speed["dense"]), max(speed["compact"])
    print(f"stage {stage}: dense {dense:,.0f} samples/s (runs {', '.join(f'{v:,.0f}' for v in speed['dense'])}), "
          f"compact {compact:,.0f} (runs {', '.join(f'{v:,.0f}' for v in speed['compact'])}): ratio "
          f"{compact / dense:.3f} (goal >= 0.95); compact data wait {100 * min(waits):.2f}% of step time (goal < 5%)")
    return {"dense": dense, "compact": compact, "ratio": compact / dense, "data_wait": min(waits)}


def demo_config(device: str = "cpu", threads: int = 2, steps: int = 200):
    """The base training configuration of ``sweeps/demo.yaml`` (its data: the bundled corpus)."""
    return train_config_from_dict({
        "stage": 2, "data": {"games": [str(REPO / "data" / "games")]},
        "model": {"arch": "resnet", "blocks": 2, "channels": 32},
        "optim": {"name": "adamw", "lr": 0.003, "warmup_fraction": 0.05}, "batch_size": 64, "threads": threads,
        "eval_rows": 1024, "budget": {"max_steps": steps, "eval_every": 25}, "device": device})


def demo_data(config) -> Path:
    """The bundled corpus built (once, in ``data/build``) as the demo sweep builds it."""
    import dataclasses

    from maou.data.build import build_dir, ensure_datasets

    where = REPO / build_dir(config.data)  # data/build/<key> of the repository, wherever this runs from
    return ensure_datasets(dataclasses.replace(config.data, dir=str(where)), progress=False, stages=[config.stage])


def mapped_vs_memory(config, folder: Path, repeats: int) -> dict[str, float]:
    """``train_stage`` samples/s on the memory-mapped split and on the same rows in memory
    (median of ``repeats`` interleaved runs after a warm-up of each), and each one's ``val_f1``."""
    data = {"mapped": load_stage_data(config.stage, folder),
            "memory": load_stage_data(config.stage, folder, storage="memory")}
    warm = with_overrides(config, {"budget.max_steps": 5, "budget.eval_every": 5})
    for kind in data:
        train_stage(warm, data[kind])
    speed: dict[str, list[float]] = {"mapped": [], "memory": []}
    f1: dict[str, float] = {}
    for _ in range(repeats):
        for kind in data:
            result = train_stage(config, data[kind])
            speed[kind].append(result.samples_per_s)
            f1[kind] = result.final_metrics["val_f1"]
    mapped, memory = statistics.median(speed["mapped"]), statistics.median(speed["memory"])
    print(f"rows: train {len(data['mapped'].train):,}, val {len(data['mapped'].val):,}")
    for kind in data:
        print(f"{kind:7s}: {statistics.median(speed[kind]):8,.0f} samples/s median (runs "
              f"{', '.join(f'{v:,.0f}' for v in speed[kind])}), val_f1 {f1[kind]:.6f}")
    print(f"ratio  : {mapped / memory:.3f} mapped / in memory (goal >= 0.95); val_f1 "
          f"{'equal' if f1['mapped'] == f1['memory'] else 'DIFFERENT'}")
    return {"mapped": mapped, "memory": memory, "ratio": mapped / memory, "f1_mapped": f1["mapped"],
            "f1_memory": f1["memory"]}


def demo(args: argparse.Namespace) -> int:
    config = demo_config(str(resolve_device(args.device)), args.threads)
    torch.set_num_threads(max(1, config.threads))
    folder = demo_data(config)
    print(f"demo shape: stage 2, resnet 2 blocks x 32 channels, batch 64, threads {config.threads}, eval_rows "
          f"1024, 200 steps every 25, device {config.device}; {folder}")
    mapped_vs_memory(config, folder, args.repeats)
    return 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_indices(rows: int, batch: int, steps: int, seed: int, device: torch.device):
    """``steps`` batches of row indices, a fresh seeded permutation each epoch, as train_stage draws them."""
    generator = torch.Generator().manual_seed(seed)
    order, cursor = None, rows
    for _ in range(steps):
        if cursor >= rows:
            order, cursor = torch.randperm(rows, generator=generator).to(device), 0
        yield order[cursor: cursor + batch]
        cursor += batch


def bare_loop(config, split: Split, device: torch.device, steps: int) -> float:
    """A hand-written loop over the same model and data; returns samples/s."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                  fused=True if device.type == "cuda" else None)
    data = split.to(device)
    board, hand, target = data.board, data.hand, data.targets["legal_moves"]
    batch = config.batch_size
    amp = device.type == "cuda" and config.amp
    sync(device)
    started = time.perf_counter()
    for index in epoch_indices(len(data), batch, steps, config.seed, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(board[index], hand[index])["legal_moves"]
        loss = F.binary_cross_entropy_with_logits(logits.float(), target[index].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
    sync(device)
    return steps * batch / (time.perf_counter() - started)


def fetch_only(split: Split, device: torch.device, batch: int, steps: int) -> float:
    """Seconds to take ``steps`` batches alone (permutation, slicing, gathers), as train_stage does."""
    data = split.to(device)
    sync(device)
    started = time.perf_counter()
    for index in epoch_indices(len(data), batch, steps, 0, device):
        data.batch(index)
    sync(device)
    return time.perf_counter() - started


def framework_vs_bare(config, data: StageData, device: torch.device, repeats: int) -> dict[str, float]:
    """``train_stage`` against :func:`bare_loop` on ``data.train`` (best of ``repeats`` interleaved
    runs after a warm-up of each), and the share of the step time taking batches; printed and returned."""
    split, steps, batch = data.train, config.budget.total_steps(len(data.train), config.batch_size), config.batch_size
    warm = with_overrides(config, {"budget.max_steps": 5, "budget.eval_every": 5})
    train_stage(warm, data)                      # warm-up: allocator, cudnn autotuning, thread pools
    bare_loop(warm, split, device, 5)
    framework, bare, shares = [], [], []
    for _ in range(repeats):
        result = train_stage(config, data)
        framework.append(result.samples_per_s)
        shares.append(result.data_wait_share)
        bare.append(bare_loop(config, split, device, steps))
    best_framework, best_bare = max(framework), max(bare)
    fetch_s = fetch_only(split, device, batch, steps)
    step_s = steps * batch / best_framework
    print(f"train_stage : {best_framework:10,.0f} samples/s  (runs: {', '.join(f'{v:,.0f}' for v in framework)})")
    print(f"bare loop   : {best_bare:10,.0f} samples/s  (runs: {', '.join(f'{v:,.0f}' for v in bare)})")
    print(f"ratio       : {best_framework / best_bare:.3f}  (goal >= 0.95)")
    print(f"data wait   : {100 * fetch_s / step_s:.2f}% of step time taking batches alone "
          f"({1e3 * fetch_s / steps:.3f} ms of {1e3 * step_s / steps:.2f} ms per step); "
          f"host-side share inside train_stage {100 * min(shares):.2f}%  (goal < 5%)")
    return {"train_stage": best_framework, "bare": best_bare, "ratio": best_framework / best_bare,
            "fetch_share": fetch_s / step_s, "data_wait": min(shares)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["resnet", "mlp_mixer"], default="resnet")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=8192, help="synthetic stage 2 training rows")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N]")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each loop; the best counts")
    parser.add_argument("--demo", action="store_true",
                        help="the demo sweep's shape only: mapped vs in-memory rows of the bundled corpus")
    args = parser.parse_args(argv)
    if args.demo:
        return demo(args)

    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = train_config_from_dict({
        "stage": 2, "model": {"arch": args.arch, "blocks": args.blocks, "channels": args.channels},
        "batch_size": args.batch, "budget": {"max_steps": args.steps, "eval_every": args.steps}, "eval_rows": 256,
        "device": str(device), "threads": args.threads, "amp": args.amp})
    split = synthetic_stage2(args.rows)
    data = StageData(2, split, synthetic_stage2(512, seed=1))
    amp = device.type == "cuda" and args.amp
    print(f"device {device}{' (bf16 autocast)' if amp else ''}, {args.arch} {args.blocks} blocks x "
          f"{args.channels} channels, batch {args.batch}, {args.steps} steps, {args.rows} rows, "
          f"threads {torch.get_num_threads()}")

    framework_vs_bare(config, data, device, args.repeats)
    print("compact (memory-mapped, decoded on the device) vs dense (in-memory tensors), train_stage:")
    for stage in (2, 3):
        compact_vs_dense(config, stage, args.rows, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
