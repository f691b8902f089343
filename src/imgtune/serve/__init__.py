"""The serving wing: one base model, many adapters, micro-batched HTTP classification.

``engine`` holds the base model and its adapters and is the only code that runs the model,
``batcher`` gathers requests into batches, ``app`` is the FastAPI application, ``listen``
checks the address before the model loads.

May import: ``imgtune.errors``, ``imgtune.data``, ``imgtune.rundir``, ``imgtune.tuning`` (the
method registry, the base model loader) and ``imgtune.inference``. Never the CLI.
"""
