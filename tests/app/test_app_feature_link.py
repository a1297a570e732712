"""A ?feature= link opens the Features page on that feature, even one the page's top-100 list leaves out;
a link to a feature that does not exist is refused by name. Uses the SAEs shipped with the bundled model."""
from app_helpers import app

from synapse_core.features import browse
from ui import feature_link
from ui import features as uf

SAE = "layers.15.resid.post.sae"


def open_link(name):
    at = app()
    at.query_params[feature_link.PARAM] = name
    return at.switch_page("pages/features.py").run()


def test_a_feature_link_selects_its_sae_and_feature():
    rarest = browse.find(SAE, limit=10_000)[-1].feature  # the least dense live feature: never in the top 100
    assert rarest not in {r.feature for r in browse.find(SAE)}
    at = open_link(f"{SAE}.{rarest}")
    assert not at.exception and not at.error
    assert at.session_state[uf.SAE_PICK] == SAE and at.selectbox(key=uf.SAE_PICK).value == SAE
    assert at.selectbox(key=uf.FEATURE_PICK).value == rarest
    assert at.subheader[0].value == f"{SAE}.{rarest}"
    # a pick on the page is not overwritten by the link on the next rerun
    densest = browse.find(SAE)[0].feature
    at.selectbox(key=uf.FEATURE_PICK).set_value(densest).run()
    assert not at.exception and at.subheader[0].value == f"{SAE}.{densest}"


def test_a_link_to_a_feature_that_does_not_exist_names_it():
    at = open_link(f"{SAE}.99999")
    assert not at.exception
    assert at.error[0].value == f"feature 99999 does not exist: {SAE} has features 0-4607"
    at = open_link("layers.9.resid.post.sae.3")
    assert "'layers.9.resid.post.sae', which is no SAE of this model" in at.error[0].value
