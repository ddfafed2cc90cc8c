#!/usr/bin/env python3
"""Fills <corpus>/<target>/ from the committed seeds, the x509-limbo vectors (PEM -> DER) and
real `openssl ocsp` responses (ocsp_seeds.py).

    python3 fuzz/seed_corpus.py [--out CORPUS_DIR] [LIMBO_JSON]

CORPUS_DIR defaults to fuzz/corpus; LIMBO_JSON to tests/data/x509-limbo/limbo.json, the copy
tests/limbo.rs reads too. Generated corpora stay out of git; only fuzz/seeds/ is
committed.
"""
import argparse, base64, hashlib, json, pathlib, re, sys

import ocsp_seeds

here = pathlib.Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("--out", type=pathlib.Path, default=here / "corpus")
ap.add_argument("limbo", type=pathlib.Path, nargs="?",
                default=here.parent / "tests/data/x509-limbo/limbo.json")
args = ap.parse_args()
corpus, limbo = args.out, args.limbo

def der_blocks(pem):
    for m in re.finditer(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", pem, re.S):
        yield m.group(1), base64.b64decode("".join(m.group(2).split()))

def put(target, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)

for seed_dir in (here / "seeds").iterdir():
    for f in seed_dir.iterdir():
        put(seed_dir.name, f.read_bytes())

# Validly signed responses (good/revoked/unknown, issuer or delegate, ...), framed with the issuer,
# the leaf and a time: without them the target never gets past the signature check.
for _name, data in ocsp_seeds.generate():
    put("ocsp_response", data)

if not limbo.exists():
    sys.exit(f"limbo.json not found at {limbo}")
cases = json.loads(limbo.read_text())["testcases"]
for case in cases:
    pems = case["trusted_certs"] + case["untrusted_intermediates"] + [case["peer_certificate"]]
    for pem in pems:
        for kind, der in der_blocks(pem):
            put("identity", der)
            put("crl", der)  # the issuer_and_serial differential wants certificates too
            put("ocsp_response", der)
    for pem in case.get("crls") or []:
        put("crl", pem.encode())
        for kind, der in der_blocks(pem):
            put("crl", der)
for t in ("identity", "crl", "ocsp_response"):
    print(t, len(list((corpus / t).iterdir())))
