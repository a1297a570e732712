"""Ablate: intervene on one component (zero, mean, patch, steer) and measure what changes at the next
token; sweep the operation over every head or layer, or zero an SAE's features in turn; evaluate it over a
prompt set. Every run is a
stored experiment; its share link `?experiment=<hash>` opens it here."""
import streamlit as st

from synapse_core.arch.spec import FEATURE_OPS, OPS, TARGET_SITES
from synapse_core.common.errors import SynapseError
from synapse_core.experiments import records as rec
from synapse_core.interventions.metrics import METRIC_LABELS, METRICS, resolve_target
from synapse_core.interventions.ops import parse_positions
from synapse_core.interventions.sweep import LAYER_SITES
from ui import ablate as ui_ablate
from ui import core
from ui import features as ui_features
from ui import trace as ui_trace

st.title("Ablate")

shared = st.query_params.get("experiment")
if shared:  # a share link: show the stored result first (it needs no model)
    st.subheader("Shared experiment")
    try:
        found = core.open_experiment(shared)
        if found is None:
            st.error(f"No experiment {shared} is stored here: it was deleted, or made on another machine.")
        else:
            ui_ablate.show_experiment(found, "ablate_shared")
    except SynapseError as exc:
        core.show_error(exc)
    if st.button("Close the shared experiment", key="ablate_shared_close"):
        del st.query_params["experiment"]
        st.rerun()
    st.divider()

handle = core.require_model()

st.subheader("Intervention")
site_col, what_col, op_col, pos_col = st.columns(4)
site = site_col.selectbox("Component", [*TARGET_SITES, "feature"], key="ablate_site",
                          format_func=lambda s: ui_ablate.SITE_LABELS.get(s, "SAE feature(s)"))
heads, layer, features, value = "", 0, "", None
if site == "feature":
    features = what_col.text_input("Features", key="ablate_features", placeholder="layers.15.resid.post.sae.1234",
                                   help="Names from the Features page, comma-separated; the SAE's error term is kept.")
elif site == "attn.head":
    heads = what_col.text_input("Heads (LAYER.HEAD)", key="ablate_heads", placeholder="e.g. 9.6, 10.0",
                                help="Several heads are intervened on together.")
else:
    layer = what_col.number_input("Layer", min_value=0, max_value=handle.arch.n_layers - 1, key="ablate_layer")
op = op_col.selectbox("Operation", FEATURE_OPS if site == "feature" else OPS, key="ablate_op",
                      format_func=lambda o: ui_features.FEATURE_OP_LABELS.get(o) if site == "feature"
                      else ui_ablate.OP_LABELS.get(o))
positions = pos_col.text_input("Positions", value="all", key="ablate_positions",
                               help="all, last, or token positions such as 0, 3, -1")
reference = source = plus = minus = ""
scale = 1.0
if site == "feature":
    if op != "zero":
        value = st.number_input("Activation to clamp to" if op == "clamp" else "Multiple of the decoder direction",
                                value=10.0, step=1.0, key="ablate_feature_value")
elif op == "mean":
    reference = st.text_area("Reference prompts, one a line (empty: the default set shipped with Synapse)",
                             key="ablate_reference")
elif op == "patch":
    source = st.text_area("Source prompt: the component's activation is copied from its run", key="ablate_source")
elif op == "steer":
    plus_col, minus_col, scale_col = st.columns([2, 2, 1])
    plus = plus_col.text_input("Direction: towards this prompt", key="ablate_steer_plus")
    minus = minus_col.text_input("… away from this prompt", key="ablate_steer_minus")
    scale = scale_col.number_input("Scale", value=1.0, step=0.5, key="ablate_steer_scale")

st.subheader("Prompt")
prompt = st.text_area("Prompt", key="ablate_prompt",
                      placeholder="When Mary and John went to the store, John gave a drink to")
target_col, contrast_col, metric_col = st.columns(3)
target = target_col.text_input("Target token", key="ablate_target", placeholder="' Mary': mind the leading space")
contrast = contrast_col.text_input("Contrast token (optional)", key="ablate_contrast", placeholder="' John'")
metric = metric_col.selectbox("Metric of sweeps and prompt sets", ["auto", *METRICS], key="ablate_metric",
                              format_func=lambda m: "logit diff with a contrast, else log p" if m == "auto"
                              else METRIC_LABELS[m])
metric = None if metric == "auto" else metric
if target:
    try:
        t = resolve_target(handle, target, contrast or None)
        st.caption(f"Scored on token `{ui_trace.show_token(t.token)}` ({t.id})" + (
            f" against `{ui_trace.show_token(t.contrast_token)}` ({t.contrast_id})" if t.has_contrast else ""))
        if t.warnings:  # several tokens, or a leading space that changes the token: shown with both spellings
            st.warning("  \n".join(t.warnings))
    except SynapseError as exc:
        core.show_error(exc)


def chosen():
    """The interventions the form describes (SynapseError when it is incomplete)."""
    if site == "feature":
        return ui_features.feature_interventions(features, op, value, positions)
    return ui_ablate.interventions(site, heads, layer, op, positions, source)


def masks_settings():
    return core.masks_in_force(handle), ui_ablate.op_settings(op, reference, plus, minus, scale)


def run(state_key: str, make_config) -> None:
    ui_ablate.run_experiment(handle, state_key, make_config)


def show(state_key: str, prefix: str) -> None:
    ui_ablate.show_last(handle, state_key, prefix)


if st.button("Run", key="ablate_run_button", type="primary"):
    run(core.ABLATE_RUN, lambda: rec.ablation_config(handle, prompt, target, chosen(), contrast or None,
                                                     *masks_settings()))
show(core.ABLATE_RUN, "ablate_result")

st.subheader("Sweep")
st.caption("The operation above applied to every head, or each site of every layer, or each feature of an SAE "
           "(zeroed, its error term kept), one at a time: a causal map.")
kind_col, sites_col = st.columns([1, 2])
over = kind_col.radio("Sweep over", ["heads", "layers", "features"], key="ablate_sweep_over", horizontal=True,
                      format_func={"heads": "every head", "layers": "every layer", "features": "SAE features"}.get)
if over == "features":
    sae, feature_text, top = ui_features.sweep_widgets(handle, sites_col)
    make_sweep = lambda: rec.feature_sweep_config(  # noqa: E731
        handle, prompt, target, sae, ui_ablate.feature_list(feature_text), top, contrast or None,
        parse_positions(positions), metric, masks_settings()[0])
    make_set_sweep = lambda: rec.feature_promptsweep_config(  # noqa: E731 - the prompt set below, these features
        handle, ui_ablate.prompt_cases(lines, upload), sae, ui_ablate.feature_list(feature_text), top,
        parse_positions(positions), metric, masks_settings()[0])
else:
    sites = sites_col.multiselect("Layer sites", LAYER_SITES, default=list(LAYER_SITES), key="ablate_sweep_sites",
                                  format_func=ui_ablate.SITE_LABELS.get, disabled=over == "heads")
    sites = ("attn.head",) if over == "heads" else tuple(sites)
    make_sweep = lambda: rec.sweep_config(handle, prompt, target, contrast or None, sites, op,  # noqa: E731
                                          parse_positions(positions), source or None, metric, *masks_settings())
    make_set_sweep = lambda: rec.promptsweep_config(  # noqa: E731 - the prompt set below, this sweep
        handle, ui_ablate.prompt_cases(lines, upload), sites, op, parse_positions(positions), source or None, metric,
        *masks_settings())
if st.button("Sweep", key="ablate_sweep_button"):
    run(core.ABLATE_SWEEP, make_sweep)
show(core.ABLATE_SWEEP, "ablate_sweep")

st.subheader("Prompt set")
st.caption("The intervention above over many prompts: clean vs intervened for each, and the aggregate; or the "
           "sweep above on each prompt, and its mean map. Both run on the configured job engine.")
lines = st.text_area('One `prompt | target | contrast` per line (contrast optional; quote a field to keep its '
                     'spaces: " Mary")', key="ablate_promptset_text")
upload = st.file_uploader("… or a CSV with columns prompt, target, contrast", type="csv", key="ablate_promptset_csv")
if st.button("Run on the prompt set", key="ablate_promptset_button"):
    run(core.ABLATE_PROMPTSET, lambda: rec.promptset_config(handle, ui_ablate.prompt_cases(lines, upload), chosen(),
                                                          *masks_settings(), metric=metric))
show(core.ABLATE_PROMPTSET, "ablate_promptset")
if st.button("Sweep the prompt set", key="ablate_promptsweep_button"):
    run(core.ABLATE_PROMPTSWEEP, make_set_sweep)
show(core.ABLATE_PROMPTSWEEP, "ablate_promptsweep")
