#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ from the committed seeds and the x509-limbo vectors (PEM -> DER).

Generated corpora stay out of git; only fuzz/seeds/ is committed.
"""
import base64, json, os, pathlib, re, shutil, sys, hashlib

here = pathlib.Path(__file__).resolve().parent
limbo = here.parent.parent / "shared/data/x509-limbo/limbo.json"
if len(sys.argv) > 1:
    limbo = pathlib.Path(sys.argv[1])

def der_blocks(pem):
    for m in re.finditer(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", pem, re.S):
        yield m.group(1), base64.b64decode("".join(m.group(2).split()))

def put(target, data):
    d = here / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)

for seed_dir in (here / "seeds").iterdir():
    for f in seed_dir.iterdir():
        put(seed_dir.name, f.read_bytes())

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
    print(t, len(list((here / "corpus" / t).iterdir())))
