"""The comparison wing: several methods trained on the same data, and the report on them.

``runner`` trains each method (or reuses a finished one) as its own process, ``report`` writes
report.md and a self-contained report.html, ``plots`` draws every figure (also a run's own).

May import: ``imgtune.errors``, ``imgtune.config``, ``imgtune.data``, ``imgtune.tuning`` and
``imgtune.demo``; ``plots`` imports nothing of imgtune. Never the CLI.
"""
