"""The compiler: a recipe of passes on a traced model, ghosts that know how to leave, verified export.

``driver`` (``surgery.compile``: trace, run the recipe's passes, one graph per mode),
``passes`` (one file per pass, ``deghost`` among them), ``recipe`` / ``presets`` /
``options`` (what a recipe value says, read once by ``recipe_passes``, and how its values
are checked), ``ghosts`` (the training-only modules), ``masks`` (mask parametrizations and
mask files with their ``MaskMetadata``), ``weight_files`` (the one reader of weights files
and checkpoints), ``manifest`` (what a compile did), ``submodules`` (compiling one part),
``schedules`` / ``timeline`` (ghost strength over training and the removal step), ``verify``
(the clean graph against the original) and ``export`` (sparse ONNX with the preprocessing
it expects).
"""
