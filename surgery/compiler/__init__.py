"""The compiler: a recipe of passes on a traced model, ghosts that know how to leave, verified export.

``driver`` (``surgery.compile``: trace, run the recipe's passes, one graph per mode),
``passes`` (one file per pass, registered with ``@register``; ``deghost`` among them),
``recipe`` / ``presets`` / ``options`` (what a recipe says and how its values are checked),
``ghosts`` (the training-only modules), ``masks`` (mask parametrizations, mask files and their
metadata), ``weight_files`` (the one reader of weight files), ``manifest`` / ``inspection``
(what a compile did), ``submodules`` (compiling one part), ``schedules`` / ``timeline`` (ghost
strength over training and the removal step), ``verify`` (the clean graph against the
original) and ``export`` (sparse ONNX with the ``preprocessing`` it expects).
"""
