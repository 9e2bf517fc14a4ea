import pytest
import torch

from optishear_moo.finetuning import post_train
from tests.conftest import make_tiny_model


def test_post_train_lowers_the_loss_and_resumes_to_the_same_weights(calibration, tmp_path):
    training = calibration.repeat(2, 1)
    straight = make_tiny_model("llama")
    losses = post_train(straight, training, learning_rate=3e-3, batch_size=2)
    assert len(losses) == 6 and losses[-1] < losses[0]
    interrupted = make_tiny_model("llama")
    post_train(interrupted, training[:6], learning_rate=3e-3, batch_size=2, checkpoint_dir=tmp_path,
               checkpoint_every=1)  # the first three steps, then "interrupted"
    resumed = make_tiny_model("llama")
    post_train(resumed, training, learning_rate=3e-3, batch_size=2, checkpoint_dir=tmp_path,
               checkpoint_every=1, resume=True)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b)


def test_distillation_and_bad_input(calibration):
    student, teacher = make_tiny_model("llama", seed=1), make_tiny_model("llama")
    losses = post_train(student, calibration, learning_rate=3e-3, batch_size=3, teacher=teacher)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="no training checkpoint"):
        post_train(student, calibration, resume=True)
    with pytest.raises(ValueError, match="non-empty"):
        post_train(student, calibration[:0])
