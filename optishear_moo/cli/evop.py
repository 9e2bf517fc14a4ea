"""``optishear-moo evop``: remove whole decoder blocks (EvoP's search, or a heuristic)."""

from __future__ import annotations

from .options import add_calibration_flags, add_model_flags, add_output_flags, add_search_flags


def add_parser(commands) -> None:
    command = commands.add_parser("evop", help="EvoP: remove whole decoder blocks (or ShortGPT, SLEB, last)")
    command.add_argument("--n-remove", default="6",
                         help="blocks to remove, or LOW:HIGH for a size-vs-quality front (evop)")
    command.add_argument("--method", default="evop", help="evop, shortgpt, sleb or last (default: evop)")
    command.add_argument("--objective", default="kl", help="evop fitness: kl or ppl (default: kl)")
    command.add_argument("--algorithm", default="ga",
                         help="evop's search: ga (EvoP's genetic algorithm) or 1+lambda (the best so far "
                              "mutated by block swaps and shifts; one --n-remove) (default: ga)")
    command.add_argument("--warm-start", default="last,shortgpt",
                         help="heuristics whose choices start evop's search, any of last, shortgpt, sleb "
                              "(sleb costs its greedy evaluations; default: last,shortgpt)")
    command.add_argument("--stages", dest="n_stages", type=int, default=1,
                         help="1+lambda's multi-fidelity selection: offspring scored on a share of the "
                              "windows, survivors halving while the windows double over N stages; --evals "
                              "then counts passes over the windows (default: 1, every offspring on all)")
    add_search_flags(command, pop=16, gens=10, evals=True)
    add_model_flags(command)
    add_calibration_flags(command, n_samples=8, seq_len=128)
    add_output_flags(command)
    command.set_defaults(handler=run)


def run(args) -> dict:
    from ..data import CalibrationConfig
    from ..evop import EvoPConfig, search_evop
    from .job import Job
    from .options import config_from, number_or_range

    config = config_from(args, EvoPConfig, n_remove=number_or_range(args.n_remove, "n_remove", int))
    calibration = config_from(args, CalibrationConfig)
    with Job(args, "evop", config, calibration) as job:
        model, tokenizer = job.load_model()
        result = search_evop(model, job.windows(model, tokenizer), config, job.search_run())
        return job.finish(model, tokenizer, result)
