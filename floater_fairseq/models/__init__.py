from . import floater_transformer  # noqa: F401  (registers the model and its architectures)
from . import memory_transformer_lm  # noqa: F401
