"""A self-signed certificate authority and a server certificate for 127.0.0.1.

Generated with ``openssl`` the first time a secured local service starts, under the
service's state folder, and kept: clients trust the CA's PEM file (librdkafka's
``ssl.ca.location``, Python's ``ssl.create_default_context(cafile=...)``). The keys are
readable by their owner only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.local.base import PrerequisiteError

DAYS = 3650
SUBJECT_ALT_NAMES = "IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one local CA and the server certificate it signed."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        """The server certificate followed by the CA's: the chain a server presents."""
        return self.folder / "server-chain.pem"

    @property
    def server_key(self) -> Path:
        """The server's private key, PKCS#8, unencrypted (readable by its owner only)."""
        return self.folder / "server-key.pem"

    @property
    def server_keystore(self) -> Path:
        """Key and chain in one PEM file (Kafka's ``ssl.keystore.type=PEM``)."""
        return self.folder / "server-keystore.pem"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.server_cert, self.server_key,
                                          self.server_keystore))


def ensure_tls(folder: Path, common_name: str = "fraud-factory local") -> TlsFiles:
    """The CA and server certificate under ``folder``, generated when missing."""
    files = TlsFiles(folder)
    if files.exists():
        return files
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PrerequisiteError("tls: 'openssl' is missing; install it (Debian: apt-get "
                                "install openssl).")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    csr, cert, ext = folder / "server.csr", folder / "server-cert.pem", folder / "server.ext"
    ext.write_text(f"subjectAltName={SUBJECT_ALT_NAMES}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(DAYS),
         "-keyout", str(files.ca_key), "-out", str(files.ca_cert),
         "-subj", f"/CN={common_name} CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files.server_key),
         "-out", str(csr), "-subj", f"/CN={common_name}"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert),
         "-CAkey", str(files.ca_key), "-CAcreateserial", "-days", str(DAYS),
         "-extfile", str(ext), "-out", str(cert)],
    ]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PrerequisiteError(f"tls: {' '.join(argv[:3])} failed: "
                                    + (result.stderr.strip().splitlines() or ["?"])[-1])
    chain = cert.read_text() + files.ca_cert.read_text()
    files.server_cert.write_text(chain)
    files.server_keystore.write_text(files.server_key.read_text() + chain)
    for path in (files.ca_key, files.server_key, files.server_keystore):
        path.chmod(0o600)
    for path in (csr, ext, cert):
        path.unlink()
    return files
