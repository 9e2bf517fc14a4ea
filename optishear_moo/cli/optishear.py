"""``optishear-moo optishear``: OptiShear's searched metric, allocation and update."""

from __future__ import annotations

from .options import add_calibration_flags, add_model_flags, add_output_flags, add_search_flags


def add_parser(commands) -> None:
    command = commands.add_parser("optishear",
                                  help="OptiShear: search a pruning metric, allocation and update")
    command.add_argument("--target-sparsity", default="0.5",
                         help="target sparsity, or LOW:HIGH to search the size too (default: 0.5)")
    command.add_argument("--objectives", default="kl,reconstruction",
                         help="comma-separated: kl, output_error, reconstruction, density "
                              "(default: %(default)s)")
    command.add_argument("--layerwise", default="continuous", help="continuous, discrete or uniform")
    command.add_argument("--nm", default=None, help="N:M pattern, e.g. 2:4 (searches the metric only)")
    command.add_argument("--algorithm", default="nsga2",
                         help="nsga2, nsga3, agemoea, smsemoa; ga, de, cmaes with one objective")
    command.add_argument("--low-fidelity", type=float, default=1.0,
                         help="share of calibration windows for the first --low-fidelity-gens generations "
                              "(default 1: off); the front is re-scored on all of them")
    command.add_argument("--low-fidelity-gens", type=int, default=3)
    command.add_argument("--update", default="none",
                         help="reconstruct every candidate's kept weights: none, obs or lstsq "
                              "(default: none)")
    command.add_argument("--search-update", action="store_true",
                         help="search the weight update too (the joint space: metric, allocation, update)")
    add_search_flags(command, pop=16, gens=10, evals=True)
    add_model_flags(command)
    add_calibration_flags(command, n_samples=8, seq_len=128, pruning=(32, 512), validation="the front's plan")
    add_output_flags(command)
    command.set_defaults(handler=run)


def run(args) -> dict:
    from ..data import CalibrationConfig
    from ..optishear import OptiShearConfig, search_optishear
    from .job import Job
    from .options import config_from, number_or_range

    objectives = tuple(name.strip() for name in args.objectives.split(",") if name.strip())
    config = config_from(args, OptiShearConfig, objectives=objectives,
                         target_sparsity=number_or_range(args.target_sparsity, "target_sparsity"))
    samples = args.n_samples if args.validation_samples is None else args.validation_samples
    calibration = config_from(args, CalibrationConfig, validation_samples=samples)
    with Job(args, "optishear", config, calibration) as job:
        model, tokenizer = job.load_model()
        result = search_optishear(model, job.windows(model, tokenizer), config, job.search_run())
        return job.finish(model, tokenizer, result)
