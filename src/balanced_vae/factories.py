"""Your own networks in a run: an importable factory recorded in the run's config.

A run trained on custom networks stores ``networks = "module:function"`` and
``network_args`` in its ``config.json`` (never pickled code), so that
:func:`~balanced_vae.checkpoint.load_run`, ``balanced-vae evaluate RUN`` and
``balanced-vae sample RUN`` rebuild the same networks and load the weights into them.

Factory contract::

    def make_networks(data_shape: tuple[int, ...], latent_dim: int, **network_args)
            -> tuple[nn.Module, nn.Module]:          # (encoder, decoder)

* encoder: ``x (B, *data_shape) -> (B, 2 * latent_dim)`` or ``(mu, logvar)``, each ``(B, latent_dim)``;
* decoder: ``z (B, latent_dim) -> logits (B, *data_shape)`` (the model applies the sigmoid).

The factory is called again for the per-pixel variance head of stage 2 (Eq. 11): the head
is the decoder of that second call, a fresh instance of the same architecture. It must
build its modules from ``torch``'s global RNG only (the trainer seeds it), like any
``nn.Module`` constructor.

A reference is ``"package.module:function"`` (imported with :mod:`importlib`, so the module
must be on ``sys.path`` / ``PYTHONPATH`` wherever the run is loaded) or
``"/abs/path/file.py:function"`` (loaded from that file). :func:`factory_ref` makes one
from a function; for a function defined in a script run as ``__main__`` it records the
script's path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn


class FactoryError(ValueError):
    """A network factory that cannot be imported or called; the message names it and the fix."""


def factory_ref(fn: Callable) -> str:
    """The reference ``"module:function"`` of a module-level function (a file path for ``__main__``)."""
    name = getattr(fn, "__qualname__", None)
    if not callable(fn) or name is None or "<" in name:
        raise FactoryError(
            f"{fn!r} is not a module-level function; fix: define the factory with `def` at the "
            "top level of a module so that it can be imported again"
        )
    module = fn.__module__
    if module == "__main__":
        path = inspect.getsourcefile(fn)
        if path is None:
            raise FactoryError(f"{name} is defined in an interactive session; fix: put it in a .py file")
        return f"{Path(path).resolve()}:{name}"
    return f"{module}:{name}"


def import_factory(ref: str) -> Callable:
    """The function a reference names; :class:`FactoryError` naming it when it cannot be imported."""
    module_name, sep, attr = str(ref).rpartition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"network factory {ref!r}: expected 'module:function' or '/path/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            key = "_balanced_vae_factory_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[key]
                    raise
        else:
            module = importlib.import_module(module_name)
    except Exception as e:  # any import failure is the user's to fix; name it
        raise FactoryError(
            f"network factory {ref!r} cannot be imported ({type(e).__name__}: {e}); fix: make {module_name!r} "
            "importable where the run is loaded (install it or add its folder to PYTHONPATH), or retrain with an "
            "importable factory"
        ) from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise FactoryError(f"network factory {ref!r}: {module_name} has no function {attr!r}")
    return fn


def build_networks(
    ref: str, data_shape: tuple[int, ...], latent_dim: int, network_args: dict[str, Any] | None = None
) -> tuple[nn.Module, nn.Module]:
    """Call the factory ``ref`` and check that it returned ``(encoder, decoder)`` modules."""
    fn = import_factory(ref)
    try:
        nets = fn(tuple(data_shape), int(latent_dim), **(network_args or {}))
    except TypeError as e:
        raise FactoryError(
            f"network factory {ref!r} could not be called as f(data_shape={tuple(data_shape)}, "
            f"latent_dim={latent_dim}, **{network_args or {}}) ({e}); fix its signature or "
            "network_args"
        ) from None
    if not (isinstance(nets, (tuple, list)) and len(nets) == 2 and all(isinstance(n, nn.Module) for n in nets)):
        raise FactoryError(
            f"network factory {ref!r} returned {type(nets).__name__}; expected a pair (encoder, decoder) of nn.Modules"
        )
    return nets[0], nets[1]
