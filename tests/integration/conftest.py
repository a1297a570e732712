import pytest


@pytest.fixture(scope="session")
def bundled():
    """The real bundled model (SmolLM2-135M-Instruct), loaded once per test session."""
    from synapse_core import load_model

    return load_model("bundled", device="cpu", dtype="float32")
