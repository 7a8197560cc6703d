"""Test certificates, made at test time with the very ``openssl`` commands docs/operations.md
gives operators (so the documentation is exercised, not just the code)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", *CURVE, "-days", "30", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_cert(directory: Path, name: str, ca: str, extensions: str) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", *CURVE, "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
             cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


@dataclass
class Certs:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    stranger: Path  # a client certificate from another CA
    stranger_key: Path


def make_certs(directory: Path) -> Certs:
    ca, _ = make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    server, server_key = make_cert(
        directory, "server", "ca",
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\n")
    client, client_key = make_cert(directory, "client", "ca",
                                   "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    stranger, stranger_key = make_cert(directory, "stranger", "other-ca",
                                       "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return Certs(ca, server, server_key, client, client_key, stranger, stranger_key)
