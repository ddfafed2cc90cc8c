#!/usr/bin/env python3
"""Real OCSP responses from the openssl CLI, framed for the ocsp_response fuzz target.

    python3 fuzz/ocsp_seeds.py OUT_DIR      # writes one file per seed (seed_corpus.py calls generate())

Builds throwaway CAs in a temp dir (EC P-256, RSA-2048, P-384, Ed25519) with `openssl ca` and an
index.txt, issues leaves and delegated responders, and has `openssl ocsp -index … -reqin …` answer
requests made by `openssl ocsp -issuer … -cert … -reqout …`: good / revoked / unknown, signed by
the issuer or a delegate (with and without the OCSPSigning EKU, expired, from another CA), by name
and by key id, with and without nonce, certificates and nextUpdate, SHA-256 CertIDs, PSS and
SHA-384/512 signatures, corrupted signatures, several answers in one response, malformedRequest.

Each seed is framed the way fuzz_targets/ocsp_response.rs reads it:

    u16 BE length | issuer certificate DER | u16 BE length | leaf certificate DER |
    u64 BE "now" (Unix seconds) | OCSP response DER

Keys stay in the temp dir and are deleted with it; nothing here is committed but this script.
Timestamps (thisUpdate, validity) are those of the run, and ECDSA signatures differ per run; the
structure of every seed is the same each time.
"""
import base64, pathlib, re, struct, subprocess, sys, tempfile, time

CNF = """\
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
default_md = {md}
default_days = 365
policy = policy_any
unique_subject = no
[ policy_any ]
commonName = supplied
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityInfoAccess = OCSP;URI:http://ocsp.example.test/
[ responder ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = OCSPSigning
[ responder_no_eku ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
"""

KEYS = {
    "ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ed25519": ["-algorithm", "ED25519"],
}


def der(pem_path):
    m = re.search(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                  pem_path.read_bytes(), re.S)
    return base64.b64decode(b"".join(m.group(1).split()))


def frame(issuer, leaf, now, response):
    return (struct.pack(">H", len(issuer)) + issuer + struct.pack(">H", len(leaf)) + leaf
            + struct.pack(">Q", now) + response)


class Ca:
    def __init__(self, root, name, alg):
        self.dir = root / name
        self.alg = alg
        (self.dir / "newcerts").mkdir(parents=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        md = "sha384" if alg == "p384" else "sha256"
        (self.dir / "ca.cnf").write_text(CNF.format(dir=self.dir, md=md))
        self.key = self.genkey("ca")
        self.run("req", "-x509", "-key", self.key, "-out", "ca.pem", "-subj", f"/O=certgate fuzz/CN={name}",
                 "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.pem = self.dir / "ca.pem"
        self.der = der(self.pem)
        self.n = 0

    def run(self, *args, ok=lambda: False):
        out = subprocess.run(["openssl", *map(str, args)], cwd=self.dir, capture_output=True)
        if out.returncode != 0 and not ok():
            raise RuntimeError(f"openssl {' '.join(map(str, args))}: {out.stderr.decode()}")

    def genkey(self, name):
        path = self.dir / f"{name}.key"
        self.run("genpkey", *KEYS[self.alg], "-out", path)
        return path

    def issue(self, name, ext="leaf", indexed=True, dates=None):
        """A certificate from this CA: via `openssl ca` (so it is in index.txt), or with
        `openssl x509 -req` when not `indexed` (the responder then answers `unknown`)."""
        key = self.genkey(name)
        csr = self.dir / f"{name}.csr"
        pem = self.dir / f"{name}.pem"
        self.run("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
        if indexed:
            args = ["ca", "-batch", "-config", "ca.cnf", "-extensions", ext, "-in", csr, "-out", pem]
            if dates:
                args += ["-startdate", dates[0], "-enddate", dates[1]]
            self.run(*args)
        else:
            self.n += 1
            self.run("x509", "-req", "-in", csr, "-CA", self.pem, "-CAkey", self.key, "-out", pem,
                     "-set_serial", f"0x7F{self.n:04X}", "-days", "365", "-extfile", "ca.cnf",
                     "-extensions", ext)
        return pem, key

    def revoke(self, pem, *reason):
        self.run("ca", "-config", "ca.cnf", "-revoke", pem, *reason)

    def request(self, *args):
        """`openssl ocsp -issuer ca.pem ARGS -reqout …` (ARGS: `-cert`/`-serial`, in order, after
        any digest option); without a nonce unless ARGS ask for one."""
        self.n += 1
        req = self.dir / f"req-{self.n}.der"
        nonce = [] if "-nonce" in args else ["-no_nonce"]
        self.run("ocsp", "-issuer", self.pem, *args, *nonce, "-reqout", req)
        return req

    def respond(self, req, signer=None, *extra):
        """`openssl ocsp` as the responder over this CA's index, signed by `signer` (cert, key),
        by default the CA itself."""
        cert, key = signer or (self.pem, self.key)
        self.n += 1
        resp = self.dir / f"resp-{self.n}.der"
        # openssl exits 1 after writing an error response (malformedRequest): the file counts.
        self.run("ocsp", "-index", "index.txt", "-CA", self.pem, "-rsigner", cert, "-rkey", key,
                 "-reqin", req, "-respout", resp, *extra, ok=resp.exists)
        return resp.read_bytes()


def generate():
    """Yields (name, framed seed)."""
    now = int(time.time()) + 60
    day = 86400
    with tempfile.TemporaryDirectory(prefix="certgate-ocsp-seeds-") as tmp:
        root = pathlib.Path(tmp)
        cas = {alg: Ca(root, f"fuzz-{alg}", alg) for alg in ("ec", "rsa", "p384", "ed25519")}
        other = Ca(root, "fuzz-other", "ec")
        other_responder = other.issue("other-responder", "responder")

        for alg, ca in cas.items():
            good, _ = ca.issue("good")
            revoked, _ = ca.issue("revoked")
            ca.revoke(revoked, "-crl_reason", "keyCompromise")
            superseded, _ = ca.issue("superseded")
            ca.revoke(superseded, "-crl_reason", "superseded")
            unknown, _ = ca.issue("unknown", indexed=False)
            responder = ca.issue("responder", "responder")
            leaves = {"good": good, "revoked": revoked, "superseded": superseded, "unknown": unknown}

            def seed(name, leaf, response, at=now):
                return f"{alg}-{name}", frame(ca.der, der(leaf), at, response)

            for status, leaf in leaves.items():
                req = ca.request("-cert", leaf)
                yield seed(f"{status}-issuer-ndays", leaf, ca.respond(req, None, "-ndays", "7"))
                yield seed(f"{status}-delegate", leaf, ca.respond(req, responder))
            if alg in ("p384", "ed25519"):
                continue

            req = ca.request("-cert", good)
            yield seed("good-issuer", good, ca.respond(req))
            yield seed("good-issuer-nmin", good, ca.respond(req, None, "-nmin", "30"))
            yield seed("good-issuer-keyid", good, ca.respond(req, None, "-resp_key_id", "-ndays", "1"))
            yield seed("good-issuer-nocerts", good, ca.respond(req, None, "-resp_no_certs"))
            yield seed("good-delegate-keyid", good, ca.respond(req, responder, "-resp_key_id"))
            yield seed("good-delegate-nocerts", good, ca.respond(req, responder, "-resp_no_certs"))
            yield seed("good-issuer-rother", good,
                       ca.respond(req, None, "-rother", other.pem, "-ndays", "1"))
            yield seed("good-issuer-badsig", good, ca.respond(req, None, "-badsig"))
            yield seed("good-issuer-rcid-sha256", good, ca.respond(req, None, "-rcid", "sha256"))
            # The same signed answer at other times: before thisUpdate, after nextUpdate.
            ndays = ca.respond(req, None, "-ndays", "7")
            yield seed("good-issuer-notyet", good, ndays, now - day)
            yield seed("good-issuer-expired", good, ndays, now + 8 * day)

            yield seed("good-nonce", good, ca.respond(ca.request("-nonce", "-cert", good), None, "-ndays", "1"))
            yield seed("good-req-sha256", good, ca.respond(ca.request("-sha256", "-cert", good)))
            yield seed("good-two-answers", good, ca.respond(ca.request("-cert", revoked, "-cert", good), responder))
            yield seed("good-wrong-serial", good, ca.respond(ca.request("-serial", "0x1234")))

            no_eku = ca.issue("responder-no-eku", "responder_no_eku")
            yield seed("good-delegate-no-eku", good, ca.respond(req, no_eku))
            expired = ca.issue("responder-expired", "responder",
                               dates=("20200101000000Z", "20200201000000Z"))
            yield seed("good-delegate-expired", good, ca.respond(req, expired))
            yield seed("good-delegate-other-ca", good, ca.respond(req, other_responder))

            if alg == "rsa":
                for md in ("sha384", "sha512"):
                    yield seed(f"good-issuer-{md}", good, ca.respond(req, None, "-rmd", md))
                yield seed("good-issuer-pss", good,
                           ca.respond(req, None, "-rsigopt", "rsa_padding_mode:pss",
                                      "-rsigopt", "rsa_pss_saltlen:digest"))
                yield seed("good-delegate-pss-saltmax", good,
                           ca.respond(req, responder, "-rsigopt", "rsa_padding_mode:pss",
                                      "-rsigopt", "rsa_pss_saltlen:max"))

        # An OCSPRequest with an empty requestList: openssl answers malformedRequest.
        ca = cas["ec"]
        empty = ca.dir / "empty-req.der"
        empty.write_bytes(bytes.fromhex("300430023000"))
        good = ca.dir / "good.pem"
        yield "malformed-request", frame(ca.der, der(good), now, ca.respond(empty))


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in generate():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
