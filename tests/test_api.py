"""The package itself: the Python API names, and a command line that answers at once."""

import subprocess
import sys

from conftest import run_cli

CHECK_API = """
import sys, imgtune
assert "torch" not in sys.modules, "import imgtune loaded torch"
from imgtune.tuning.recipe import train  # the defining module first: imgtune.train is still the function
assert imgtune.train is train and callable(imgtune.train)
import imgtune.inference.evaluate, imgtune.inference.predict
from imgtune import predict, Predictor, load_config, TrainConfig, UserError
assert imgtune.evaluate.__module__ == "imgtune.inference.evaluate" and predict.__module__ == "imgtune.inference.predict"
assert type(sys.modules["imgtune"]) is type(sys), "the package keeps the plain module class"
assert Predictor.__name__ == "Predictor" and sorted(imgtune.__all__) == sorted(
    ["TrainConfig", "UserError", "load_config", "train", "evaluate", "predict", "Predictor"])
try:
    imgtune.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("unknown names must raise AttributeError")
"""

CHECK_PARSER = """
import sys
from imgtune.cli.main import build_parser
build_parser()
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate", "datasets") if m in sys.modules)
assert not heavy, heavy
"""


def test_the_api_names_are_the_functions_whatever_is_imported_first():
    proc = subprocess.run([sys.executable, "-c", CHECK_API], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_building_the_command_line_loads_no_ml_library():
    proc = subprocess.run([sys.executable, "-c", CHECK_PARSER], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_help_and_presets_through_the_console_entry_point():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "evaluate" in proc.stdout and "serve" in proc.stdout
    proc = run_cli("presets")
    assert proc.returncode == 0 and "food101-lora" in proc.stdout
