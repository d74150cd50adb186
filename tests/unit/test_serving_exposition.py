"""Tests healmesh.serving.exposition: rendering metric families."""

from healmesh.serving.exposition import Family, render


def test_exposition_renders_and_escapes():
    text = render([Family("x_info", "gauge", "help", (({"version": 'a"b'}, 1.0),))])
    assert '# TYPE x_info gauge' in text
    assert 'x_info{version="a\\"b"} 1.0' in text
