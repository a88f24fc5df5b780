"""nnlab foundations: data, models, training, evaluation, measurement and the on-disk workspace.

Nothing in this package except :mod:`nnlab.ui.session` imports streamlit.
"""

__all__ = ["config", "data", "models", "train", "evaluate", "measure", "records", "workspace"]
