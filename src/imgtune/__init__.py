"""imgtune: fine-tune pretrained image classifiers with parameter-efficient adapters.

The Python API is the same code the CLI runs::

    import imgtune
    cfg = imgtune.load_config("food101-lora", dataset="my_photos/", epochs=3)
    result = imgtune.train(cfg)
    results, skipped = imgtune.predict(result.output_dir, ["photo.jpg"])
"""
import os

# Loader work and torch's compute threads share the CPU: with libgomp's default spinning, idle
# OpenMP threads starve everything else on a busy machine (measured on 2 shared cores: a small
# ViT step 15-46 ms/image spinning vs 6.4 ms passive; a 224-px resize 14.6 vs 0.6 ms). Only takes
# effect before torch is loaded, and never overrides the user's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import TrainConfig, load_config  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .predict import Predictor, predict  # noqa: E402
from .train import train  # noqa: E402

__version__ = "0.1.0"
__all__ = ["TrainConfig", "UserError", "load_config", "train", "evaluate", "predict", "Predictor"]
