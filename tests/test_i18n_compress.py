"""Issue 24, pages B: the Look-inside and Compress pages in Russian (AppTest), and the table-header helper.

Each page renders without an exception with a Russian title and Russian captions/labels, numbers read with a decimal
comma, while the frames keep their English column names (what code, tests and CSV files use)."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from nnlab import i18n
from nnlab.ui import columns
from tests.conftest import app_test

CYRILLIC = re.compile(r"[А-Яа-яЁё]{3,}")


def _ru(page: str):
    at = app_test(page)
    at.session_state["lang"] = "ru"
    return at.run()


def _words(at) -> list[str]:
    """Text the page shows: captions, infos, warnings, subheaders and widget labels."""
    out = [str(e.value) for e in [*at.caption, *at.info, *at.warning, *at.subheader, *at.markdown]]
    out += [str(w.label) for w in [*at.selectbox, *at.radio, *at.slider, *at.checkbox, *at.button, *at.metric,
                                   *at.number_input, *at.multiselect, *at.select_slider, *at.text_input]]
    return out


def _check(at, title: str) -> list[str]:
    assert not at.exception, at.exception
    assert at.title and at.title[0].value == title
    words = _words(at)
    assert sum(bool(CYRILLIC.search(w)) for w in words) >= 3, words
    return words


def test_filters_page_in_russian(demo):
    at = _ru("pages/inside_filters.py")
    _check(at, "Фильтры и веса")
    assert at.metric[0].label == "Средняя норма L1"
    assert re.fullmatch(r"\d+,\d+", at.metric[0].value), at.metric[0].value  # decimal comma
    assert at.radio(key="filters_norm").value == "l1"  # values stay identifiers
    assert "layer" in at.dataframe[0].value.columns  # the frame keeps its English keys


def test_features_page_in_russian(demo):
    at = _ru("pages/inside_features.py")
    words = _check(at, "Карты признаков")
    assert "Предсказание" in words and "Ни разу не положительные каналы" in words
    assert at.radio(key="features_order").options == ["номер канала", "сначала сильнейшие"]


def test_activations_page_in_russian(demo):
    at = _ru("pages/inside_activations.py")
    words = _check(at, "Активации")
    assert "Выборка" in words and any(w.startswith("Мёртвый нейрон") for w in words)
    assert re.search(r"\d,\d%", at.metric[1].value), at.metric[1].value
    assert "dead units" in at.dataframe[0].value.columns


def test_attributions_page_in_russian(demo):
    at = _ru("pages/inside_attributions.py")
    words = _check(at, "Deconvnet и атрибуции")
    assert "Методы" in words and any(w.startswith("Опорный вход") for w in words)
    assert any("уверенность" in str(m.delta) for m in at.metric)


def test_compression_lab_in_russian(demo):
    at = _ru("pages/compress_lab.py")
    words = _check(at, "nnlab · Лаборатория сжатия")
    assert any(re.search(r"точность \d+,\d\d%", w) for w in words), words
    assert at.radio(key="lab_mode").options == ["Один метод", "Конвейер"]
    assert at.radio(key="lab_mode").value == "One method"


def test_pareto_page_in_russian(demo):
    at = _ru("pages/compress_pareto.py")
    words = _check(at, "nnlab · Парето")
    assert "Автоматический поиск" in words
    assert at.tabs[0].label == "Точность и размер"


def test_side_by_side_page_in_russian(demo):
    at = _ru("pages/compress_compare.py")
    assert not at.exception, at.exception
    assert at.title[0].value == "nnlab · Рядом"
    shown = [str(e.value) for e in [*at.info, *at.caption, *at.subheader, *at.warning]]
    assert any(CYRILLIC.search(s) for s in shown), shown


def test_column_labels_translate_headers_and_keep_configs():
    pct = st.column_config.NumberColumn(format="percent")
    frame = pd.DataFrame({"layer": ["conv1"], "accuracy": [0.9], "conv1.weight": [1.0]})
    with i18n.language("ru"):
        cfg = columns.labels(frame.columns, {"accuracy": pct, "hidden": None})
    assert cfg["layer"] == "слой"  # a plain string is the column's label
    assert cfg["accuracy"]["label"] == "точность" and cfg["accuracy"]["type_config"]["format"] == "percent"
    assert cfg["conv1.weight"] == "conv1.weight"  # data (a layer name) has no translation
    assert cfg["hidden"] is None
    assert pct["label"] is None  # the given config is not changed
    assert columns.labels(frame.columns)["accuracy"] == "accuracy"  # English: the name itself
