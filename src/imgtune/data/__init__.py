"""The data wing: from a source (hub dataset, image folder, CSV, digits) to uint8 batches.

``sources`` reads a source, ``splits`` makes a run's splits of it, ``decode`` turns one file into
RGB, ``transforms`` crops and normalises, ``samples`` and ``sampler`` make items and the training
order, ``cache`` keeps decoded pixels, ``badfiles`` is the skip/strict policy, ``workers`` the
thread and process counts, ``loading`` builds the loaders of a run.

May import: ``imgtune.errors``, ``imgtune.config``, ``imgtune.storage`` and third-party libraries. Nothing in the
model, tuning, inference, serving or CLI parts.
"""
