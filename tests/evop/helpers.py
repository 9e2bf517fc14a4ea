import torch
from transformers import AutoModelForCausalLM

from optishear_moo.models import get_adapter
from tests.conftest import tiny_config


def deep_model(family="llama", n_layers=6, seed=0):
    config = tiny_config(family)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[0]] * n_layers
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def skipping(model, removed):
    """The dense model with ``removed`` blocks turned into identities by hooks."""
    def identity(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    blocks = get_adapter(model).blocks(model)
    return [blocks[i].register_forward_hook(identity, with_kwargs=True) for i in removed]


def calibration_ppl(model, calibration):
    with torch.no_grad():
        out = model(input_ids=calibration, labels=calibration, use_cache=False)
    return float(torch.exp(out.loss))
