"""Backends are found in the registry first, then through installed entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest

from distributed_comm import registry


@pytest.fixture
def installed_distribution(tmp_path, monkeypatch):
    """A real (tiny) installed distribution publishing backend 'dummy-ep'."""
    (tmp_path / "dc_dummy_backend.py").write_text(
        textwrap.dedent(
            """
            from distributed_comm.tcp import TCPBackend

            class DummyBackend(TCPBackend):
                loaded_from_entry_point = True
            """
        )
    )
    info = tmp_path / "dc_dummy_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dc-dummy-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[distributed.comm.backends]\ndummy-ep = dc_dummy_backend:DummyBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    registry.backends.pop("dummy-ep", None)
    sys.modules.pop("dc_dummy_backend", None)


def test_registered_backend_is_returned():
    assert registry.get_backend("tcp") is registry.backends["tcp"]


def test_entry_point_backend_is_loaded_and_cached(installed_distribution):
    assert "dummy-ep" not in registry.backends
    backend = registry.get_backend("dummy-ep")
    assert backend.loaded_from_entry_point
    assert registry.backends["dummy-ep"] is backend
    assert registry.get_backend("dummy-ep") is backend


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown address scheme 'nope'.*'tcp'"):
        registry.get_backend("nope")


def test_backend_abstract_methods_are_enforced():
    class Incomplete(registry.Backend):
        def get_connector(self):
            return None

    with pytest.raises(TypeError):
        Incomplete()
