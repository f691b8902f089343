"""The tuning wing: a pretrained classifier plus a method's adapter, trained by the recipe.

``pretrained`` loads the base model and processor and finds its head and targets, ``families`` gives
each architecture family's default targets, ``method_names`` reads the registry's names cheaply, ``methods``
is the registry (one module per method: how it is applied, its per-step hook, its extra
checkpoint state, how it is saved), ``recipe`` is the training loop in steps, ``checkpoint``
makes runs resumable, ``tracking`` and ``hub`` report and publish; ``autoconfig`` fits the settings
left to auto to the data and the model.

May import: ``imgtune.errors``, ``imgtune.config``, ``imgtune.data``, ``imgtune.rundir``, and the
two leaf modules of inference it shares with evaluation (``inference.precision`` and
``inference.scoring``), ``compare.plots``/``compare.report``'s formatting and ``imgtune.modelcard`` for a
run's figures and card, ``imgtune.preflight`` and ``imgtune.storage``. Never the CLI.
"""
