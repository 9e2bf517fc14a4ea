"""What every search shares, apart from its method's settings: where it checkpoints, whether it
resumes, its seed, where it evaluates, and whether it reports progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SettingError, param


@dataclass(frozen=True)
class SearchRun:
    """How a search runs (the same for every method's driver).

    Args:
        directory: Where the search checkpoints after every generation (``state.json`` and
            ``evaluations.jsonl``, see :mod:`optishear_moo.search.checkpoint`); None: no
            checkpoint. The directory is locked while the search writes there.
        resume: Continue the search checkpointed in ``directory``. The method's settings must be
            those it was started with (more generations are allowed); it replays to the
            generation it had reached and goes on.
        seed: Seeds the algorithm (and every random choice of the search).
        workers: Evaluate populations on this many Ray workers (one per GPU, or CPU processes),
            or on a :class:`~optishear_moo.search.pool.RayPool` you built; None: in this process.
        ray_address: Join this Ray cluster (``HEAD:6379`` or ``auto``) instead of a local one.
        progress: Show progress (a bar per generation, pymoo's table) on standard error.
        settings: More settings a resumed run must share (the command line adds the model and
            the calibration settings), compared like the method's.
    """

    directory: str | Path | None = None
    resume: bool = False
    seed: int = 0
    workers: object = None
    ray_address: str | None = None
    progress: bool = False
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.resume and self.directory is None:
            raise SettingError(f"{param('resume')} needs the {param('directory')} the search checkpointed in")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SettingError(f"{param('seed')} must be an integer, got {self.seed!r}")
        if isinstance(self.workers, int) and (isinstance(self.workers, bool) or self.workers < 1):
            raise SettingError(f"{param('workers')} must be at least 1, got {self.workers!r}")
        if self.workers is not None or self.ray_address is not None:
            from .pool import _ray

            _ray()  # the [ray] extra is installed: checked before any work
