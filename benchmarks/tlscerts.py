"""Throw-away TLS certificates for ``tls://`` on loopback, made with trustme.

The peer process gets the file paths (picklable) and builds its own context.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    cert_chain: str  # certificate, then private key, in one PEM file


def make(directory: Path) -> TLSFiles:
    """A fresh CA and a certificate for 127.0.0.1 / localhost, written under *directory*."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(ca=str(directory / "ca.pem"), cert_chain=str(directory / "server.pem"))
    ca.cert_pem.write_to_path(files.ca)
    cert.private_key_and_cert_chain_pem.write_to_path(files.cert_chain)
    return files


def server_context(files: TLSFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_chain)
    return context


def client_context(files: TLSFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=files.ca)
