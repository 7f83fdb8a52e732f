"""A simulated two-node Ray cluster (``ray.cluster_utils.Cluster``): the sweep joins it by address
and its trials run on both nodes. Its own Ray session, apart from test_ray.py's."""

from __future__ import annotations

import os

import optuna
import pytest
import ray_fakes
from optuna.trial import TrialState

from maou.strict import from_dict
from maou.sweep.protocol import run_sweep
from maou.sweep.spec import SweepSpec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_nodes():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_run_on_both_nodes_of_a_cluster(two_nodes, tmp_path):
    import ray

    from maou.sweep.executors.ray import RayExecutor

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
