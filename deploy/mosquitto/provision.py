#!/usr/bin/env python3
"""Make a locked-down Mosquitto for a sparsetel fleet: TLS, one login per edge, and ACLs.

    python deploy/mosquitto/provision.py --fleet fleet.csv --out /etc/sparsetel/broker \\
        --host broker.example.net [--host 10.0.0.5] [--port 8883]

`fleet.csv` lists the edges, one ``group,edge`` per line (a header line ``group,edge`` is
allowed). The script writes into `--out`:

- ``ca.crt`` / ``ca.key``: a private CA (Ed25519 is not accepted by every TLS stack, so
  ECDSA P-256), and ``server.crt`` / ``server.key`` for the broker, valid for every `--host`
  (DNS names or IP addresses). Edges and the cloud trust ``ca.crt`` (`tls_ca`).
- ``passwd``: a random password per edge and one for the cloud (user ``sparsetel-cloud``),
  hashed by ``mosquitto_passwd``; ``credentials/<edge>.env`` and ``credentials/cloud.env``
  hold the clear ones as SPARSETEL_MQTT_USERNAME / SPARSETEL_MQTT_PASSWORD (mode 0600), for
  a systemd ``EnvironmentFile``.
- ``acl``: an edge may publish only its own DATA, STATE, HEALTH and DEPLOY topics and read
  only its own NCMD and ACK (store receipts) topics and its group's MODEL bundles; only the
  cloud may command edges, confirm their frames and publish models (it reads and writes all
  of ``sparsetel/#``). Entries are explicit per edge: Mosquitto does not substitute ``%u`` in
  a pattern for a name with ``/``, and the group is part of the topic.
- ``mosquitto.conf``: one TLS listener, no anonymous clients, those files, and persistence in
  `--data` (which must be writable by the user Mosquitto runs as: `--run-as`; otherwise
  sessions silently do not survive a restart). The broker holds, not drops, what waits for a
  client (`BROKER_LIMITS`: up to a million messages or 1 GiB per client, where Mosquitto's
  default of 1000 messages drops a burst silently) and refuses packets over 16 MiB (a frame is
  at most 256 KiB, a model bundle at most 16 MiB - 64 KiB: 1.6 MB for the default codec).

Needs the `cryptography` package (sparsetel's edge and cloud extras have it) and
``mosquitto_passwd``. Exit 0 ok, 1 a tool failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOUD_USER = "sparsetel-cloud"
# Queues and packet sizes: every shipped Mosquitto config sets these (dev.conf too).
BROKER_LIMITS = (
    "max_inflight_messages 100",  # sent ahead of a client's acks (3.1.1; MQTT 5 says its own)
    "max_queued_messages 1000000",  # held for a client away or slow, not dropped ...
    "max_queued_bytes 1073741824",  # ... up to 1 GiB per client
    "max_packet_size 16777216",  # frames <= 262,144 bytes; bundles <= 16 MiB - 64 KiB
    "persistent_client_expiration 7d",  # sessions of clients gone a week are dropped
)
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_DAYS = 3650


class ProvisionError(Exception):
    """Bad input; the message says which."""


def read_fleet(path: Path) -> list[tuple[str, str]]:
    """(group, edge) pairs from a CSV; ProvisionError naming the line of a bad one."""
    fleet: list[tuple[str, str]] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or (number == 1 and cells == ["group", "edge"]):
                continue
            if len(cells) != 2 or not all(_ID.fullmatch(c) and c not in (".", "..") for c in cells):
                raise ProvisionError(f"{path}:{number}: expected group,edge ids, got {row}")
            if cells[1] in seen or cells[1] == CLOUD_USER:
                raise ProvisionError(f"{path}:{number}: edge {cells[1]!r} is listed twice")
            seen.add(cells[1])
            fleet.append((cells[0], cells[1]))
    if not fleet:
        raise ProvisionError(f"{path} lists no edge")
    return fleet


def acl_text(fleet: list[tuple[str, str]]) -> str:
    """The ACL file: the cloud everywhere under sparsetel/, each edge on its own topics."""
    lines = [
        "# sparsetel broker ACL, made by deploy/mosquitto/provision.py",
        f"user {CLOUD_USER}",
        "topic readwrite sparsetel/#",
        "",
    ]
    for group, edge in fleet:
        base = f"sparsetel/v1/{group}"
        lines += [f"user {edge}"]
        lines += [f"topic write {base}/{kind}/{edge}" for kind in ("DATA", "STATE", "HEALTH")]
        lines += [
            f"topic write {base}/DEPLOY/{edge}",
            f"topic read {base}/NCMD/{edge}",
            f"topic read {base}/ACK/{edge}",
            f"topic read {base}/MODEL/#",
            "",
        ]
    return "\n".join(lines)


def conf_text(out: Path, port: int, bind: str, data: Path, run_as: str) -> str:
    return "\n".join(
        [
            "# sparsetel broker: TLS only, one login per edge, ACLs (provision.py)",
            "per_listener_settings false",
            f"user {run_as}",
            f"listener {port} {bind}",
            f"cafile {out / 'ca.crt'}",
            f"certfile {out / 'server.crt'}",
            f"keyfile {out / 'server.key'}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"password_file {out / 'passwd'}",
            f"acl_file {out / 'acl'}",
            "persistence true",
            f"persistence_location {data}/",
            *BROKER_LIMITS,
            "",
        ]
    )


def data_warning(data: Path, run_as: str) -> str | None:
    """Why Mosquitto, running as `run_as`, could not keep its sessions in `data` (None when
    nothing on this machine says so: the folder may live on the broker host only)."""
    try:
        user = pwd.getpwnam(run_as)
        info = data.stat()
    except (KeyError, OSError):
        return None
    group_writes = info.st_gid == user.pw_gid and info.st_mode & 0o020
    if info.st_uid == user.pw_uid or group_writes or info.st_mode & 0o002:
        return None
    return (
        f"{data} is not writable by {run_as}: Mosquitto would lose its sessions and queued "
        f"messages on a restart (chown {run_as} {data})"
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_secret(path, pem)


def _write_secret(path: Path, data: bytes) -> None:
    """A file only its owner can read, from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_certificates(out: Path, hosts: list[str]) -> None:
    """A CA and a server certificate for `hosts` (DNS names or IP addresses)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("sparsetel fleet CA"))
        .issuer_name(_name("sparsetel fleet CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = _key()
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(out / "ca.key", ca_key)
    _write_key(out / "server.key", server_key)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))


def make_passwords(out: Path, users: list[str]) -> None:
    """A random password per user: hashed into ``passwd``, clear in ``credentials/*.env``."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise ProvisionError("mosquitto_passwd is not installed (Debian: mosquitto)")
    creds = out / "credentials"
    creds.mkdir(mode=0o700, exist_ok=True)
    passwd = out / "passwd"
    _write_secret(passwd, b"")
    for user in users:
        password = secrets.token_urlsafe(24)
        subprocess.run([tool, "-b", str(passwd), user, password], check=True, capture_output=True)
        name = "cloud" if user == CLOUD_USER else user
        env = f"SPARSETEL_MQTT_USERNAME={user}\nSPARSETEL_MQTT_PASSWORD={password}\n"
        _write_secret(creds / f"{name}.env", env.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, required=True, help="CSV of group,edge lines")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--host", action="append", required=True, help="broker name or IP")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--data", type=Path, default=Path("/var/lib/mosquitto"))
    parser.add_argument("--run-as", default="mosquitto", help="user Mosquitto runs as")
    args = parser.parse_args(argv)
    try:
        fleet = read_fleet(args.fleet)
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out.resolve()
        make_certificates(out, args.host)
        make_passwords(out, [CLOUD_USER, *(edge for _, edge in fleet)])
        (out / "acl").write_text(acl_text(fleet), encoding="utf-8")
        conf = conf_text(out, args.port, args.bind, args.data.resolve(), args.run_as)
        (out / "mosquitto.conf").write_text(conf, encoding="utf-8")
    except (ProvisionError, OSError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"provision: {exc.cmd[0]} failed: {exc.stderr.decode().strip()}", file=sys.stderr)
        return 1
    warning = data_warning(args.data.resolve(), args.run_as)
    if warning is not None:
        print(f"provision: warning: {warning}", file=sys.stderr)
    print(f"broker for {len(fleet)} edges written to {out} (mosquitto -c {out}/mosquitto.conf)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
