"""imgtune's server as a Ray Serve application: ``imgtune serve --ray`` and ``imgtune.serve.ray_app``.

Three deployments: ``ImgtuneIngress`` (the HTTP API, FastAPI; reads and checks uploads, routes each
request by its adapter as Ray's multiplexed model id), ``ImgtuneReplica`` (one base model with its
resident adapters and imgtune's mixed-adapter batcher; Ray's multiplex LRU decides which adapters stay,
``sync`` makes imgtune's resident pool follow it) and ``ImgtuneStats`` (what each replica last reported,
for ``/metrics`` and ``/v1/adapters``).

``settings`` and ``sync`` import no Ray; the other modules import it at the top and are imported only
when a Ray application is built (``imgtune.serve.ray_app``), so ``import imgtune.serve`` stays light.
"""
