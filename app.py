"""nnlab: the router and the frame. Pages render; computation lives in diagnostics/ and compression/."""

from __future__ import annotations

import sys

import streamlit as st

from nnlab import config, session

config.apply_cli_args(sys.argv[1:])

st.set_page_config(page_title="nnlab", page_icon="🔬", layout="wide")

PAGES = {
    "Overview": [st.Page("pages/overview.py", title="Overview", icon="🏠", default=True)],
    "Diagnose": [
        st.Page("pages/diagnose_goal.py", title="Error vs goal", icon="🎯"),
        st.Page("pages/diagnose_classes.py", title="Errors by class", icon="🧮"),
        st.Page("pages/diagnose_worst.py", title="Worst errors", icon="🔥"),
        st.Page("pages/diagnose_data.py", title="Data checks", icon="🧪"),
        st.Page("pages/diagnose_curves.py", title="Learning curves", icon="📈"),
    ],
    "Look inside": [
        st.Page("pages/inside_filters.py", title="Filters and weights", icon="🧩"),
        st.Page("pages/inside_features.py", title="Feature maps", icon="🗺️"),
        st.Page("pages/inside_activations.py", title="Activations", icon="📊"),
        st.Page("pages/inside_attributions.py", title="Deconvnet and attributions", icon="🔍"),
    ],
    "Compress": [
        st.Page("pages/compress_lab.py", title="Compression lab", icon="🗜️"),
        st.Page("pages/compress_pareto.py", title="Pareto", icon="📉"),
        st.Page("pages/compress_compare.py", title="Side by side", icon="⚖️"),
    ],
}

nav = st.navigation(PAGES)
session.sidebar()
nav.run()
