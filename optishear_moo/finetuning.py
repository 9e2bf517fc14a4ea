"""Post-training a pruned model: next-token loss or distillation from the dense model, with
checkpoints after every ``checkpoint_every`` steps (safetensors and JSON: data, never a pickle)
and resume."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .activations import model_device
from .data.calibration import check_calibration
from .errors import SettingError, param
from .models.streaming import is_streamed

logger = logging.getLogger(__name__)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter except the (tied) token embeddings, which pruning did not touch."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for p in model.parameters() if id(p) not in embeddings]


STATE = "training_state.json"


def _save(directory: Path, model, optimizer, step: int, losses: list[float], parameters) -> None:
    """The trained parameters and the optimizer's state as safetensors, the step, losses and the
    optimizer's settings as JSON (data only). The tensors go to a file named by the step and the
    JSON, written last, names it: an interrupted save leaves the previous state whole."""
    from safetensors.torch import save

    from .outputs import make_directory, remove, write_atomically

    make_directory(directory)
    names = {id(p): name for name, p in model.named_parameters()}
    tensors = {f"model.{names[id(p)]}": p.detach().contiguous() for p in parameters}
    state = optimizer.state_dict()
    scalars = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    file = f"training_state.{step}.safetensors"
    write_atomically(directory / file, save(tensors))
    previous = _read_state(directory) if (directory / STATE).is_file() else None
    write_atomically(directory / STATE, json.dumps({"step": step, "losses": losses, "tensors": file,
                                                    "param_groups": state["param_groups"],
                                                    "scalars": scalars}))
    if previous is not None and previous["tensors"] != file:
        remove(directory / previous["tensors"])


def _read_state(directory: Path) -> dict:
    """``training_state.json``, checked: it is data written by :func:`_save`, nothing else."""
    from .outputs import read_untrusted

    path = directory / STATE
    try:
        state = json.loads(read_untrusted(path, 64 << 20))
        valid = (isinstance(state, dict) and isinstance(state.get("step"), int)
                 and isinstance(state.get("losses"), list) and isinstance(state.get("param_groups"), list)
                 and isinstance(state.get("scalars"), dict) and isinstance(state.get("tensors"), str)
                 and re.fullmatch(r"training_state\.\d+\.safetensors", state["tensors"]) is not None)
    except (ValueError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise ValueError(f"{path} is damaged or not a training checkpoint: start the post-training again")
    return state


def _load(directory: Path, model, optimizer, parameters) -> tuple[int, list[float]]:
    """Restore what :func:`_save` wrote into ``model`` and ``optimizer``; returns (step, losses)."""
    from safetensors.torch import load

    from .outputs import read_untrusted

    state = _read_state(directory)
    tensors = load(read_untrusted(directory / state["tensors"]))
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("model."):
                if key[6:] not in named or named[key[6:]].shape != value.shape:
                    raise ValueError(f"{directory / state['tensors']} does not fit this model ({key}): start "
                                     f"the post-training again")
                named[key[6:]].copy_(value)
    optimizer_state: dict = {}
    for key, value in [*((k[10:], v) for k, v in tensors.items() if k.startswith("optimizer.")),
                       *state["scalars"].items()]:
        index, _, name = key.partition(".")
        optimizer_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": state["param_groups"]})
    return state["step"], [float(loss) for loss in state["losses"]]


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
    if is_streamed(model):
        raise SettingError(f"fine-tuning trains the weights in memory, which a model loaded with "
                           f"{param('offload')} disk does not hold: load it with {param('offload')} host")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    parameters = list(parameters) if parameters is not None else _trainable(model)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    step, losses = 0, []
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if directory is None or not (directory / STATE).exists():
            raise ValueError(f"no training checkpoint in {directory}: start without resume")
        step, losses = _load(directory, model, optimizer, parameters)
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
                _save(directory, model, optimizer, index + 1, losses, parameters)
    finally:
        model.eval()
        for p in parameters:
            p.requires_grad_(False)
    return losses
