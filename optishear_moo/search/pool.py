"""Evaluating populations across GPUs and machines on Ray (the ``[ray]`` extra).

A :class:`RayPool` starts one actor per worker – one per GPU when the cluster has GPUs, one CPU
process otherwise – and each actor builds its own replica of the problem (model, dense
references...) once, from the arguments the problem records (``problem.replica``). A generation's
candidates are handed out in groups as actors become free (load balancing when candidates cost
differently: training-aware stages, candidates sharing a metric), and the results are put back
in the population's order. An actor that dies has its group run again on another (and is
replaced, up to ``max_restarts`` times): no candidate is lost or scored twice, and checkpoints
are unchanged (the pool is never serialised).

With ``address`` the pool joins an existing Ray cluster (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others); otherwise it starts a local one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from ..errors import SettingError, param

logger = logging.getLogger(__name__)

INSTALL = "pip install 'optishear-moo[ray]'"


RELEASE_GRACE_S = 30.0  # how long shutdown waits for Ray to hand back the actors' resources
CHECK_GRACE_S = 5.0  # how long a new pool waits for resources still being released


def _wait_for(ray, amounts: dict, timeout: float) -> dict:
    """Ray's free resources once they reach ``amounts`` (Ray releases a killed actor's share a
    moment later), or as they are after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        free = ray.available_resources()
        if all(free.get(key, 0) + 1e-9 >= amount for key, amount in amounts.items() if amount):
            return free
        if time.monotonic() >= deadline:
            return free
        time.sleep(0.2)


def _ray():
    try:
        import ray
    except ImportError:
        raise SettingError(f"evaluation on several {param('workers')} needs Ray: {INSTALL}") from None
    return ray


class Replica:
    """What runs inside one actor: a replica of the problem, built once."""

    def __init__(self, construction):
        cls, arguments = construction
        self.problem = cls(**{**arguments, "workers": None, "ray_address": None})

    def evaluate(self, X):
        out = self.problem.evaluate(X, return_as_dictionary=True)
        return {key: out[key] for key in ("F", "G") if out.get(key) is not None}

    def stage_scores(self, X, stage):
        return self.problem.local_stage_scores(X, stage)

    def ready(self) -> bool:
        return True


class RayPool:
    """``workers`` actors, each holding a replica of ``problem`` (see the module docstring)."""

    def __init__(self, problem, workers: int | None = None, address: str | None = None,
                 cpus_per_worker: float = 1, gpus_per_worker: float | None = None,
                 max_restarts: int = 1):
        ray = _ray()
        arguments = getattr(problem, "replica", None)
        if arguments is None:
            raise ValueError(f"{type(problem).__name__} does not record how it was built; it cannot be "
                             "replicated on workers")
        construction = (type(problem), arguments)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        resources = ray.cluster_resources()
        if gpus_per_worker is None:
            gpus_per_worker = 1 if resources.get("GPU", 0) >= 1 else 0
        if workers is None:
            workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else int(
                resources.get("CPU", 1) // cpus_per_worker)
        if workers < 1:
            raise SettingError(f"{param('workers')} must be at least 1, got {workers}")
        needed = {"CPU": cpus_per_worker * workers, "GPU": gpus_per_worker * workers}
        free = _wait_for(ray, needed, CHECK_GRACE_S)
        for resource, amount in needed.items():
            if amount and free.get(resource, 0) + 1e-9 < amount:
                raise SettingError(f"{workers} {param('workers')} need {amount:g} {resource}s but the Ray "
                                   f"cluster has {free.get(resource, 0):g} free: use fewer workers (or shut "
                                   "down other pools)")
        self.construction = construction
        self.options = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
        self.restarts_left = max_restarts * workers
        self.actor_class = ray.remote(Replica)
        self.actors = [self._start() for _ in range(workers)]
        ray.get([actor.ready.remote() for actor in self.actors])  # every replica is built
        logger.info("evaluation pool of %d workers (%s)", workers, self.options)

    def _start(self):
        return self.actor_class.options(**self.options).remote(self.construction)

    @property
    def n_workers(self) -> int:
        return len(self.actors)

    def map(self, method: str, items: list, *extra) -> list:
        """``getattr(replica, method)(item, *extra)`` for every item, on whichever actor is free;
        results in the order of ``items``."""
        ray = _ray()
        from ray.exceptions import RayActorError

        results: list = [None] * len(items)
        pending = deque(enumerate(items))
        in_flight: dict = {}
        idle = list(self.actors)
        while pending or in_flight:
            while pending and idle:
                actor = idle.pop()
                index, item = pending.popleft()
                in_flight[getattr(actor, method).remote(item, *extra)] = (index, item, actor)
            if not in_flight:
                raise RuntimeError("every evaluation worker died: see the Ray logs")
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            index, item, actor = in_flight.pop(ref)
            try:
                results[index] = ray.get(ref)
                idle.append(actor)
            except RayActorError as error:
                logger.warning("an evaluation worker died (%s); its candidates run again",
                               type(error).__name__)
                self.actors.remove(actor)
                if self.restarts_left > 0:
                    self.restarts_left -= 1
                    replacement = self._start()
                    self.actors.append(replacement)
                    idle.append(replacement)
                pending.appendleft((index, item))
        return results

    def groups(self, n: int) -> list:
        """Index chunks for ``n`` candidates: a few per worker so that faster workers take more."""
        size = max(1, math.ceil(n / (2 * max(self.n_workers, 1))))
        return [list(range(start, min(start + size, n))) for start in range(0, n, size)]

    def shutdown(self) -> None:
        """Stop the actors and wait (a little) until the cluster has their resources back, so that
        a pool started next can count on them."""
        ray = _ray()
        held = {"CPU": self.options["num_cpus"] * len(self.actors),
                "GPU": self.options["num_gpus"] * len(self.actors)}
        before = ray.available_resources()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        _wait_for(ray, {key: before.get(key, 0) + amount for key, amount in held.items()}, RELEASE_GRACE_S)
