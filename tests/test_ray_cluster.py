"""A simulated two-node Ray cluster (``ray.cluster_utils.Cluster``): the sweep joins it by address
and its trials run on both nodes; the second node, whose working directory and dataset cache are
elsewhere, receives the dataset from the driver. Its own Ray session, apart from test_ray.py's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
import ray_fakes
from optuna.trial import TrialState

from maou.data.sources import file_sha256
from maou.strict import from_dict
from maou.sweep.run.protocol import run_sweep
from maou.sweep.spec import SweepSpec

pytestmark = pytest.mark.ray


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def node2_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("node2")
    return {"cache": root / "dataset-cache", "cwd": root / "cwd"}


@pytest.fixture(scope="module")
def two_nodes(node2_dirs):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    # the second node's workers: their own dataset cache and working directory
    cluster.add_node(num_cpus=1, env_vars={"MAOU_DATASET_CACHE": str(node2_dirs["cache"]),
                                           "MAOU_TEST_NODE_CWD": str(node2_dirs["cwd"])})
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_run_on_both_nodes_of_a_cluster(two_nodes, tmp_path):
    import ray

    from maou.sweep.run.executors.ray import RayExecutor

    data = {"name": "cluster", "stage": 1, "seeds": 2, "steps": [{"name": "lr", "grid": {"optim.lr": [0.01]}}],
            "base": {"model": {"blocks": 1, "channels": 8}, "optim": {"lr": 0.003}},
            "budget": {"max_steps": 20, "eval_every": 10},
            "storage": f"sqlite:///{tmp_path}/cluster.db", "runs_dir": str(tmp_path / "runs"),
            "executor": {"kind": "ray", "address": two_nodes.address, "cpus_per_trial": 1, "max_concurrent": 2}}
    spec = from_dict(SweepSpec, data)
    executor = RayExecutor(spec.executor, train=ray_fakes.slow)
    ray.cloudpickle.register_pickle_by_value(ray_fakes)
    assert not ray.is_initialized()
    run_sweep(spec, executor=executor)  # the executor joins the cluster by its address
    assert ray.get_runtime_context().gcs_address == two_nodes.address
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    study = optuna.load_study(study_name="cluster/01-lr", storage=spec.storage_url)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    used = {t.user_attrs["node_id"] for t in trials}
    assert used == nodes  # 1 CPU per node and 2 concurrent trials: both nodes train


def test_a_node_without_the_dataset_receives_it_and_never_reads_the_drivers_paths(two_nodes, node2_dirs, tmp_path,
                                                                                  monkeypatch):
    import ray

    from maou.sweep.run.executors.ray import RayExecutor

    driver = tmp_path / "driver"
    (driver / "games").mkdir(parents=True)
    for f in sorted((REPO / "data" / "games").glob("*.csa"))[:6]:
        shutil.copy2(f, driver / "games" / f.name)
    monkeypatch.chdir(driver)  # the spec's data paths are relative to the driver's working directory
    data = {"name": "shipping", "stage": 2, "seeds": 2, "steps": [{"name": "base"}],
            "data": {"games": ["games"], "dir": "build", "val_fraction": 0.34},
            "base": {"model": {"blocks": 1, "channels": 8}, "eval_rows": 64},
            "budget": {"max_steps": 6, "eval_every": 3},
            "storage": f"sqlite:///{tmp_path}/shipping.db", "runs_dir": str(tmp_path / "runs"),
            "executor": {"kind": "ray", "address": two_nodes.address, "cpus_per_trial": 1, "max_concurrent": 2}}
    spec = from_dict(SweepSpec, data)
    ray.cloudpickle.register_pickle_by_value(ray_fakes)
    run_sweep(spec, executor=RayExecutor(spec.executor, train=ray_fakes.record_data_paths))
    driver_node = ray.get_runtime_context().get_node_id()
    manifest = json.loads((driver / "build" / "manifest.json").read_text())
    trials = optuna.load_study(study_name="shipping/01-base", storage=spec.storage_url).get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["node_id"] for t in trials} == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    for t in trials:
        assert t.user_attrs["dataset_hash"] == manifest["content_hash"]
        paths = json.loads((Path(t.user_attrs["checkpoint"]).parent / "data-paths.json").read_text())
        assert paths["mapped"] == sorted(paths["mapped"]) and len(paths["mapped"]) == 2  # stage2/{train,val}
        if t.user_attrs["node_id"] == driver_node:
            assert t.user_attrs["dataset_dir"] == str(driver / "build")
            assert all(p.startswith(str(driver / "build")) for p in paths["mapped"])
            continue
        copy = node2_dirs["cache"] / manifest["content_hash"]
        assert t.user_attrs["dataset_dir"] == str(copy) and paths["cwd"] == str(node2_dirs["cwd"])
        assert all(p.startswith(str(copy)) for p in paths["mapped"] + paths["opened"]), paths
        assert not any(str(driver) in p for p in paths["mapped"] + paths["opened"]), paths
        for name in ("stage2/train.feather", "stage2/val.feather"):  # the copy is the driver's file
            assert file_sha256(copy / name) == manifest["files"][name]["sha256"]
        assert not list(node2_dirs["cache"].glob("*.partial-*"))
