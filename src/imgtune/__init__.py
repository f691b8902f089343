"""imgtune: fine-tune pretrained image classifiers with parameter-efficient adapters.

The Python API is the same code the CLI runs::

    import imgtune
    cfg = imgtune.load_config("food101-lora", dataset="my_photos/", epochs=3)
    result = imgtune.train(cfg)
    results, skipped = imgtune.predict(result.output_dir, ["photo.jpg"])
"""
import importlib
import os
import sys
import types

# Loader work and torch's compute threads share the CPU: with libgomp's default spinning, idle
# OpenMP threads starve everything else on a busy machine (measured on 2 shared cores: a small
# ViT step 15-46 ms/image spinning vs 6.4 ms passive; a 224-px resize 14.6 vs 0.6 ms). Only takes
# effect before torch is loaded, and never overrides the user's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import TrainConfig, load_config  # noqa: E402  (yaml only)
from .errors import UserError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["TrainConfig", "UserError", "load_config", "train", "evaluate", "predict", "Predictor"]

# name -> module: these pull in torch, transformers and peft (6-12 s on a small CPU), so they load on
# first use and `imgtune --help`, `presets` and mistakes in the arguments answer at once
_LAZY = {"train": "train", "evaluate": "evaluate", "predict": "predict", "Predictor": "predict"}


class _Package(types.ModuleType):
    def __getattr__(self, name: str):  # only reached when the attribute is not set yet
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule imgtune.train makes the import system set `imgtune.train` to that
        # module; the API's `imgtune.train` is the function, whichever was imported first.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_LAZY))


sys.modules[__name__].__class__ = _Package
