"""Populations evaluated on a local Ray cluster of two CPU workers."""

import importlib.util

import numpy as np
import pytest
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2

from optishear_moo import BlockRemovalProblem, OptiShearProblem
from optishear_moo.search import SearchRun, run_search
from tests.conftest import make_tiny_model
from tests.evop.helpers import deep_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray (the [ray] extra) is missing")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def calibration_ids():
    return torch.randint(0, 384, (4, 16), generator=torch.Generator().manual_seed(0))


def test_pooled_objectives_equal_local_ones(ray_cluster, calibration_ids):
    local = OptiShearProblem(make_tiny_model("llama"), calibration_ids, 0.5, batch_size=2,
                             reconstruction_tokens=16)
    pooled = OptiShearProblem(make_tiny_model("llama"), calibration_ids, 0.5, batch_size=2,
                              reconstruction_tokens=16, workers=2)
    assert pooled.pool.n_workers == 2
    X = np.vstack([local.initial_population(6, seed=1), local.initial_population(6, seed=2)[4:]])
    np.testing.assert_allclose(pooled.evaluate(X, return_values_of=["F"]),
                               local.evaluate(X, return_values_of=["F"]), rtol=1e-6)
    with pytest.raises(ValueError, match="use fewer workers"):  # both CPUs are taken
        BlockRemovalProblem(deep_model(n_layers=5), calibration_ids, (1, 3), workers=2)
    pooled.pool.shutdown()
    blocks_local = BlockRemovalProblem(deep_model(n_layers=5), calibration_ids, (1, 3))
    blocks_pooled = BlockRemovalProblem(deep_model(n_layers=5), calibration_ids, (1, 3), workers=2)
    Xb = np.random.default_rng(0).random((7, 5)) < 0.4
    out_local = blocks_local.evaluate(Xb, return_as_dictionary=True)
    out_pooled = blocks_pooled.evaluate(Xb, return_as_dictionary=True)
    # float32 sums in another process (one thread there) may differ in the last digits
    np.testing.assert_allclose(out_pooled["F"], out_local["F"], rtol=2e-5)
    np.testing.assert_array_equal(out_pooled["G"], out_local["G"])
    blocks_pooled.pool.shutdown()


def test_a_worker_dying_mid_generation_loses_no_evaluation(ray_cluster, calibration_ids, tmp_path):
    def run(directory, kill: bool):
        problem = OptiShearProblem(make_tiny_model("llama"), calibration_ids, 0.5, batch_size=2,
                                   reconstruction_tokens=16, workers=2)
        pool, calls = problem.pool, []
        original = pool.map

        def map_and_kill(method, items, *extra):
            calls.append(method)
            if kill and len(calls) == 2:  # generation 2: kill a worker while its group is in flight
                first = pool.actors[0]
                refs = [getattr(actor, method).remote(items[0], *extra) for actor in (first,)]
                ray_cluster.kill(first)
                with pytest.raises(Exception):  # noqa: B017 - Ray's actor-died error
                    ray_cluster.get(refs)
            return original(method, items, *extra)

        pool.map = map_and_kill
        result = run_search(problem, NSGA2(pop_size=6), ("n_gen", 3), SearchRun(directory, seed=4))
        pool.shutdown()
        return result

    straight = run(tmp_path / "a", kill=False)
    killed = run(tmp_path / "b", kill=True)
    assert killed.algorithm.evaluator.n_eval == straight.algorithm.evaluator.n_eval == 18
    np.testing.assert_allclose(killed.F, straight.F)


def test_stage_scores_through_a_pool_come_back_in_the_population_order(calibration_ids):
    from optishear_moo.evopress import LevelSearchProblem, SparsityLevelDatabase
    from optishear_moo.search import SelectionStage
    from optishear_moo.search.pool import RayPool, Replica

    model = make_tiny_model("llama")
    database = SparsityLevelDatabase.build(model, calibration_ids, [0.4, 0.5, 0.6])

    class InProcessPool:  # RayPool's grouping, each group run by a replica here, last group first
        n_workers = 3
        groups = RayPool.groups

        def map(self, method, items, *extra):
            replica = Replica.__new__(Replica)
            replica.problem = local
            return [getattr(replica, method)(item, *extra) for item in items[::-1]][::-1]

    local = LevelSearchProblem(model, calibration_ids, 0.5, database)
    pooled = LevelSearchProblem(model, calibration_ids, 0.5, database, workers=InProcessPool())
    X = np.random.default_rng(0).integers(0, 3, (7, local.n_var))
    stage = SelectionStage(survivors=2, eval_samples=2)
    expected = [local.stage_score(x, stage) for x in X]
    assert len(set(expected)) > 1
    assert pooled.stage_scores(X, stage) == pytest.approx(expected, rel=1e-6)
