"""course_lib: the helper library of the neural network compression course.

One module per job: ``runtime`` (seeds, threads, device), ``data`` (datasets, checksums),
``models`` (the course's Fashion-MNIST models), ``minilm`` (the pretrained transformer),
``train``, ``measure``, ``plots``, ``widgets``, ``exercises`` (checkers) and ``bench`` (the CLI).
"""

from course_lib.runtime import setup

__all__ = ["setup"]
__version__ = "0.1.0"
