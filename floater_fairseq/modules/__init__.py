from .floater import FloaterDynamics, FloaterNumericalError, FloaterPositionSignal  # noqa: F401
from .position_bias import PositionBiasedLinear  # noqa: F401
