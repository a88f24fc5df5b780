"""nnlab: the router and the frame. Pages render; computation lives in diagnostics/ and compression/."""

from __future__ import annotations

import sys

import streamlit as st

import compression.tasks  # noqa: F401 - the job kinds every page may start or rerun (Jobs page)
import diagnostics.tasks  # noqa: F401
import nnlab.jobs.kinds  # noqa: F401
from nnlab import config
from nnlab.ui import session

config.apply_cli_args(sys.argv[1:])

st.set_page_config(page_title="nnlab", page_icon=":material/biotech:", layout="wide")

PAGES = {
    "Overview": [st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
                 st.Page("pages/train.py", title="Train or fine-tune", icon=":material/model_training:")],
    "Diagnose": [
        st.Page("pages/diagnose_goal.py", title="Error vs goal", icon=":material/track_changes:"),
        st.Page("pages/diagnose_classes.py", title="Errors by class", icon=":material/grid_on:"),
        st.Page("pages/diagnose_worst.py", title="Worst errors", icon=":material/local_fire_department:"),
        st.Page("pages/diagnose_data.py", title="Data checks", icon=":material/fact_check:"),
        st.Page("pages/diagnose_curves.py", title="Learning curves", icon=":material/show_chart:"),
    ],
    "Look inside": [
        st.Page("pages/inside_filters.py", title="Filters and weights", icon=":material/filter_alt:"),
        st.Page("pages/inside_features.py", title="Feature maps", icon=":material/layers:"),
        st.Page("pages/inside_activations.py", title="Activations", icon=":material/bar_chart:"),
        st.Page("pages/inside_attributions.py", title="Deconvnet and attributions", icon=":material/visibility:"),
    ],
    "Compress": [
        st.Page("pages/compress_lab.py", title="Compression lab", icon=":material/compress:"),
        st.Page("pages/compress_pareto.py", title="Pareto", icon=":material/scatter_plot:"),
        st.Page("pages/compress_compare.py", title="Side by side", icon=":material/compare:"),
        st.Page("pages/compress_diagnose.py", title="Diagnose a variant", icon=":material/troubleshoot:"),
    ],
    "Jobs": [st.Page("pages/jobs.py", title="Jobs", icon=":material/pending_actions:")],
}

# Streamlit's own menu is off (client.showSidebarNavigation = false, so the legacy pages/ folder listing never
# shows either); the frame draws the menu itself with st.page_link, the documented way to customise navigation.
nav = st.navigation(PAGES, position="hidden")
session.navigation_menu(PAGES)
session.sidebar()
with session.frame():
    nav.run()
