"""The serving wing: one base model, many adapters, micro-batched HTTP classification.

``catalog`` knows every adapter (metadata only), ``pool`` keeps the resident ones on the base model
(LRU caps on count and bytes, pinned while in use, loads on a loader thread), ``engine`` is the only
code that runs the model, ``heads`` each adapter's own classifier head (one backbone pass across class
counts), ``batcher`` gathers requests into batches (a bounded queue), ``app`` is the HTTP layer (reading
and decoding uploads within ``limits``), ``schema`` its OpenAPI models and error codes, ``page`` the
page at ``/`` and the offline ``/docs``, ``admin`` the token-guarded adapter management, ``health``
liveness/readiness, ``metrics`` Prometheus metrics and the access log, ``listen`` checks the address
before the model loads. ``ray`` runs the same API as a Ray Serve application, one engine per replica
(``ray_app`` below; Ray is imported only when it is called).

May import: ``imgtune.errors``, ``imgtune.data``, ``imgtune.rundir``, ``imgtune.preflight``,
``imgtune.tuning`` (the method registry, the base model loader) and ``imgtune.inference``. Never the CLI.
"""


def _ray_application():
    try:
        from imgtune.serve.ray import application
    except ImportError as err:
        if err.name not in ("ray", "ray.serve"):
            raise
        from imgtune.errors import UserError

        raise UserError('serving on Ray needs Ray Serve: pip install "imgtune[ray]"') from None
    return application


def ray_app(base, adapter_dir=None, **options):
    """imgtune's HTTP API as a Ray Serve application (needs ``imgtune[ray]``); the arguments are those of
    ``imgtune.serve.ray.application.ray_app``, which says what each does."""
    return _ray_application().ray_app(base, adapter_dir, **options)


def ray_app_builder(args: dict):
    """The application from a Serve config's ``args``: ``serve run imgtune.serve:ray_app_builder base=...``."""
    return _ray_application().ray_app_builder(args)
