"""nnlab: the router and the frame. Pages render; computation lives in diagnostics/ and compression/."""

from __future__ import annotations

import sys

import streamlit as st

import compression.tasks  # noqa: F401 - the job kinds every page may start or rerun (Jobs page)
import diagnostics.tasks  # noqa: F401
import nnlab.jobs.kinds  # noqa: F401
from nnlab import config
from nnlab.i18n import _
from nnlab.ui import session

config.apply_cli_args(sys.argv[1:])

st.set_page_config(page_title="nnlab", page_icon=":material/biotech:", layout="wide")
session.apply_language()  # before any text: ?lang=ru or the sidebar switch

PAGES = {
    _("Overview"): [st.Page("pages/overview.py", title=_("Overview"), icon=":material/home:", default=True),
                 st.Page("pages/train.py", title=_("Train or fine-tune"), icon=":material/model_training:")],
    _("Diagnose"): [
        st.Page("pages/diagnose_goal.py", title=_("Error vs goal"), icon=":material/track_changes:"),
        st.Page("pages/diagnose_classes.py", title=_("Errors by class"), icon=":material/grid_on:"),
        st.Page("pages/diagnose_worst.py", title=_("Worst errors"), icon=":material/local_fire_department:"),
        st.Page("pages/diagnose_data.py", title=_("Data checks"), icon=":material/fact_check:"),
        st.Page("pages/diagnose_curves.py", title=_("Learning curves"), icon=":material/show_chart:"),
    ],
    _("Look inside"): [
        st.Page("pages/inside_filters.py", title=_("Filters and weights"), icon=":material/filter_alt:"),
        st.Page("pages/inside_features.py", title=_("Feature maps"), icon=":material/layers:"),
        st.Page("pages/inside_activations.py", title=_("Activations"), icon=":material/bar_chart:"),
        st.Page("pages/inside_attributions.py", title=_("Deconvnet and attributions"), icon=":material/visibility:"),
    ],
    _("Compress"): [
        st.Page("pages/compress_lab.py", title=_("Compression lab"), icon=":material/compress:"),
        st.Page("pages/compress_pareto.py", title=_("Pareto"), icon=":material/scatter_plot:"),
        st.Page("pages/compress_compare.py", title=_("Side by side"), icon=":material/compare:"),
        st.Page("pages/compress_diagnose.py", title=_("Diagnose a variant"), icon=":material/troubleshoot:"),
    ],
    _("Jobs"): [st.Page("pages/jobs.py", title=_("Jobs"), icon=":material/pending_actions:")],
}

# Streamlit's own menu is off (client.showSidebarNavigation = false, so the legacy pages/ folder listing never
# shows either); the frame draws the menu itself with st.page_link, the documented way to customise navigation.
nav = st.navigation(PAGES, position="hidden")
session.language_switch()
session.navigation_menu(PAGES)
session.sidebar()
with session.frame():
    nav.run()
