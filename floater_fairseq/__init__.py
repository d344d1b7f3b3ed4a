"""floater_fairseq: FLOATER (Neural-ODE position encoding) and other position encoders for fairseq.

Use as a plugin: ``fairseq-train --user-dir floater_fairseq --arch floater_transformer_... ``.
Importing this package registers every model and architecture, allow-lists the types that
fairseq 0.12 checkpoints pickle, so they load under torch's safe loading, and makes fairseq's
checkpoint copies atomic (checkpoint_safety), so a killed run never leaves a truncated checkpoint.
"""
import os

USER_DIR = os.path.dirname(os.path.abspath(__file__))  # what --user-dir must name

from . import serialization  # noqa: F401  (must run before any checkpoint is loaded)
from . import checkpoint_safety  # noqa: F401
from . import models  # noqa: F401
from . import tasks  # noqa: F401

__version__ = "0.1.0"
