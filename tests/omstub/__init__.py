"""A stand-in OpenMetadata server for the tests: the REST endpoints the SDK calls, kept in memory."""
from .server import OMStub

__all__ = ["OMStub"]
