
import pytest

from optishear_moo.search import make_algorithm


def test_algorithm_factory(problem):
    assert type(make_algorithm("nsga3", problem, 6)).__name__ == "NSGA3"
    with pytest.raises(ValueError, match="single-objective"):
        make_algorithm("cmaes", problem)
    with pytest.raises(ValueError, match="algorithm 'pso-ultra' is unknown"):
        make_algorithm("pso-ultra", problem)
