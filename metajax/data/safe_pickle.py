"""Reading pickles of numpy arrays without trusting them (the CIFAR-100 python files).

A pickle is a program: its ``GLOBAL`` opcodes name callables, ``REDUCE`` calls them and
``BUILD`` calls ``__setstate__`` (or sets attributes) on what they return. Even numpy's own
array builders can be driven into memory corruption by crafted state (an object field laid
over raw bytes), so :func:`load` lets a pickle call nothing of numpy's at all:

* the only globals it may name are numpy's array and dtype builders (and ``_codecs.encode``
  and ``bytes``, which protocols 0–2 use for bytes), and each name resolves to a fresh recorder that
  stores its arguments in a :class:`_Recorded` placeholder;
* ``BUILD`` is allowed on those placeholders only, and just stores the state;
* once the pickle is read, every placeholder is checked (plain numeric or byte dtypes,
  raw bytes of exactly the size the shape needs) and only then becomes an array, built
  by this module with ``np.frombuffer``.

Anything else a pickle names or builds raises :class:`UnsafePickleError` before it runs.
"""
from __future__ import annotations

import io
import math
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

# What numpy pickles name (numpy 1 and 2 module names; ``_frombuffer``: protocol 5), and how
# Python 3 writes bytes at protocols 0-2 (``_codecs.encode(text, "latin1")``, ``bytes()``).
_ALLOWED = {("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype", ("_codecs", "encode"): "encode",
            ("__builtin__", "bytes"): "bytes", ("builtins", "bytes"): "bytes"}
for _package in ("numpy.core", "numpy._core"):
  _ALLOWED[f"{_package}.multiarray", "_reconstruct"] = "reconstruct"
  _ALLOWED[f"{_package}.numeric", "_frombuffer"] = "frombuffer"
_PLAIN_DTYPE = re.compile(r"[<>|=]?([biuf][1248]|[SU][0-9]{1,6})")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
  """A pickle that names or builds anything but plain numpy arrays and containers."""


class _Recorded:
  """A numpy builder's call as a pickle describes it: arguments and ``BUILD`` state, data only."""

  __slots__ = ("kind", "args", "state")

  def __init__(self, kind: str, args: tuple):
    self.kind, self.args, self.state = kind, args, None


class _Unpickler(pickle._Unpickler):  # the Python implementation, so that BUILD can be vetted
  dispatch = dict(pickle._Unpickler.dispatch)

  def __init__(self, file: BinaryIO, source: str):
    super().__init__(file, encoding="latin1")  # Python 2 pickles: str -> latin-1 text, as numpy expects
    self.source = source

  def find_class(self, module: str, name: str):
    kind = _ALLOWED.get((module, name))
    if kind is None:
      raise UnsafePickleError(f"{self.source}: refusing to unpickle {module}.{name} (only numpy arrays "
                              "are read)")
    return lambda *args: _Recorded(kind, args)  # fresh each time: nothing shared to tamper with

  def load_build(self):
    state, target = self.stack.pop(), self.stack[-1]
    if not isinstance(target, _Recorded) or target.state is not None:
      raise UnsafePickleError(f"{self.source}: refusing to set the state of a {type(target).__name__}")
    target.state = state

  dispatch[pickle.BUILD[0]] = load_build


def load(file: BinaryIO, source: str) -> Any:
  """The object pickled in ``file`` (containers, numbers, text and numpy arrays), read safely.

  Args:
    file: a binary file object at the start of a pickle.
    source: the pickle's name, for errors.

  Raises:
    UnsafePickleError: the pickle names, calls or builds anything else (nothing is run).
  """
  return _resolve(_Unpickler(file, source).load(), source)


def loads(data: bytes, source: str = "<bytes>") -> Any:
  """:func:`load` of a pickle held in memory."""
  return load(io.BytesIO(data), source)


_PLAIN = (type(None), bool, int, float, str, bytes, bytearray)
_MAX_DIMS = 64  # numpy's own limit


def _resolve(root: Any, source: str) -> Any:
  """``root`` with every recorded numpy call replaced by its array, after checks.

  An object the pickle refers to more than once (its memo: two bytes a reference) is
  resolved once and shared, so a small pickle cannot blow up into many copies; a
  container that holds itself, and anything but plain data, is refused.
  """
  done: dict[int, Any] = {}
  active: set[int] = set()

  def walk(obj: Any) -> Any:
    if isinstance(obj, _PLAIN):
      return obj
    key = id(obj)
    if key in done:
      return done[key]
    if key in active:
      raise UnsafePickleError(f"{source}: a container that contains itself")
    active.add(key)
    if isinstance(obj, dict):
      out = {walk(k): walk(v) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple)):
      out = type(obj)(walk(v) for v in obj)
    elif isinstance(obj, _Recorded):
      out = _build(obj, walk, source)
    else:
      raise UnsafePickleError(f"{source}: refusing a {type(obj).__name__} (only containers, numbers, text "
                              "and numpy arrays are read)")
    active.discard(key)
    done[key] = out
    return out

  try:
    return walk(root)
  except RecursionError as err:
    raise UnsafePickleError(f"{source}: containers nested too deeply") from err


def _build(obj: _Recorded, walk: Any, source: str) -> Any:
  """The bytes or array a recorded call describes (``walk`` resolves its arguments)."""
  if obj.kind == "bytes" and obj.args == () and obj.state is None:
    return b""
  if obj.kind == "encode" and len(obj.args) == 2 and isinstance(obj.args[0], str) \
      and obj.args[1] in ("latin1", "latin-1") and obj.state is None:
    return obj.args[0].encode("latin1")
  if obj.kind == "reconstruct" and isinstance(obj.state, tuple) and len(obj.state) == 5:
    _, shape, dtype, fortran, raw = obj.state
    return _array(walk(raw), _dtype(dtype, source), shape, "F" if fortran else "C", source)
  if obj.kind == "frombuffer" and len(obj.args) == 4 and obj.state is None:
    raw, dtype, shape, order = obj.args
    return _array(walk(raw), _dtype(dtype, source), shape, order, source)
  raise UnsafePickleError(f"{source}: a numpy {obj.kind} call that does not describe a plain array")


def _dtype(recorded: Any, source: str) -> np.dtype:
  """A plain numeric or byte-string dtype from a recorded ``numpy.dtype(code, ...)`` call."""
  code = recorded.args[0] if isinstance(recorded, _Recorded) and recorded.kind == "dtype" and recorded.args else None
  state = getattr(recorded, "state", None)
  endian = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
  if not (isinstance(code, str) and _PLAIN_DTYPE.fullmatch(code) and endian in ("<", ">", "|", "=")):
    raise UnsafePickleError(f"{source}: only plain numeric or string arrays are read, not dtype {code!r}")
  if isinstance(state, tuple) and any(part is not None for part in state[2:5]):
    raise UnsafePickleError(f"{source}: refusing a dtype with fields or sub-arrays ({code!r})")
  dtype = np.dtype(code)
  return dtype.newbyteorder(endian) if endian in ("<", ">") else dtype


def _array(raw: Any, dtype: np.dtype, shape: Any, order: Any, source: str) -> np.ndarray:
  if isinstance(raw, str):  # a Python 2 pickle's byte string, read as latin-1 text
    raw = raw.encode("latin1")
  ok = (isinstance(raw, (bytes, bytearray)) and isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
        and order in ("C", "F") and all(isinstance(n, int) and 0 <= n < 2**63 for n in shape))
  if not ok or len(raw) != math.prod(shape) * dtype.itemsize:
    raise UnsafePickleError(f"{source}: an array whose data does not match its shape and dtype")
  return np.frombuffer(bytes(raw), dtype).reshape(shape, order=order).copy()
