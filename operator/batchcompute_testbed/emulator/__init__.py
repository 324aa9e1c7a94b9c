"""An emulator of the Azure ML workspace ARM API, for testing the operator without Azure."""

from .config import BucketSpec, EmulatorConfig, ThrottleConfig
from .server import EmulatorServer

__all__ = ["BucketSpec", "EmulatorConfig", "EmulatorServer", "ThrottleConfig"]
