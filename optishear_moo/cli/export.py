"""``optishear-moo export``: the model of any point of a finished search's front."""

from __future__ import annotations

from .options import add_output_flags

DRIVERS = {"optishear": ("OptiShearConfig", "search_optishear"),
           "evopress": ("EvoPressConfig", "search_evopress"), "evop": ("EvoPConfig", "search_evop"),
           "darwinlm": ("DarwinLMConfig", "search_darwinlm")}


def add_parser(commands) -> None:
    export = commands.add_parser("export", help="save the model of any point of a finished search's front")
    export.add_argument("--run", required=True, help="the --output of a finished search")
    point = export.add_mutually_exclusive_group(required=True)
    point.add_argument("--point", type=int, help="index of the point in the run's front.json")
    point.add_argument("--density", type=float, help="the point whose share of weights kept is nearest")
    export.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    add_output_flags(export, search=False)
    export.set_defaults(handler=run, model=None, dtype=None, batch_size=8)


def run(args) -> dict:
    import dataclasses
    import importlib
    import json
    from pathlib import Path

    from ..data import CalibrationConfig
    from ..errors import SettingError, param
    from ..models.loading import EMBEDDED_MODELS, SPLIT_MODELS
    from ..outputs import read_untrusted
    from ..search import SearchRun, read_state
    from .job import Job

    state = read_state(Path(args.run))  # checked: a finished search of a known command
    if state["driver"] not in DRIVERS or not state["finished"]:
        raise SettingError(f"{param('run')} {args.run!r} holds no finished search of "
                           f"{', '.join(DRIVERS)}: finish it with --resume first")
    config_name, driver = DRIVERS[state["driver"]]
    module = importlib.import_module(f"..{state['driver']}", __package__)
    settings = state["settings"]
    model = settings.get("model")
    calibration_settings = settings.get("calibration") or {}
    sources = [str(calibration_settings.get(key) or "") for key in ("source", "validation_source",
                                                                     "training_source")]
    local = isinstance(model, str) and (model in {**EMBEDDED_MODELS, **SPLIT_MODELS} or Path(model).exists())
    if not local or any(text.startswith("hf:") for text in sources):
        raise SettingError(f"the run in {args.run} names a model or text this command will not fetch: "
                           "export it with the search command itself (same flags, --resume)")
    config_class = getattr(module, config_name)
    names = {field.name for field in dataclasses.fields(config_class)}
    config = config_class(**{key: value for key, value in settings.items() if key in names})
    fields = {field.name for field in dataclasses.fields(CalibrationConfig)}
    calibration = CalibrationConfig(**{k: v for k, v in calibration_settings.items() if k in fields})
    front = json.loads(read_untrusted(Path(args.run) / "front.json", 64 << 20))
    if args.point is not None and not (isinstance(front, list) and 0 <= args.point < len(front)):
        raise SettingError(f"{param('point')} must index the {len(front)} points of the run's front.json, "
                           f"got {args.point}")
    args.model, args.dtype = model, settings.get("dtype") or "float32"
    args.batch_size = calibration.batch_size
    with Job(args, "export", None, calibration) as job:
        loaded, tokenizer = job.load_model()
        replay = SearchRun(Path(args.run), resume=True, seed=state.get("seed") or 0,
                           settings=job.settings)
        result = getattr(module, driver)(loaded, job.windows(loaded, tokenizer), config, replay)
        distance = [abs(result.density_of(point) - (args.density or 0)) for point in result.front]
        index = args.point if args.point is not None else distance.index(min(distance))
        point = result.point(index)
        dense = job.perplexity(loaded, tokenizer)
        pruned = job.perplexity(result.apply(loaded, point), tokenizer)
        report = job.save(loaded, tokenizer, {**result.description(point), "point": index}, {
            "run": str(args.run), "point": index, "front_point": point, "dense_ppl": dense.perplexity,
            "pruned_ppl": pruned.perplexity})
    print(f"export: point {index} of {len(result.front)} ({state['driver']}); "
          f"ppl {dense.perplexity:.3f} -> {pruned.perplexity:.3f}; saved to {job.output / 'model'}")
    return report
