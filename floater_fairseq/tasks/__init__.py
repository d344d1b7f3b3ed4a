from . import memory_language_modeling  # noqa: F401  (registers the task)
