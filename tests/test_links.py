"""A copied link reopens the same view: the selection travels in the URL's query parameters (issue 22)."""

from __future__ import annotations

from tests.conftest import app_test


def test_the_selection_is_written_to_the_url_and_read_back_in_a_new_session(demo):
    at = app_test("pages/diagnose_classes.py")
    at.run()
    assert not at.exception, at.exception
    url = {k: at.query_params[k] for k in at.query_params}
    assert url["dataset"] == "digits" and url["arch"] == "demo-cnn" and url["weights"] == "demo"
    # another session opened with that link (and a different architecture asked for) gets the same selection
    other = app_test("pages/diagnose_classes.py")
    for k, v in {**url, "arch": "demo-cnn-small", "weights": "random"}.items():
        other.query_params[k] = v
    other.run()
    assert not other.exception, other.exception
    assert other.session_state["arch"] == "demo-cnn-small" and other.session_state["weights"].startswith("Random")
    assert other.query_params["arch"] == "demo-cnn-small"


def test_unknown_values_in_the_link_are_ignored(demo):
    at = app_test("pages/overview.py")
    at.query_params["dataset"] = "no-such-dataset"
    at.query_params["weights"] = "stolen"
    at.query_params["upload"] = "../../etc/passwd"
    at.query_params["arch"] = "no-such-arch; rm -rf /"
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["dataset"] == "digits" and "upload_sha" not in at.session_state
    assert at.session_state["arch"] == "demo-cnn"
