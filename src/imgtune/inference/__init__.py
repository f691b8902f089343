"""The inference wing: what is done with a finished run.

``precision`` picks the device and autocast dtype, ``scoring`` is the evaluation pass shared
with training, ``predict`` classifies images, ``evaluate`` scores a dataset split, ``merge``
folds an adapter into its base, ``export`` writes ONNX.

May import: ``imgtune.errors``, ``imgtune.config``, ``imgtune.data``, ``imgtune.rundir`` and
``imgtune.tuning.pretrained`` (to load a base model). ``precision`` and ``scoring`` import
nothing of imgtune beyond ``errors`` and ``data``, so training can use them. Never the CLI.
"""
