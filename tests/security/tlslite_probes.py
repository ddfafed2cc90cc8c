#!/usr/bin/env python3
"""TLS-level probes against a real certgate, driven by tlslite-ng.

The script is self-contained: it writes an RSA test PKI with the `openssl` CLI (tlslite-ng's
client-certificate support is most complete for RSA), a gateway config, starts a loopback upstream
and `certgate serve`, runs every probe, stops what it started and exits non-zero when any observed
result differs from the pinned one.

    python3 tests/security/tlslite_probes.py --certgate target/debug/certgate [--workdir DIR]

Malformed messages are produced by wrapping tlslite-ng's own message classes (`Certificate`,
`CertificateVerify`) just before they are serialised: the handshake transcript then contains exactly
the bytes that went on the wire, so the gateway sees a consistent but hostile peer. The
renegotiation probe sends a second ClientHello with `TLSConnection._sendMsg` (no public API: a
tlslite-ng client never renegotiates by itself).
"""

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from tlslite import HandshakeSettings, TLSConnection, X509, X509CertChain, parsePEMKey
from tlslite.constants import (
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    ExtensionType,
    SignatureScheme,
)
from tlslite.errors import TLSAbruptCloseError, TLSLocalAlert, TLSRemoteAlert
from tlslite.extensions import TLSExtension
from tlslite.messages import Alert, Certificate, CertificateVerify, ClientHello, Finished

sys.dont_write_bytecode = True  # keep __pycache__ out of the repo
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upstream  # noqa: E402  (the sibling stdlib upstream)

# === the pinned expectations =====================================================================
#
# Each probe names the one outcome it must observe. An outcome is an alert the gateway sent
# (`alert:<name>`), `closed` (the gateway closed without an alert), or an HTTP result
# (`http:<status> <reason>`). Anything else fails the run, including a *different* refusal: a changed
# alert is a behaviour change someone must look at.
EXPECTED = {
    "tls13 no client certificate (empty Certificate)": "alert:certificate_required",
    # rustls sends certificate_required on TLS 1.2 too (RFC 5246 would say handshake_failure; the
    # code 116 is TLS 1.3's, but it is a fatal refusal either way and clients report it clearly).
    "tls12 no client certificate (empty Certificate)": "alert:certificate_required",
    "tls12 Certificate: list length one byte too long": "alert:decode_error",
    "tls12 Certificate: entry length beyond the list": "alert:decode_error",
    "tls13 Certificate: list length one byte too long": "alert:decode_error",
    "tls13 Certificate: entry length beyond the list": "alert:decode_error",
    "tls12 CertificateVerify: corrupted signature": "alert:decrypt_error",
    "tls13 CertificateVerify: corrupted signature": "alert:decrypt_error",
    "tls12 CertificateVerify: ecdsa_secp256r1_sha256 claimed for an RSA key": "alert:decrypt_error",
    # A scheme the gateway did not offer is refused before any signature check.
    "tls12 CertificateVerify: scheme not offered (rsa_pkcs1_sha1)": "alert:illegal_parameter",
    "tls13 CertificateVerify: rsa_pkcs1_sha256 (not allowed in TLS 1.3)": "alert:illegal_parameter",
    "tls13 CertificateVerify: ecdsa_secp256r1_sha256 claimed for an RSA key": "alert:decrypt_error",
    # tlslite-ng compresses when *it* offered compression (see settings_for); rustls did not offer
    # it in its CertificateRequest, so the message is unexpected.
    "tls13 unsolicited CompressedCertificate (not offered by the server)": "alert:unexpected_message",
    # rustls never renegotiates: the first attempt is ignored with a no_renegotiation warning and
    # the connection keeps serving; a second attempt ends the connection (rustls closes without a
    # fatal alert for this one).
    "tls12 renegotiation: a second ClientHello after the handshake":
        "warning:no_renegotiation, http:200, warning:close_notify, eof",
    "tls12 renegotiation: two more ClientHellos after the handshake": "warning:no_renegotiation, eof",
    "tls12 control: good certificate, full handshake": "http:200",
    "tls13 control: good certificate, full handshake": "http:200",
    "tls12 control: resumption before revocation": "resumed http:200",
    "tls13 control: resumption before revocation": "resumed http:200",
    "revoked certificate, full handshake after the CRL swap": "alert:certificate_revoked",
    "tls12 resumption of a session from before the revocation": "resumed http:403 certificate_revoked",
    "tls13 resumption of a ticket from before the revocation": "resumed http:403 certificate_revoked",
}

TLS12 = (3, 3)
TLS13 = (3, 4)
IO_TIMEOUT = 10.0


# === the RSA test PKI (openssl CLI) ===============================================================

OPENSSL_CA_CONF = """\
[ ca ]
default_ca = testca
[ testca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca-key.pem
default_md = sha256
default_days = 30
default_crl_days = 7
policy = anything
crl_extensions = crl_ext
[ anything ]
commonName = supplied
[ crl_ext ]
authorityKeyIdentifier = keyid:always
[ ca_ext ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ server_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
authorityKeyIdentifier = keyid
[ acme_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://partners.example.com/acme
authorityKeyIdentifier = keyid
[ victim_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://partners.example.com/victim
authorityKeyIdentifier = keyid
"""


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_rsa_pki(d):
    """CA, server (localhost), acme and victim client certificates, and two CRLs.

    `crl-none.pem` revokes nothing; `crl-victim.pem` revokes the victim. The gateway watches
    `crl.pem`, which starts as the first and is later replaced by the second.
    """
    os.makedirs(os.path.join(d, "issued"), exist_ok=True)
    with open(os.path.join(d, "openssl.cnf"), "w") as f:
        f.write(OPENSSL_CA_CONF.format(dir=d))
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("1001\n")
    with open(os.path.join(d, "crlnumber"), "w") as f:
        f.write("01\n")
    cnf = ["-config", "openssl.cnf"]
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem",
            "-out", "ca.pem", "-days", "30", "-subj", "/CN=certgate security-test RSA CA",
            *cnf, "-extensions", "ca_ext", cwd=d)
    for name, cn in (("server", "localhost"), ("acme", "acme-billing"), ("victim", "victim-sync")):
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl("ca", "-batch", *cnf, "-notext", "-in", f"{name}.csr", "-out", f"{name}.pem",
                "-extensions", f"{name}_ext", cwd=d)
    openssl("ca", "-batch", *cnf, "-gencrl", "-out", "crl-none.pem", cwd=d)
    openssl("ca", "-batch", *cnf, "-revoke", "victim.pem", "-crl_reason", "keyCompromise", cwd=d)
    openssl("ca", "-batch", *cnf, "-gencrl", "-out", "crl-victim.pem", cwd=d)
    shutil.copy(os.path.join(d, "crl-none.pem"), os.path.join(d, "crl.pem"))


CONFIG = """\
# Written by tests/security/tlslite_probes.py: RSA test PKI, loopback only.
server:
  listen: "127.0.0.1:{port}"
  tls:
    certificates:
      - cert: server.pem
        key: server-key.pem
    min_version: "1.2"
  client_auth:
    trust_bundles:
      - name: rsa-partners
        ca: ca.pem
        crl:
          - path: crl.pem
admin:
  listen: "127.0.0.1:{admin}"
upstreams:
  echo:
    endpoints: ["http://127.0.0.1:{upstream}"]
partners:
  - id: acme
    owner: security-tests@example.com
    trust_bundle: rsa-partners
    identities:
      - spiffe: spiffe://partners.example.com/acme
    scopes: [read]
  - id: victim
    owner: security-tests@example.com
    trust_bundle: rsa-partners
    identities:
      - spiffe: spiffe://partners.example.com/victim
    scopes: [read]
routes:
  - name: read
    path_prefix: /v1
    methods: [GET, HEAD]
    scope: read
    upstream: echo
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, within=30.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"certgate exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"certgate did not listen on {port} within {within}s")


# === one probe connection ========================================================================


class Client:
    """A client identity as tlslite-ng wants it."""

    def __init__(self, d, name):
        with open(os.path.join(d, f"{name}.pem")) as f:
            cert = X509().parse(f.read())
        self.chain = X509CertChain([cert])
        with open(os.path.join(d, f"{name}-key.pem")) as f:
            self.key = parsePEMKey(f.read(), private=True)


def settings_for(version):
    s = HandshakeSettings()
    s.minVersion = version
    s.maxVersion = version
    if version == TLS13:
        s.versions = [TLS13]
    else:
        s.versions = [TLS12]
    # Plain key shares only: the gateway's hybrid group is not what these probes are about, and
    # tlslite-ng needs an extra package for it.
    s.keyShares = ["x25519"]
    s.eccCurves = ["x25519", "secp256r1"]
    # tlslite-ng 0.8.2 compresses its *client* certificate whenever its own ClientHello offered
    # compress_certificate, without looking at the server's CertificateRequest (a tlslite-ng bug).
    # The gateway does not offer decompression, so offering nothing keeps the plain Certificate
    # message; the unsolicited compressed one is a probe of its own.
    s.certificate_compression_receive = []
    return s


class ForgivingSocket:
    """A socket whose writes never fail.

    The gateway aborts on the first bad message and closes; a client still writing its remaining
    flight then gets EPIPE/ECONNRESET before it ever reads the alert waiting in its receive buffer.
    Swallowing write errors lets the probe read what the gateway actually said.
    """

    def __init__(self, sock):
        self._sock = sock

    def send(self, data):
        try:
            return self._sock.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return len(data)

    def sendall(self, data):
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def __getattr__(self, name):
        return getattr(self._sock, name)


def outcome_of(exc):
    if isinstance(exc, TLSRemoteAlert):
        return "alert:" + AlertDescription.toStr(exc.description)
    if isinstance(exc, TLSLocalAlert):
        return "local-alert:" + AlertDescription.toStr(exc.description) + f" ({exc.message})"
    if isinstance(exc, (TLSAbruptCloseError, ConnectionError, BrokenPipeError)):
        return "closed"
    if isinstance(exc, socket.timeout):
        return "timeout"
    return f"error:{type(exc).__name__}: {exc}"


def http_get(conn, path="/v1/orders/1"):
    """One HTTP/1.1 request on an established connection; returns `http:<status>[ <reason>]`."""
    conn.write(
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    data = b""
    while True:
        try:
            chunk = conn.read()
        except TLSAbruptCloseError:
            break
        if not chunk:
            break
        data += bytes(chunk)
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "?"
    result = f"http:{status}"
    if status != "200":
        import json

        with contextlib.suppress(ValueError):
            result += " " + json.loads(body.decode()).get("error", "?")
    return result


def connect(port, version, client=None, session=None, settings=None):
    """A TCP connection plus a tlslite-ng handshake; returns the connection (raises on alerts)."""
    sock = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
    sock.settimeout(IO_TIMEOUT)
    conn = TLSConnection(ForgivingSocket(sock))
    conn.handshakeClientCert(
        certChain=client.chain if client else None,
        privateKey=client.key if client else None,
        session=session,
        settings=settings or settings_for(version),
        serverName="localhost",
        alpn=[bytearray(b"http/1.1")],
    )
    return conn


def attempt(port, version, client=None, session=None, then=http_get, settings=None):
    """Handshake and one request; any alert or close along the way is the outcome.

    In TLS 1.3 a client's handshake is over before the server has read its Certificate, so a
    refusal arrives as an alert on the first read: the request is what surfaces it.
    """
    conn = None
    try:
        conn = connect(port, version, client, session, settings)
        resumed = "resumed " if conn.resumed else ""
        return resumed + then(conn), conn.session
    except Exception as exc:  # noqa: BLE001 - the outcome *is* the exception
        return outcome_of(exc), None
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.sock.close()


@contextlib.contextmanager
def patched(cls, name, wrapper):
    original = getattr(cls, name)
    setattr(cls, name, wrapper(original))
    try:
        yield
    finally:
        setattr(cls, name, original)


# === message mutations ===========================================================================


def certificate_lengths(mode):
    """Rewrites the serialised Certificate message's inner lengths; the handshake header stays
    consistent, so only the certificate_list framing is wrong."""

    def wrap(original):
        def write(self):
            raw = bytearray(original(self))
            body = raw[4:]
            # TLS 1.3: context length (1) + context; then the 3-byte list length.
            at = 1 + body[0] if self.version > TLS12 else 0
            list_len = int.from_bytes(body[at : at + 3], "big")
            if mode == "list+1":
                body[at : at + 3] = (list_len + 1).to_bytes(3, "big")
            elif mode == "entry-beyond":
                first = at + 3
                entry_len = int.from_bytes(body[first : first + 3], "big")
                body[first : first + 3] = (entry_len + 64).to_bytes(3, "big")
            raw[4:] = body
            return raw

        return write

    return wrap


def certificate_verify(signature=None, scheme=None):
    def wrap(original):
        def write(self):
            if signature == "flip":
                sig = bytearray(self.signature)
                sig[len(sig) // 2] ^= 0x01
                self.signature = sig
            if scheme is not None:
                self.signatureAlgorithm = scheme
            return original(self)

        return write

    return wrap


def renegotiate(conn, client_verify_data, hellos):
    """Sends fresh ClientHellos inside the established TLS 1.2 connection, then one request.

    The hello is a proper secure-renegotiation one (RFC 5746: renegotiation_info carries the
    client's Finished verify_data), so a refusal means "no renegotiation", not "bad extension".
    The request matters: rustls queues its no_renegotiation warning, and tokio-rustls only writes
    it out with the next thing the gateway sends, so a client that only waits sees silence.
    """
    hello = ClientHello()
    ext = [
        TLSExtension(extType=ExtensionType.renegotiation_info).create(
            bytearray([len(client_verify_data)]) + client_verify_data
        ),
        TLSExtension(extType=ExtensionType.supported_groups).create(bytearray(b"\x00\x02\x00\x1d")),
        TLSExtension(extType=ExtensionType.ec_point_formats).create(bytearray(b"\x01\x00")),
        TLSExtension(extType=ExtensionType.signature_algorithms).create(
            bytearray(b"\x00\x04\x08\x04\x04\x01")
        ),
    ]
    hello.create(
        TLS12,
        bytearray(os.urandom(32)),
        bytearray(0),
        [CipherSuite.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        extensions=ext,
    )
    for _ in range(hellos):
        for _ in conn._sendMsg(hello):
            pass
    conn.write(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    return read_records(conn)


def read_records(conn):
    """Every record the gateway sends until it closes, below tlslite-ng's message layer (which
    ends the connection on the first alert, even a warning): `warning:<alert>`, `fatal:<alert>`,
    `http:<status>` for application data (consecutive records collapsed) and `eof`."""
    seen = []
    while True:
        try:
            for result in conn._recordLayer.recvRecord():
                if result not in (0, 1):
                    break
            header, parser = result
        except (TLSAbruptCloseError, ConnectionError):
            seen.append("eof")
            break
        except Exception as exc:  # noqa: BLE001
            seen.append(outcome_of(exc))
            break
        if header.type == ContentType.alert:
            alert = Alert().parse(parser)
            level = "warning" if alert.level == AlertLevel.warning else "fatal"
            seen.append(f"{level}:{AlertDescription.toStr(alert.description)}")
        elif header.type == ContentType.application_data:
            data = bytes(parser.bytes)
            if data.startswith(b"HTTP/"):
                seen.append("http:" + data.split(b" ", 2)[1].decode())
        else:
            seen.append(f"record:{header.type}")
    return ", ".join(seen)


def renegotiation_probe(port, acme, hellos):
    conn = None
    finished = []

    def capture(original):
        def write(self):
            finished.append(bytearray(self.verify_data))
            return original(self)

        return write

    try:
        with patched(Finished, "write", capture):
            conn = connect(port, TLS12, acme)
        return renegotiate(conn, finished[0], hellos)
    except Exception as exc:  # noqa: BLE001
        return "handshake " + outcome_of(exc)
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.sock.close()


# === the run =====================================================================================


def run_probes(port, d):
    acme = Client(d, "acme")
    victim = Client(d, "victim")
    results = {}

    def record(name, observed):
        results[name] = observed
        expected = EXPECTED[name]
        verdict = "PASS" if observed == expected else "FAIL"
        print(f"{verdict}  {name}\n      expected {expected}\n      observed {observed}", flush=True)

    for version, tag in ((TLS12, "tls12"), (TLS13, "tls13")):
        record(f"{tag} control: good certificate, full handshake", attempt(port, version, acme)[0])
    record("tls13 no client certificate (empty Certificate)", attempt(port, TLS13)[0])
    record("tls12 no client certificate (empty Certificate)", attempt(port, TLS12)[0])

    for version, tag in ((TLS12, "tls12"), (TLS13, "tls13")):
        for mode, label in (
            ("list+1", "list length one byte too long"),
            ("entry-beyond", "entry length beyond the list"),
        ):
            with patched(Certificate, "write", certificate_lengths(mode)):
                observed = attempt(port, version, acme)[0]
            record(f"{tag} Certificate: {label}", observed)

    for version, tag in ((TLS12, "tls12"), (TLS13, "tls13")):
        with patched(CertificateVerify, "write", certificate_verify(signature="flip")):
            record(f"{tag} CertificateVerify: corrupted signature", attempt(port, version, acme)[0])
    mismatches = [
        ("tls12", TLS12, SignatureScheme.ecdsa_secp256r1_sha256,
         "ecdsa_secp256r1_sha256 claimed for an RSA key"),
        ("tls12", TLS12, SignatureScheme.rsa_pkcs1_sha1, "scheme not offered (rsa_pkcs1_sha1)"),
        ("tls13", TLS13, SignatureScheme.rsa_pkcs1_sha256,
         "rsa_pkcs1_sha256 (not allowed in TLS 1.3)"),
        ("tls13", TLS13, SignatureScheme.ecdsa_secp256r1_sha256,
         "ecdsa_secp256r1_sha256 claimed for an RSA key"),
    ]
    for tag, version, scheme, label in mismatches:
        with patched(CertificateVerify, "write", certificate_verify(scheme=scheme)):
            record(f"{tag} CertificateVerify: {label}", attempt(port, version, acme)[0])

    compressing = settings_for(TLS13)
    compressing.certificate_compression_receive = ["zlib"]
    record("tls13 unsolicited CompressedCertificate (not offered by the server)",
           attempt(port, TLS13, acme, settings=compressing)[0])

    record("tls12 renegotiation: a second ClientHello after the handshake",
           renegotiation_probe(port, acme, 1))
    record("tls12 renegotiation: two more ClientHellos after the handshake",
           renegotiation_probe(port, acme, 2))

    # Resumption across a revocation. Sessions for the victim, taken while it is in good standing:
    # one per version to resume before the revocation (the control: resumption works and is
    # served), one per version to resume after it.
    sessions = {}
    for version, tag in ((TLS12, "tls12"), (TLS13, "tls13")):
        for use in ("control", "after"):
            observed, session = attempt(port, version, victim)
            if observed != "http:200" or session is None:
                record(f"{tag} control: resumption before revocation", f"no session ({observed})")
                return results
            sessions[(tag, use)] = session
    for version, tag in ((TLS12, "tls12"), (TLS13, "tls13")):
        observed, _ = attempt(port, version, victim, sessions[(tag, "control")])
        record(f"{tag} control: resumption before revocation", observed)

    # Revoke: swap the watched CRL file by rename, as a deployment would, then wait until a full
    # handshake with the victim is refused (the poller checks once a second).
    tmp = os.path.join(d, "crl.pem.new")
    shutil.copy(os.path.join(d, "crl-victim.pem"), tmp)
    os.replace(tmp, os.path.join(d, "crl.pem"))
    deadline = time.monotonic() + 15
    observed = None
    while time.monotonic() < deadline:
        observed = attempt(port, TLS13, victim)[0]
        if observed != "http:200":
            break
        time.sleep(0.5)
    # A handshake that straddled the swap was verified against the old CRL and is refused right
    # after it instead (the per-connection re-check: 403 certificate_revoked, nothing forwarded).
    # The next full handshake is the one that starts after the swap.
    if observed == "http:403 certificate_revoked":
        observed = attempt(port, TLS13, victim)[0]
    record("revoked certificate, full handshake after the CRL swap", observed)

    record("tls12 resumption of a session from before the revocation",
           attempt(port, TLS12, victim, sessions[("tls12", "after")])[0])
    record("tls13 resumption of a ticket from before the revocation",
           attempt(port, TLS13, victim, sessions[("tls13", "after")])[0])
    return results


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--certgate", default=os.path.join(root, "target", "debug", "certgate"))
    ap.add_argument("--workdir", help="where the PKI, config and log go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()

    d = args.workdir or tempfile.mkdtemp(prefix="certgate-tlslite-")
    d = os.path.abspath(d)
    os.makedirs(d, exist_ok=True)
    proc = None
    up = None
    started = time.monotonic()
    try:
        make_rsa_pki(d)
        up = upstream.start()
        port, admin = free_port(), free_port()
        with open(os.path.join(d, "certgate.yaml"), "w") as f:
            f.write(CONFIG.format(port=port, admin=admin, upstream=up.server_address[1]))
        log = open(os.path.join(d, "certgate.log"), "w")
        proc = subprocess.Popen(
            [args.certgate, "--log-format", "json", "serve", "--config",
             os.path.join(d, "certgate.yaml")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(port, proc)
        print(f"certgate pid {proc.pid} on 127.0.0.1:{port}; work dir {d}", flush=True)
        results = run_probes(port, d)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if up is not None:
            up.shutdown()
        if not args.keep and not args.workdir:
            shutil.rmtree(d, ignore_errors=True)

    failed = [n for n in EXPECTED if results.get(n) != EXPECTED[n]]
    missing = [n for n in EXPECTED if n not in results]
    print(f"\ntlslite-ng probes: {len(EXPECTED) - len(failed)}/{len(EXPECTED)} as pinned "
          f"in {time.monotonic() - started:.1f}s")
    for n in missing:
        print(f"FAIL  {n}: not run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
