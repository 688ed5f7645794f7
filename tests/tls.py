"""Certificates for servers that take connections over TLS only, as hosted ones do.

A throwaway certificate authority and a server certificate for ``127.0.0.1`` and
``localhost``, made with the ``openssl`` command, so that clients can check the server's
name against a CA (``sslmode=verify-full``, ``ssl_cert_reqs=required``) as they should.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

from terminal import ensure_program


class Certificates(NamedTuple):
    ca: Path  # the authority's certificate, which clients trust
    cert: Path  # the server's certificate, signed by the authority
    key: Path  # the server's private key


def make_certificates(folder: Path) -> Certificates:
    openssl = ensure_program("openssl")  # installed with apt-get when missing, as root
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, request = folder / "server.pem", folder / "server.key", folder / "server.csr"
    names = folder / "names.ext"
    # The extensions that strict checkers want (Python 3.13 verifies X.509 strictly by
    # default): key usages on both, and the key identifiers that link the two.
    names.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
    )

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(request))  # fmt: skip
    run("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(names), "-out", str(cert))  # fmt: skip
    return Certificates(ca, cert, key)
