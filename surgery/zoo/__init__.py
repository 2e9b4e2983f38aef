"""The model zoo: model specs (``torchvision:``, ``timm:``, ``hf:``, ``cifar:``) and what each needs.

``models`` (a spec to a model and its example input), ``catalog`` (the zoo the conformance
tests and ``make zoo`` run), ``tasks`` (classification, detection, segmentation: the input a
task takes and the part compiled by default), ``cifar`` (the papers' CIFAR networks) and
``hf`` (Hugging Face classes, loaded only when a spec names one).
"""
