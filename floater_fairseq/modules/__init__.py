"""Position encoders (one per module, registered by name) and the layers they hook into."""
from .position_encoder import POSITION_ENCODER_REGISTRY, PositionEncoder  # noqa: F401  (none)
from . import alibi, floater, learned, rope, shifted_basis, sinusoidal  # noqa: F401  (register)
from . import composite  # noqa: F401  (after its parts: registers rope+floater)
from .composite import position_encoder_class  # noqa: F401
from .floater import FloaterDynamics, FloaterNumericalError, FloaterPositionSignal  # noqa: F401
