"""The predictor on Kafka: a Faust app with the pure core inside (``alb predictor``).

:mod:`predictor.stream.app` (design and commit order in its docstring),
:mod:`predictor.stream.stages` (the Faust-free logic of its two stages) and
:mod:`predictor.stream.settings` (``ALB_PREDICTOR_*``). ``python -m predictor.stream``
runs a worker.
"""
