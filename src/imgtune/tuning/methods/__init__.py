"""The method registry: every module in this package registers its methods on import.

Adding a method is one new module here (and its test): a ``Method`` subclass with its ViT
defaults, its peft config and whichever hooks it needs, passed to ``register``.
"""

import importlib
import pkgutil

from imgtune.tuning.methods.base import METHODS, AdapterArgs, Method, get_method, register

# the order of `imgtune methods` and of `imgtune compare`'s default list
ORDER = ("lora", "dora", "loha", "lokr", "adalora", "vera", "oft", "boft", "ia3", "loraplus", "pissa", "full", "linear")

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
_listed = [name for name in ORDER if name in METHODS] + sorted(set(METHODS) - set(ORDER))  # new ones last
METHODS.update({name: METHODS.pop(name) for name in _listed})

__all__ = ["METHODS", "AdapterArgs", "Method", "get_method", "register"]
