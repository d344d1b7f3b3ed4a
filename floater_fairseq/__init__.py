"""floater_fairseq: FLOATER (Neural-ODE position encoding) and other position encoders for fairseq.

Use as a plugin: ``fairseq-train --user-dir floater_fairseq --arch floater_transformer_... ``.
Importing this package registers every model, architecture, task and position encoder, and
installs the fairseq/torch shims listed in ``compat`` (checkpoint types allow-listed for torch's
safe loading; atomic checkpoint copies). Nothing else is changed in fairseq or torch. The
command-line tools live in ``floater_fairseq.cli`` and are not imported here.
"""
import os

USER_DIR = os.path.dirname(os.path.abspath(__file__))  # what --user-dir must name

from . import compat

compat.install()  # before any checkpoint is loaded: see compat.py for each shim and why

from . import models  # noqa: F401,E402  (registers the models and their architectures)
from . import tasks  # noqa: F401,E402  (registers the tasks)

__version__ = "0.1.0"
