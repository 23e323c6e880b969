"""Certificates and ``Security`` objects shared by the interop tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from distributed.security import Security


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory) -> dict[str, Path]:
    """A CA and one certificate (key + chain in one PEM) valid for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": directory / "ca.pem", "cert": directory / "cert.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.private_key_and_cert_chain_pem.write_to_path(files["cert"])
    return files


@pytest.fixture(scope="session")
def security(cert_files) -> Security:
    """What a TLS-only dask deployment configures: one CA, a certificate per role."""
    ca, cert = str(cert_files["ca"]), str(cert_files["cert"])
    return Security(
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_scheduler_cert=cert,
        tls_worker_cert=cert,
        require_encryption=True,
    )


@pytest.fixture(scope="session")
def untrusted_security(cert_files, tmp_path_factory) -> Security:
    """Trusts a CA that never signed the peer's certificate."""
    directory = tmp_path_factory.mktemp("other-ca")
    other = trustme.CA()
    cert = other.issue_cert("127.0.0.1")
    ca_file, cert_file = directory / "ca.pem", directory / "cert.pem"
    other.cert_pem.write_to_path(ca_file)
    cert.private_key_and_cert_chain_pem.write_to_path(cert_file)
    return Security(
        tls_ca_file=str(ca_file), tls_client_cert=str(cert_file), require_encryption=True
    )
