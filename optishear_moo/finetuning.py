"""Post-training a pruned model: next-token loss or distillation from the dense model, with
checkpoints after every ``checkpoint_every`` steps and resume."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .activations import model_device
from .data.calibration import check_calibration

logger = logging.getLogger(__name__)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter except the (tied) token embeddings, which pruning did not touch."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for p in model.parameters() if id(p) not in embeddings]


def _save(directory: Path, model, optimizer, step: int, losses: list[float]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "training_state.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, directory / "training_state.pt")
    (directory / "losses.json").write_text(json.dumps(losses))


def post_train(model: nn.Module, training: torch.Tensor, learning_rate: float = 1e-4,
               batch_size: int = 4, teacher: nn.Module | None = None, temperature: float = 1.0,
               checkpoint_dir: str | Path | None = None, checkpoint_every: int = 10,
               resume: bool = False, progress: bool = False, parameters=None) -> list[float]:
    """Train ``model`` **in place** for one pass over ``training`` (``(n, seq_len)`` ids), AdamW.

    Loss: next-token cross-entropy, or with ``teacher`` (the dense model) the KL divergence
    from the teacher's next-token distribution (distillation). With ``checkpoint_dir`` the model,
    optimizer and step are saved every ``checkpoint_every`` steps; ``resume=True`` restarts from
    the saved step with the same data order. ``parameters`` (default: all but the token
    embeddings) are the ones trained. Returns the loss of every step.
    """
    check_calibration(training, model, what="training")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    parameters = list(parameters) if parameters is not None else _trainable(model)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    step, losses = 0, []
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if directory is None or not (directory / "training_state.pt").exists():
            raise ValueError(f"no training checkpoint in {directory}: start without resume")
        state = torch.load(directory / "training_state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], json.loads((directory / "losses.json").read_text())
        logger.info("resuming post-training at step %d", step)
    batches = torch.split(training, batch_size)
    device = model_device(model)
    for p in parameters:
        p.requires_grad_(True)
    model.train()
    try:
        for index in tqdm(range(step, len(batches)), desc="post-training", disable=not progress,
                          initial=step, total=len(batches)):
            batch = batches[index].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            if teacher is None:
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
            else:
                with torch.no_grad():
                    target = teacher(input_ids=batch, use_cache=False).logits.float()
                loss = F.kl_div(F.log_softmax(logits / temperature, -1).flatten(0, 1),
                                F.log_softmax(target / temperature, -1).flatten(0, 1),
                                log_target=True, reduction="batchmean")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"post-training loss became {float(loss)} at step {index}: "
                                         "lower the learning rate")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if directory is not None and ((index + 1) % checkpoint_every == 0 or index + 1 == len(batches)):
                _save(directory, model, optimizer, index + 1, losses)
    finally:
        model.eval()
        for p in parameters:
            p.requires_grad_(False)
    return losses
