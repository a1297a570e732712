"""Model specs that look like paths are reported as missing paths, not as bad hub ids. No network:
each spec below fails before the hub would be asked."""
import pytest

from synapse_core.common.errors import ModelLoadError
from synapse_core.model.loading import load_model, looks_like_path


@pytest.mark.parametrize("spec", ["/nonexistent/path", "./weights", "../weights", "~/no/such/model",
                                  "models/smol/v1"])
def test_a_missing_path_is_no_such_folder_or_file(spec):
    assert looks_like_path(spec)
    with pytest.raises(ModelLoadError, match=r"^no such folder or file: ") as err:
        load_model(spec, device="cpu")
    assert str(err.value) == f"no such folder or file: {spec}"


@pytest.mark.parametrize("spec", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "no/such-model"])
def test_hub_ids_are_not_paths(spec):
    assert not looks_like_path(spec)


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "model.gguf"), device="cpu")
