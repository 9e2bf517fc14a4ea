"""A pickle reader that rebuilds data and nothing else (for search checkpoints).

Checkpoints hold a pymoo algorithm: populations, operators, terminations, random generators.
:class:`DataUnpickler` runs the pure-Python unpickler with every opcode that can call code
replaced by a checked version:

* names (``GLOBAL``/``STACK_GLOBAL``) resolve only when exact: no dotted attribute paths, never
  something a module merely imports. Allowed are classes *defined* in a ``pymoo`` or
  ``optishear_moo`` module, the NumPy and builtin data types below, and an explicit list of
  functions (:data:`ALLOWED_FUNCTIONS`: comparison and crowding functions that pymoo operators
  keep as attributes, and NumPy/copyreg reconstructors);
* ``REDUCE`` calls only the reconstructors in :data:`RECONSTRUCTORS` (copyreg's with a builtin
  base, NumPy's array/scalar/dtype/random-generator rebuilders, builtin containers); a class or
  a pymoo function is never called while loading;
* ``NEWOBJ`` creates instances with ``object.__new__`` (or a builtin/NumPy ``__new__``) only,
  so no constructor runs; ``BUILD`` fills ``__dict__``/slots, and calls ``__setstate__`` only of
  NumPy objects (arrays, generators) and pymoo's CMA-ES wrapper, which just update their dict;
* ``INST``/``OBJ`` (protocols 0-1) and extension codes are refused; persistent ids name only
  allowed functions (pymoo wraps some in closures that plain pickle cannot name; :func:`dumps`
  writes those as ``("function", module, name)``).

Anything else raises :class:`Refused` (an ``UnpicklingError``) naming what was refused.
"""

from __future__ import annotations

import copyreg
import importlib
import io
import pickle
import sys
import types

import numpy as np

from .._moved import MOVED_MODULES

CODE_PACKAGES = ("pymoo", "optishear_moo")
"""Packages whose classes a checkpoint may name."""

_REFUSED_MODULE_PREFIXES = ("pymoo.visualization", "pymoo.gradient", "pymoo.vendor")

ALLOWED_FUNCTIONS = {
    # comparison, crowding and parameter functions that pymoo operators keep as attributes
    ("pymoo.algorithms.moo.nsga2", "binary_tournament"),
    ("pymoo.algorithms.moo.spea2", "spea_binary_tournament"),
    ("pymoo.algorithms.moo.rnsga2", "binary_tournament"),
    ("pymoo.algorithms.soo.nonconvex.nelder", "adaptive_params"),
    ("pymoo.core.duplicate", "default_attr"),
    ("pymoo.operators.sampling.lhs", "criterion_maxmin"),
    ("pymoo.operators.survival.rank_and_crowding.metrics", "calc_crowding_distance"),
    ("pymoo.operators.survival.rank_and_crowding.metrics", "calc_mnn_fast"),
    ("pymoo.operators.survival.rank_and_crowding.metrics", "calc_2nn_fast"),
    ("pymoo.operators.survival.rank_and_crowding.metrics", "calc_pcd"),
    ("pymoo.algorithms.moo.nsga3", "comp_by_cv_then_random"),
    ("pymoo.algorithms.moo.unsga3", "comp_by_rank_and_ref_line_dist"),
    ("pymoo.algorithms.moo.sms", "cv_and_dom_tournament"),
    ("pymoo.algorithms.moo.ctaea", "comp_by_cv_dom_then_random"),
    ("pymoo.algorithms.soo.nonconvex.ga", "comp_by_cv_and_fitness"),
    ("pymoo.functions.compiled.calc_perpendicular_distance", "calc_perpendicular_distance"),
    ("pymoo.functions.standard.calc_perpendicular_distance", "calc_perpendicular_distance"),
    ("optishear_moo.search.selection", "compare_by_cv_then_fitness"),
    # pure NumPy reductions (e.g. a constraint aggregation)
    ("numpy", "sum"), ("numpy", "max"), ("numpy", "min"), ("numpy", "mean"),
}

_NUMPY_RECONSTRUCTORS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
}
_COPYREG = {("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__")}
_NUMPY_CLASSES = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.random._generator", "Generator"),
                  ("numpy.random._pcg64", "PCG64"), ("numpy.random._mt19937", "MT19937"),
                  ("numpy.random._philox", "Philox"), ("numpy.random._sfc64", "SFC64"),
                  ("numpy.random.bit_generator", "SeedSequence"), ("numpy.random.mtrand", "RandomState")}
_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "tuple", "list", "dict", "int", "float",
             "bool", "str", "bytes", "bytearray", "object"}
_CALLABLE_BUILTINS = {set, frozenset, slice, range, complex, bytearray, list, dict, tuple}
_BUILTIN_NEWS = {object.__new__, *(kind.__new__ for kind in _CALLABLE_BUILTINS)}


def _numpy_object(obj) -> bool:
    return isinstance(obj, (np.ndarray, np.generic, np.dtype, np.random.Generator,
                            np.random.BitGenerator, np.random.SeedSequence, np.random.RandomState))


class Refused(pickle.UnpicklingError):
    """The pickle asks for something that is not data (a name, a call, an opcode)."""


class DataUnpickler(pickle._Unpickler):
    """Rebuilds only data (see the module docstring); ``UnpicklingError`` for anything else."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, module_renames: dict[str, str] | None = None):
        super().__init__(file)
        self.module_renames = MOVED_MODULES if module_renames is None else module_renames
        self._reconstructors: set[int] = set()

    # names ---------------------------------------------------------------------------------
    def find_class(self, module: str, name: str):
        module = self.module_renames.get(module, module)
        refused = Refused(f"the checkpoint names {module}.{name}, which is not allowed")
        if "." in name or not name.isidentifier():
            raise refused  # dotted paths would reach whatever a module imports
        if module == "builtins":
            if name not in _BUILTINS:
                raise refused
            return getattr(__import__("builtins"), name)
        key = (module, name)
        if key in _COPYREG or key in _NUMPY_RECONSTRUCTORS:
            obj = self._resolve(module, name, refused)
            self._reconstructors.add(id(obj))
            return obj
        if key in ALLOWED_FUNCTIONS or key in _NUMPY_CLASSES or module.startswith("numpy.dtypes"):
            return self._resolve(module, name, refused)
        if module.split(".")[0] in CODE_PACKAGES and not module.startswith(_REFUSED_MODULE_PREFIXES):
            obj = self._resolve(module, name, refused)
            if isinstance(obj, type) and obj.__module__ == module and obj.__qualname__ == name:
                return obj  # a class defined in that module, not one it imports
        raise refused

    @staticmethod
    def _resolve(module: str, name: str, refused: Exception):
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise refused from None
        return obj

    # calls ---------------------------------------------------------------------------------
    def _check_call(self, func, args: tuple) -> None:
        """Only reconstructors run while loading, and only with data (never code) as arguments."""
        is_dtype = func is np.dtype or (isinstance(func, type) and issubclass(func, np.dtype))
        if func in _CALLABLE_BUILTINS or is_dtype:
            first, rest = None, args
        elif id(func) in self._reconstructors:
            first, rest = (args[0], args[1:]) if args else (None, ())
        else:
            name = getattr(func, "__qualname__", type(func).__name__)
            raise Refused(f"the checkpoint calls {name} while loading, which is not allowed")
        for value in rest:
            if callable(value) and not (value is np.dtype or id(value) in self._reconstructors
                                        or isinstance(value, np.dtype)):
                raise Refused("the checkpoint passes code to a reconstructor, which is not "
                                             "allowed")
        name = getattr(func, "__name__", "")
        if func is copyreg._reconstructor:
            if len(args) != 3 or args[1] not in (object, *_CALLABLE_BUILTINS):
                raise Refused("the checkpoint rebuilds an object through a constructor, "
                                             "which is not allowed")
        elif func in (copyreg.__newobj__, getattr(copyreg, "__newobj_ex__", None)):
            self._check_new(first, rest)
        elif name == "_reconstruct":
            if not (isinstance(first, type) and issubclass(first, np.ndarray)):
                raise Refused("the checkpoint rebuilds an array of a non-array type")
        elif callable(first) and not (isinstance(first, type) and issubclass(
                first, (np.random.BitGenerator, np.random.SeedSequence))):
            raise Refused("the checkpoint passes code to a reconstructor, which is not "
                                         "allowed")

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise Refused("malformed REDUCE arguments")
        self._check_call(func, args)
        self.stack[-1] = func(*args)

    @staticmethod
    def _check_new(cls, args) -> None:
        if not isinstance(cls, type):
            raise Refused("NEWOBJ of something that is not a class")
        if cls in _CALLABLE_BUILTINS:
            return
        if cls.__new__ not in _BUILTIN_NEWS:
            raise Refused(f"the checkpoint creates {cls.__qualname__} through its own "
                                         "__new__, which is not allowed")
        if args and cls.__new__ is object.__new__:
            raise Refused(f"malformed NEWOBJ arguments for {cls.__qualname__}")

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_new(cls, args)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_new(cls, (*args, *kwargs))
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        setstate = getattr(inst, "__setstate__", None)
        if setstate is not None and (_numpy_object(inst) or _own_dict_setstate(type(inst))):
            setstate(state)
            return
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        if state is not None and not isinstance(state, dict) or (
                slotstate is not None and not isinstance(slotstate, dict)):
            raise Refused(f"malformed state for {type(inst).__qualname__}")
        if state:
            if not hasattr(inst, "__dict__"):
                raise Refused(f"state for {type(inst).__qualname__}, which has no __dict__")
            for key, value in state.items():
                if not isinstance(key, str) or (key.startswith("__") and key.endswith("__")):
                    raise Refused(f"state of {type(inst).__qualname__} sets {key!r}, "
                                                 "which is not allowed")
                inst.__dict__[sys.intern(key)] = value
        for key, value in (slotstate or {}).items():
            if not isinstance(key, str) or key.startswith("__"):
                raise Refused("malformed slot state")
            setattr(inst, key, value)

    def persistent_load(self, pid):
        """Functions that pymoo wraps in closures travel as ``("function", module, name)``."""
        if not (isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "function"
                and (pid[1], pid[2]) in ALLOWED_FUNCTIONS):
            raise Refused(f"the checkpoint refers to {pid!r}, which is not allowed")
        return self._resolve(pid[1], pid[2], Refused(f"{pid!r} is missing"))

    def _refuse(self):
        raise Refused("the checkpoint uses a pickle opcode that can run code "
                                     "(INST, OBJ, extension codes or persistent ids), which is not allowed")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    for _opcode in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.PERSID):
        dispatch[_opcode[0]] = _refuse
    del _opcode


def _own_dict_setstate(cls: type) -> bool:
    """pymoo's CMA-ES defines ``__setstate__`` only to update its dict and drop a handle."""
    from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

    return issubclass(cls, CMAES) and cls.__setstate__ is CMAES.__setstate__


class _CheckpointPickler(pickle.Pickler):
    def persistent_id(self, obj):
        # pymoo decorates some operator functions with a closure that plain pickle cannot name
        if isinstance(obj, types.FunctionType) and "<locals>" in obj.__qualname__ and obj.__closure__:
            for cell in obj.__closure__:
                inner = cell.cell_contents
                if isinstance(inner, types.FunctionType):
                    module = sys.modules.get(inner.__module__)
                    if getattr(module, inner.__name__, None) is obj:
                        return ("function", inner.__module__, inner.__name__)
        return None


def dumps(obj) -> bytes:
    """Pickle ``obj`` (protocol 5) so that :func:`loads` can read it back."""
    buffer = io.BytesIO()
    _CheckpointPickler(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


def loads(data: bytes, module_renames: dict[str, str] | None = None):
    """Rebuild ``data`` with :class:`DataUnpickler`."""
    return DataUnpickler(io.BytesIO(data), module_renames=module_renames).load()
