"""Certificates made at test time (trustme): the cluster's CA and a member's certificate,
and the same from another CA, as PEM files in a folder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace


def make_certificates(folder: Path) -> SimpleNamespace:
    """Paths: ``ca``, ``cert`` (certificate and key in one file), ``cert_only`` and
    ``key`` (apart), ``other_ca`` and ``other_cert`` (another cluster's), ``encrypted_key``."""
    trustme = __import__("trustme")
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    paths = SimpleNamespace(**{name: str(folder / f"{name}.pem") for name in (
        "ca", "cert", "cert_only", "key", "other_ca", "other_cert", "encrypted_key")})
    ca, other = trustme.CA(), trustme.CA()
    node = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(paths.ca)
    node.private_key_and_cert_chain_pem.write_to_path(paths.cert)
    node.cert_chain_pems[0].write_to_path(paths.cert_only)
    node.private_key_pem.write_to_path(paths.key)
    other.cert_pem.write_to_path(paths.other_ca)
    other.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(paths.other_cert)
    key = serialization.load_pem_private_key(node.private_key_pem.bytes(), password=None)
    Path(paths.encrypted_key).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return paths
