"""The flags every command shares and how flags become the library's configs.

Flag destinations are the configs' parameter names (``--pop`` fills ``pop_size``,
``--calibration`` fills ``source``), so a config is made from the parsed flags by name, and an
error naming a parameter is shown with its flag (:func:`flag_names`). Only the standard library is
imported here: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="embedded name, local directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="float32",
                        help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--offload", default="none", choices=["none", "host", "disk"],
                        help="for a model larger than the device: weights in host memory (host) or read "
                             "from the model directory's safetensors as used (disk); blocks run on --device "
                             "one at a time (default: %(default)s)")


def add_calibration_flags(parser: argparse.ArgumentParser, n_samples: int, seq_len: int,
                          pruning: tuple[int, int] | None = None, validation: str | None = None) -> None:
    """Calibration windows (:class:`~optishear_moo.data.CalibrationConfig`): ``pruning`` adds the
    windows the final model is pruned from, ``validation`` the held-out windows (what they choose)."""
    parser.add_argument("--calibration", dest="source", default="gutenberg",
                        help="shipped corpus (gutenberg, wikitext2-valid), text file or hf:NAME")
    parser.add_argument("--calibration-sampling", dest="sampling", default="random",
                        choices=["random", "cluster"],
                        help="random windows, or EvoP's cluster-based sampling (default: random)")
    parser.add_argument("--n-clusters", type=int, default=None,
                        help="k-means clusters for --calibration-sampling cluster (default: 8)")
    parser.add_argument("--n-samples", type=int, default=n_samples,
                        help="calibration windows (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=seq_len,
                        help="tokens per window (default: %(default)s)")
    if pruning is not None:
        parser.add_argument("--prune-samples", type=int, default=pruning[0],
                            help="windows the final model is pruned from (default: %(default)s)")
        parser.add_argument("--prune-seq-len", type=int, default=pruning[1],
                            help="tokens per pruning window (default: %(default)s)")
    if validation is not None:
        parser.add_argument("--validation", dest="validation_source", default="wikitext2-valid",
                            help=f"text of the held-out windows that choose {validation} "
                                 "(default: %(default)s)")
        parser.add_argument("--validation-samples", type=int, default=None,
                            help="held-out windows (0: none; default: as many as the pruning windows)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the windows and the search (default: 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")


def add_output_flags(parser: argparse.ArgumentParser, search: bool = True) -> None:
    parser.add_argument("--eval-seq-len", type=int, default=1024,
                        help="WikiText-2 test segment length (default: %(default)s)")
    parser.add_argument("--eval-segments", default="16",
                        help="segments to evaluate, or 'all' for the full split (default: 16)")
    parser.add_argument("--zero-shot", default=None, metavar="TASKS",
                        help="also report 0-shot accuracy on these tasks (comma-separated, e.g. "
                             "piqa,arc_easy)")
    parser.add_argument("--zero-shot-limit", type=int, default=None,
                        help="examples per zero-shot task (default: the whole validation set)")
    parser.add_argument("--output", required=True, help="directory for the model, report.json and the search")
    parser.add_argument("--save-dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="precision of the saved model (default auto: the checkpoint's own, bfloat16 "
                             "for a quantized GGUF)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    if search:
        parser.add_argument("--resume", action="store_true",
                            help="continue the interrupted run in --output (give the same settings again)")
        parser.add_argument("--workers", type=int, default=None,
                            help="evaluate populations on this many Ray workers (one per GPU, or CPU "
                                 "processes); needs the [ray] extra (default: in this process)")
        parser.add_argument("--ray-address", default=None,
                            help="join this Ray cluster (HEAD:6379 or auto) instead of starting a local one")


def add_search_flags(parser: argparse.ArgumentParser, pop: int, gens: int,
                     offspring: int | None = None, evals: bool = False) -> None:
    parser.add_argument("--pop", dest="pop_size", type=int, default=pop,
                        help="population size (parents kept per generation) (default: %(default)s)")
    if offspring is not None:
        parser.add_argument("--offspring", dest="n_offsprings", type=int, default=offspring,
                            help="offspring per generation (default: %(default)s)")
    parser.add_argument("--gens", dest="n_gen", type=int, default=gens,
                        help="generations (default: %(default)s; more on --resume continues a run)")
    if evals:
        parser.add_argument("--evals", dest="n_evals", type=int, default=None,
                            help="stop once the search has scored this many candidates instead of after "
                                 "--gens generations: a budget equal to another method's count (more on "
                                 "--resume continues a run)")


def number_or_range(value: str, name: str, kind=float):
    """``"X"`` -> X, ``"LOW:HIGH"`` -> (LOW, HIGH); a SettingError naming ``name`` otherwise."""
    from ..errors import SettingError, param

    try:
        parts = [kind(part) for part in str(value).split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise SettingError(f"{param(name)} must be a number or LOW:HIGH, got {value!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def config_from(args: argparse.Namespace, config_class, **values):
    """A ``config_class`` dataclass from the flags named like its fields (``values`` win)."""
    names = {field.name for field in dataclasses.fields(config_class)}
    chosen = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return config_class(**{**chosen, **values})


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Parameter (destination) name -> the flag that sets it."""
    return {action.dest: max(action.option_strings, key=len)
            for action in parser._actions if action.option_strings}
