import pytest


@pytest.fixture(scope="session")
def bundled():
    """The real bundled model (SmolLM2-135M-Instruct), loaded once per test session."""
    from synapse_core import load_model

    return load_model("bundled", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def installed():
    """The training corpus's sources (skips the test when the corpus is not installed)."""
    from synapse_core.features import corpus

    try:
        return corpus.check_installed()
    except Exception as exc:  # noqa: BLE001 - the message says how to install it
        pytest.skip(str(exc))
