"""Diagnostics: pure computation behind the Diagnose and Look-inside pages (no streamlit here)."""
