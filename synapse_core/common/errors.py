"""Exception types of the engine. Each message names the bad value and what would be valid."""


class SynapseError(Exception):
    """Base class: anything the user can act on. Pages show it with st.error, the CLI exits 2."""


class BadInput(SynapseError, ValueError):
    """A request the engine refuses: empty prompt, head out of range, unknown token, ..."""


class ModelLoadError(SynapseError):
    """The model spec could not be turned into a loaded model."""


class UnsupportedModel(SynapseError):
    """The model loaded, but no architecture adapter knows its family."""


class StoreError(SynapseError):
    """A cache or store entry could not be read or written."""
