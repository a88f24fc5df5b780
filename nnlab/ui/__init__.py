"""The only Streamlit glue: the session (selection, caches, job panels) and widgets.

This package imports nothing itself: import the module you need."""
