"""imgtune: fine-tune pretrained image classifiers with parameter-efficient adapters.

The Python API is the same code the CLI runs::

    import imgtune
    cfg = imgtune.load_config("food101-lora", dataset="my_photos/", epochs=3)
    result = imgtune.train(cfg)
    results, skipped = imgtune.predict(result.output_dir, ["photo.jpg"])

Importing the package loads no ML library and changes nothing in the process (environment,
threads, loggers, warning filters): ``train``, ``evaluate``, ``predict`` and ``Predictor`` load
torch, transformers and peft on first use.
"""

import importlib

from imgtune.config import TrainConfig, load_config
from imgtune.errors import UserError

__version__ = "0.1.0"
__all__ = ["TrainConfig", "UserError", "load_config", "train", "evaluate", "predict", "Predictor"]

# API name -> the module that defines it (PEP 562: looked up on first use)
_LAZY = {
    "train": "imgtune.tuning.recipe",
    "evaluate": "imgtune.inference.evaluate",
    "predict": "imgtune.inference.predict",
    "Predictor": "imgtune.inference.predict",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'imgtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
