"""The serving wing: one base model, many adapters, micro-batched HTTP classification.

``catalog`` knows every adapter (metadata only), ``pool`` keeps the resident ones on the base model
(an LRU cap, pinned while in use, loads on a loader thread), ``engine`` is the only code that runs
the model, ``batcher`` gathers requests into batches (a bounded queue), ``app`` is the HTTP layer
(reading and decoding uploads within ``limits``), ``admin`` the token-guarded adapter management,
``health`` liveness/readiness, ``metrics`` Prometheus metrics and the access log, ``listen`` checks
the address before the model loads.

May import: ``imgtune.errors``, ``imgtune.data``, ``imgtune.rundir``, ``imgtune.preflight``,
``imgtune.tuning`` (the method registry, the base model loader) and ``imgtune.inference``. Never the CLI.
"""
