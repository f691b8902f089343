"""imgtune: fine-tune pretrained image classifiers with parameter-efficient adapters.

The Python API is the same code the CLI runs::

    import imgtune
    cfg = imgtune.load_config("food101-lora", dataset="my_photos/", epochs=3)
    result = imgtune.train(cfg)
    results, skipped = imgtune.predict(result.output_dir, ["photo.jpg"])
"""
from .config import TrainConfig, load_config
from .errors import UserError
from .evaluate import evaluate
from .predict import Predictor, predict
from .train import train

__version__ = "0.1.0"
__all__ = ["TrainConfig", "UserError", "load_config", "train", "evaluate", "predict", "Predictor"]
