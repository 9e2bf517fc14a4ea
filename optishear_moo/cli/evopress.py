"""``optishear-moo evopress``: EvoPress's search of per-layer sparsity levels over a database of
pruned weights (by default pruned with whichever of SparseGPT and Wanda prunes the model better)."""

from __future__ import annotations

from .options import add_calibration_flags, add_model_flags, add_output_flags, add_search_flags


def add_parser(commands) -> None:
    command = commands.add_parser("evopress",
                                  help="EvoPress: search per-layer sparsity levels over a database")
    command.add_argument("--target-sparsity", default="0.5",
                         help="mean sparsity of the prunable weights, or LOW:HIGH for a size-vs-quality "
                              "front")
    command.add_argument("--method", default="auto",
                         help="how the database prunes each level: sparsegpt, wanda, ria, magnitude, or auto "
                              "(default): whichever of sparsegpt and wanda, pruning uniformly at the target, "
                              "has the lower KL to the dense model on the held-out windows")
    command.add_argument("--update", default="none",
                         help="weight update for wanda/ria/magnitude: none, obs or lstsq")
    command.add_argument("--step", type=float, default=0.05, help="sparsity between levels (default: 0.05)")
    command.add_argument("--levels-each-side", type=int, default=3, help="levels below and above the target")
    command.add_argument("--database-inputs", choices=("pruned", "dense"), default="pruned",
                         help="each database block is pruned from the blocks before it pruned at the target "
                              "(pruned, default) or from the dense model (dense, as EvoPress)")
    command.add_argument("--database-dir", default=None, help="keep the level database on disk here")
    command.add_argument("--stages", dest="n_stages", type=int, default=3,
                         help="multi-fidelity stages: survivors halve while the windows scored double "
                              "(default: 3)")
    add_search_flags(command, pop=1, gens=40, offspring=16)
    add_model_flags(command)
    add_calibration_flags(command, n_samples=8, seq_len=128, pruning=(32, 512),
                          validation="the database's method and the final weights")
    add_output_flags(command)
    command.set_defaults(handler=run)


def run(args) -> dict:
    from ..data import CalibrationConfig
    from ..evopress import EvoPressConfig, search_evopress
    from .job import Job
    from .options import config_from, number_or_range

    config = config_from(args, EvoPressConfig,
                         target_sparsity=number_or_range(args.target_sparsity, "target_sparsity"))
    samples = args.prune_samples if args.validation_samples is None else args.validation_samples
    # held-out windows shaped as the pruning ones
    calibration = config_from(args, CalibrationConfig, validation_samples=samples,
                              validation_seq_len=args.prune_seq_len)
    with Job(args, "evopress", config, calibration) as job:
        model, tokenizer = job.load_model()
        result = search_evopress(model, job.windows(model, tokenizer), config, job.search_run())
        return job.finish(model, tokenizer, result)
