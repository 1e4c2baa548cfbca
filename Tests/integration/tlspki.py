"""Certificates for the TLS tests, made with the openssl CLI (ECDSA P-256), as docs/tls.md shows."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _run(args: list[str], cwd: Path):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


class CA:
    """A CA in `directory` (ca.pem, ca.key) that issues leaf certificates."""

    def __init__(self, directory: Path, name: str = "ca", cn: str = "Remora Test CA"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = directory / f"{name}.key"
        self.cert = directory / f"{name}.pem"
        _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.key)], directory)
        _run(["req", "-x509", "-new", "-key", str(self.key), "-subj", f"/CN={cn}", "-days", "30", "-out", str(self.cert),
              "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
             directory)

    def issue(self, name: str, dns: list[str] = (), uris: list[str] = (), cn: str | None = None,
              days: int = 30, out: Path | None = None) -> tuple[Path, Path]:
        """A leaf certificate and its key: (cert.pem, key.pem). `out`: write them under that stem."""
        stem = out or (self.dir / name)
        key = stem.with_name(stem.name + "-key.pem")
        cert = stem.with_name(stem.name + ".pem")
        tmp_key = key.with_name(key.name + ".tmp")
        tmp_cert = cert.with_name(cert.name + ".tmp")
        csr = stem.with_name(stem.name + ".csr")
        ext = stem.with_name(stem.name + ".ext")
        sans = [f"DNS:{d}" for d in dns] + [f"URI:{u}" for u in uris]
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature",
                 "extendedKeyUsage=serverAuth,clientAuth"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(tmp_key)], self.dir)
        _run(["req", "-new", "-key", str(tmp_key), "-subj", f"/CN={cn or name}", "-out", str(csr)], self.dir)
        serial = "0x" + os.urandom(8).hex()
        _run(["x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-set_serial", serial,
              "-days", str(days), "-extfile", str(ext), "-out", str(tmp_cert)], self.dir)
        # Renamed into place: a watcher never sees a half-written file.
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)
        csr.unlink()
        ext.unlink()
        return cert, key


    def issue_until(self, name: str, end: "datetime.datetime", uris: list[str] = (), dns: list[str] = ()) -> tuple[Path, Path]:
        """A leaf that expires at `end` (UTC, to the second): `openssl ca -enddate` (openssl 3.0's
        `x509 -req` only counts days)."""
        import datetime
        work = self.dir / f"{name}.ca"
        work.mkdir(exist_ok=True)
        (work / "index.txt").write_text("")
        (work / "serial").write_text(os.urandom(8).hex() + "\n")
        sans = ",".join([f"DNS:{d}" for d in dns] + [f"URI:{u}" for u in uris])
        (work / "ca.cnf").write_text(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
            "default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n"
            f"[ext]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n"
            f"extendedKeyUsage = serverAuth,clientAuth\n" + (f"subjectAltName = {sans}\n" if sans else ""))
        key, cert, csr = self.dir / f"{name}-key.pem", self.dir / f"{name}.pem", work / "req.csr"
        _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)], work)
        _run(["req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr)], work)
        start = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime("%Y%m%d%H%M%SZ")
        _run(["ca", "-batch", "-config", "ca.cnf", "-cert", str(self.cert), "-keyfile", str(self.key), "-in", str(csr),
              "-out", str(cert), "-startdate", start, "-enddate", end.strftime("%Y%m%d%H%M%SZ"), "-extensions", "ext",
              "-notext"], work)
        return cert, key


def serial_of(cert_pem: str | bytes) -> str:
    """The serial (hex, upper case) of a PEM certificate."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=data, capture_output=True, check=True,
                         timeout=10).stdout.decode()
    return out.strip().split("=", 1)[1].upper().lstrip("0")
