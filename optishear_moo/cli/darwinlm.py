"""``optishear-moo darwinlm``: DarwinLM, attention head groups and MLP channels removed at searched
levels (training-aware selection by default)."""

from __future__ import annotations

from .options import add_calibration_flags, add_model_flags, add_output_flags, add_search_flags


def add_parser(commands) -> None:
    command = commands.add_parser("darwinlm", help="DarwinLM: remove attention head groups and MLP channels")
    command.add_argument("--compression", dest="target_compression", default="1.5",
                         help="block-weight compression (dense / kept), or LOW:HIGH for a front "
                              "(default: 1.5)")
    command.add_argument("--selection", default="training-aware", choices=["training-aware", "one-shot"],
                         help="judge offspring after short fine-tunes, or by one-shot KL")
    command.add_argument("--finetune-tokens", default="512,1024,2048",
                         help="training-aware stages: fine-tuning tokens per stage; survivors halve per "
                              "stage down to --pop (default: 512,1024,2048)")
    command.add_argument("--training", dest="training_source", default=None,
                         help="text for the stage fine-tunes (default: the --calibration source)")
    command.add_argument("--learning-rate", type=float, default=1e-4)
    command.add_argument("--mlp-levels", type=int, default=None,
                         help="MLP levels (must divide intermediate_size; default: about 10)")
    command.add_argument("--scoring", default="auto", choices=["auto", "walk", "slice"],
                         help="one-shot scores: the population in one walk over the blocks, a sliced "
                              "forward per candidate, or auto (walk unless an output projection has a "
                              "bias; default)")
    command.add_argument("--database-dir", default=None,
                         help="keep the level database on disk here instead of in memory")
    add_search_flags(command, pop=1, gens=10, offspring=16)
    add_model_flags(command)
    add_calibration_flags(command, n_samples=8, seq_len=128)
    add_output_flags(command)
    command.set_defaults(handler=run)


def run(args) -> dict:
    from ..darwinlm import DarwinLMConfig, search_darwinlm
    from ..data import CalibrationConfig
    from ..errors import SettingError, param
    from .job import Job
    from .options import config_from, number_or_range

    try:
        tokens = tuple(int(t) for t in args.finetune_tokens.split(","))
    except ValueError:
        raise SettingError(f"{param('finetune_tokens')} must be integers separated by commas, got "
                           f"{args.finetune_tokens!r}") from None
    config = config_from(args, DarwinLMConfig, finetune_tokens=tokens,
                         target_compression=number_or_range(args.target_compression, "target_compression"))
    calibration = config_from(args, CalibrationConfig, training_tokens=config.training_tokens)
    with Job(args, "darwinlm", config, calibration) as job:
        model, tokenizer = job.load_model()
        result = search_darwinlm(model, job.windows(model, tokenizer), config, job.search_run())
        return job.finish(model, tokenizer, result)
