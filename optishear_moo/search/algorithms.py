"""pymoo algorithms by name, configured for a problem of this package."""

from __future__ import annotations

from pymoo.core.algorithm import Algorithm
from pymoo.core.problem import Problem

from ..errors import SettingError, param

MULTI_OBJECTIVE_ALGORITHMS = ("nsga2", "nsga3", "agemoea", "smsemoa")
SINGLE_OBJECTIVE_ALGORITHMS = ("ga", "de", "cmaes")


def check_algorithm(name: str, n_obj: int) -> str:
    """The lower-cased algorithm name, if it exists and suits ``n_obj`` objectives."""
    name = name.lower()
    if name == "agemoea":
        import importlib.util

        if importlib.util.find_spec("numba") is None:
            raise SettingError(f"{param('algorithm')} agemoea needs numba: pip install "
                               "'optishear-moo[algorithms]' (or numba)")
    if name not in MULTI_OBJECTIVE_ALGORITHMS + SINGLE_OBJECTIVE_ALGORITHMS:
        raise SettingError(f"{param('algorithm')} {name!r} is unknown: use one of "
                         f"{', '.join(MULTI_OBJECTIVE_ALGORITHMS + SINGLE_OBJECTIVE_ALGORITHMS)}")
    if name in SINGLE_OBJECTIVE_ALGORITHMS and n_obj != 1:
        raise SettingError(f"{param('algorithm')} {name} is single-objective but {n_obj} "
                           f"{param('objectives')} were chosen: use one of "
                           f"{', '.join(MULTI_OBJECTIVE_ALGORITHMS)} or one objective")
    if name in MULTI_OBJECTIVE_ALGORITHMS and n_obj < 2 and name != "nsga2":
        raise SettingError(f"{param('algorithm')} {name} needs at least two {param('objectives')}")
    return name


def make_algorithm(name: str, problem: Problem, pop_size: int = 16, seed: int = 0) -> Algorithm:
    """A pymoo algorithm by name, configured for ``problem``: reference directions for NSGA-III,
    the problem's ``repair`` (a pymoo ``Repair``, or None) and, where the problem offers one,
    an initial population that holds its baselines (``problem.initial_population``)."""
    name = check_algorithm(name, problem.n_obj)
    n_obj = problem.n_obj
    if pop_size < 2:
        raise SettingError(f"{param('pop_size')} must be at least 2, got {pop_size}")
    repair = getattr(problem, "repair", None)
    kwargs = {"repair": repair} if repair is not None else {}
    if hasattr(problem, "initial_population") and name != "cmaes":
        kwargs["sampling"] = problem.initial_population(pop_size, seed)
    if name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(pop_size=pop_size, **kwargs)
    if name == "nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.util.ref_dirs import get_reference_directions

        ref_dirs = (get_reference_directions("das-dennis", 2, n_partitions=pop_size - 1) if n_obj == 2
                    else get_reference_directions("energy", n_obj, pop_size, seed=1))
        return NSGA3(ref_dirs=ref_dirs, pop_size=pop_size, **kwargs)
    if name == "agemoea":
        from pymoo.algorithms.moo.age import AGEMOEA

        return AGEMOEA(pop_size=pop_size, **kwargs)
    if name == "smsemoa":
        from pymoo.algorithms.moo.sms import SMSEMOA

        return SMSEMOA(pop_size=pop_size, **kwargs)
    if name == "ga":
        from pymoo.algorithms.soo.nonconvex.ga import GA

        return GA(pop_size=pop_size, **kwargs)
    if name == "de":
        from pymoo.algorithms.soo.nonconvex.de import DE

        return DE(pop_size=pop_size, **kwargs)
    if name == "cmaes":
        from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

        return CMAES(popsize=pop_size)
    raise AssertionError(name)
