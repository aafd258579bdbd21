"""Pytree partitioning (in the manner of ``eqx.partition``/``optax.masked``): which leaves
of a parameter tree adapt, named by their paths."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax

PyTree = Any


def path_name(path: tuple) -> str:
  """``"head/kernel"`` for the key path of a parameter leaf."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def mask_from_filter(select: Callable[[str], bool], tree: PyTree) -> PyTree:
  """Pytree of Python bools: ``select(path_name)`` of every leaf of ``tree``.

  Raises:
    ValueError: when no leaf is selected (listing the paths there are).
  """
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(select(path_name(p))), tree)
  if not any(jax.tree.leaves(mask)):
    names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    raise ValueError(f"the parameter filter selects no parameter; parameter paths are {names}")
  return mask


def partition(tree: PyTree, mask: Optional[PyTree]) -> tuple[PyTree, PyTree]:
  """``(selected, rest)``: two trees shaped like ``tree`` holding ``None`` where the other has the leaf.

  ``mask`` is a pytree of Python bools with the structure of ``tree`` (``None``: all selected).
  ``None`` is an empty subtree to ``jax.tree`` functions, ``jax.grad`` and Optax, so the
  selected part can be differentiated and optimised on its own.
  """
  if mask is None:
    return tree, jax.tree.map(lambda _: None, tree)
  leaves, treedef = jax.tree.flatten(tree)
  try:
    chosen = [bool(m) for m in treedef.flatten_up_to(mask)]
  except (ValueError, TypeError) as err:
    raise ValueError(f"`mask` must have the structure of the parameters ({treedef})") from err
  selected = [leaf if c else None for leaf, c in zip(leaves, chosen)]
  rest = [None if c else leaf for leaf, c in zip(leaves, chosen)]
  return jax.tree.unflatten(treedef, selected), jax.tree.unflatten(treedef, rest)


def combine(selected: PyTree, rest: PyTree) -> PyTree:
  """The inverse of :func:`partition`: each leaf from whichever tree holds it."""
  return jax.tree.map(lambda a, b: b if a is None else a, selected, rest, is_leaf=lambda x: x is None)
