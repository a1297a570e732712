"""Training an SAE from the Features page on the bundled model: a tiny run (1,016 harvested tokens,
a few steps) stopped before it starts, resumed with the same settings, its progress shown with
st.progress, and the trained SAE listed in the page's SAE picker."""
import threading
import time

import pytest
from app_helpers import app

from synapse_core.common import settings
from synapse_core.features import corpus, workflow
from ui.feature_training import TRAIN_JOB

SAE = "layers.4.resid.post.sae"


@pytest.fixture(scope="module", autouse=True)
def installed():
    try:
        corpus.check_installed()
    except Exception as exc:  # noqa: BLE001 - the message says how to install it
        pytest.skip(str(exc))


def _fill(at):
    at.number_input(key="features_train_layer").set_value(4)
    at.selectbox(key="features_train_site").set_value("resid.post")
    at.number_input(key="features_train_k").set_value(8)
    at.number_input(key="features_train_d_sae").set_value(256)
    at.number_input(key="features_train_tokens").set_value(4064)  # 4 steps of the 1,016 harvested tokens
    at.number_input(key="features_train_contexts").set_value(8)
    return at


def _wait(at, seconds: float = 240):
    """Rerun the page until the job finishes; the progress texts seen on the way."""
    texts, deadline = [], time.time() + seconds
    while not at.session_state[TRAIN_JOB].finished:
        assert time.time() < deadline, "training did not finish in time"
        texts += [p.proto.text for p in at.get("progress")]
        time.sleep(0.5)
        at.run()
    at.run()  # the finished job's page
    texts += [p.proto.text for p in at.get("progress")]
    return texts


def test_train_stop_resume_with_progress_and_the_sae_listed(monkeypatch):
    gate, harvest = threading.Event(), workflow.harvest

    def held(*args, **kwargs):  # the first run waits until Stop was pressed, so it stops before its first batch
        assert gate.wait(120)
        return harvest(*args, **kwargs)

    monkeypatch.setattr(workflow, "harvest", held)
    at = _fill(app().switch_page("pages/features.py").run())
    at.button(key="features_train_start").click().run()
    assert not at.exception and not at.session_state[TRAIN_JOB].finished
    at.button(key="features_train_stop").click().run()
    assert any("Stopping at the next step" in c.value for c in at.caption)
    gate.set()
    _wait(at)
    job = at.session_state[TRAIN_JOB]
    assert job.stopped and job.folder is None and job.stage in ("starting", "harvest") and not job.error
    assert any("press Train with the same settings to resume" in i.value for i in at.info)
    assert not (settings.subdir("features") / SAE / "cfg.json").exists()

    at.button(key="features_train_start").click().run()
    assert not at.exception and not at.error
    texts = _wait(at)
    job = at.session_state[TRAIN_JOB]
    assert not job.error and not job.stopped and job.folder == settings.subdir("features") / SAE
    assert (job.stage, job.done, job.total) == ("train", 4, 4)
    assert any(t.startswith(f"{SAE}: train") for t in texts)  # the progress bar followed the run
    assert any(f"Trained {SAE}" in s.value for s in at.success)
    assert f"{SAE} · d_sae 256 · k 8" in at.selectbox(key="features_sae").options

