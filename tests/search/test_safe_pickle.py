"""The checkpoint reader rebuilds data and never runs code: a battery of hostile pickles."""

import io
import pickle
import pickletools
import struct

import numpy as np
import pytest
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.problems import get_problem

from optishear_moo.search.safe_pickle import DataUnpickler, dumps, loads

ALLOWED_MODULES = ["builtins", "copyreg", "numpy", "numpy.random._pickle", "numpy._core.multiarray",
                   "pymoo.core.problem", "pymoo.util.misc", "pymoo.algorithms.moo.nsga2",
                   "optishear_moo.search.checkpoint", "optishear_moo.cli.common",
                   "optishear_moo.optishear.problem"]


def _str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"  # STACK_GLOBAL


def _call(module: str, name: str, *args: bytes) -> bytes:
    """Protocol-4 bytes for ``module.name(*args)`` (REDUCE)."""
    return _global(module, name) + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def _pickle(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def _refused(data: bytes, match: str = "not allowed"):
    with pytest.raises(pickle.UnpicklingError, match=match):
        loads(data)


def test_a_real_algorithm_round_trips_and_continues():
    problem = get_problem("zdt1", n_var=5)
    algorithm = NSGA2(pop_size=6)
    algorithm.setup(problem, seed=1, termination=("n_gen", 3))
    algorithm.next()
    copy = loads(dumps(algorithm))
    np.testing.assert_array_equal(copy.pop.get("X"), algorithm.pop.get("X"))
    copy.next()
    algorithm.next()
    np.testing.assert_array_equal(copy.pop.get("F"), algorithm.pop.get("F"))  # same random state


@pytest.mark.parametrize("module", ALLOWED_MODULES)
def test_dotted_names_through_allowed_modules_are_refused(module, tmp_path):
    marker = tmp_path / "owned"
    for name in ("os.system", "subprocess.getoutput", "sys.modules", "__builtins__.eval"):
        _refused(_pickle(_call(module, name, _str(f"touch {marker}"))))
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("subprocess", "run"), ("builtins", "eval"),
    ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"), ("builtins", "open"),
    ("pickle", "loads"), ("numpy", "load"), ("numpy", "fromfile"), ("importlib", "import_module"),
    ("optishear_moo.search.runner", "get_termination"),  # a function a module imports, not defines
    ("optishear_moo.search.checkpoint", "os"),  # a module an allowed module imports
    ("optishear_moo.search.checkpoint", "save_checkpoint"),  # defined there, but not on the list
    ("optishear_moo.models.loading", "load_model"),
    ("pymoo.util.misc", "at_least_2d_array"),
    ("optishear_moo.search.checkpoint", "Path"),  # a class imported into an allowed module
])
def test_functions_modules_and_imported_names_are_refused(module, name):
    _refused(_pickle(_call(module, name, _str("x"))))


def test_allowed_classes_and_functions_are_never_called_while_loading():
    # a class of an allowed package, and an allowed operator function, in REDUCE position
    _refused(_pickle(_call("pymoo.algorithms.moo.nsga2", "NSGA2")), "calls NSGA2 while loading")
    _refused(_pickle(_call("pymoo.algorithms.moo.nsga2", "binary_tournament", _str("x"))), "calls")
    # reconstructors with code as argument
    hostile_ctor = _call("numpy.random._pickle", "__generator_ctor", _str("PCG64"),
                         _global("pymoo.algorithms.moo.nsga2", "NSGA2"))
    _refused(_pickle(hostile_ctor), "passes code")
    through_constructor = _call("copyreg", "_reconstructor", _global("pymoo.core.callback", "Callback"),
                                _global("pymoo.algorithms.moo.nsga2", "NSGA2"), b"N")
    _refused(_pickle(through_constructor), "constructor")
    not_an_array = _call("numpy._core.multiarray", "_reconstruct", _global("pymoo.core.callback", "Callback"),
                         b"K\x00\x85", b"C\x01b")
    _refused(_pickle(not_an_array), "non-array")


def test_build_cannot_install_methods_or_malformed_state():
    new_callback = _global("pymoo.core.callback", "Callback") + b")\x81"  # EMPTY_TUPLE NEWOBJ
    dunder = b"}" + _str("__setstate__") + _global("numpy", "sum") + b"sb"  # {key: value} BUILD
    _refused(_pickle(new_callback + dunder), "sets '__setstate__'")
    _refused(_pickle(new_callback + _str("not a dict") + b"b"), "malformed state")
    # NEWOBJ of a class with its own __new__ (no constructor code runs while loading)
    _refused(_pickle(_global("pymoo.core.population", "Population") + b")\x81"), "its own __new__")


def test_protocol_0_and_1_instance_opcodes_extensions_and_persistent_ids_are_refused(tmp_path):
    inst = b"(ipymoo.core.callback\nCallback\n."  # INST
    _refused(inst, "opcode")
    obj = b"\x80\x02(" + _global("pymoo.core.callback", "Callback") + b"o."  # OBJ
    _refused(obj, "opcode")
    _refused(b"\x80\x02\x82\x01.", "opcode")  # EXT1
    _refused(b"\x80\x02Pfoo\n.", "opcode")  # PERSID
    _refused(_pickle(_str("x") + b"Q"), "refers to")  # BINPERSID with a name not on the list
    persistent = _pickle(b"(" + _str("function") + _str("os") + _str("system") + b"tQ")
    _refused(persistent, "refers to")


def test_numpy_object_arrays_and_nested_pickles(tmp_path):
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    _refused(pickle.dumps(np.array([Exploit()], dtype=object), protocol=5))
    _refused(pickle.dumps(np.array([Exploit()], dtype=object), protocol=2))
    inner = pickle.dumps(Exploit(), protocol=5)
    nested = _pickle(_call("pickle", "loads", b"C" + bytes([len(inner)]) + inner))
    _refused(nested)
    # an object array whose raw data are bytes (pointers) is refused by NumPy itself
    raw = pickle.dumps(np.zeros(2, dtype=np.int64), protocol=2).replace(b"i8", b"O8")
    with pytest.raises(Exception):  # noqa: B017 - NumPy's own error type
        loads(raw)
    assert not marker.exists()
    assert DataUnpickler(io.BytesIO(pickle.dumps({"ok": [1, 2.5, "x"]}, protocol=5))).load() == {
        "ok": [1, 2.5, "x"]}


def test_the_battery_covers_every_opcode_that_calls():
    calling = {"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID",
               "BINPERSID", "GLOBAL", "STACK_GLOBAL"}
    assert calling <= {op.name for op in pickletools.opcodes}
    for name in calling:
        code = getattr(pickle, name)[0]
        assert DataUnpickler.dispatch[code] is not pickle._Unpickler.dispatch[code] or name in (
            "GLOBAL", "STACK_GLOBAL", "BINPERSID"), name  # names go through find_class/persistent_load
    assert struct.calcsize("<B") == 1
