import pytest

from optishear_moo import OptiShearProblem


@pytest.fixture
def problem(tiny_llama, calibration):
    """A concrete problem for the method-agnostic search machinery."""
    return OptiShearProblem(tiny_llama, calibration, 0.5, batch_size=3, reconstruction_tokens=32)
