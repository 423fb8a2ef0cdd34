#!/usr/bin/env python3
"""Sign a request the way a third-party client would, with pyauth's `http-message-signatures`
(RFC 9421, hmac-sha256) and its RFC 9530 Content-Digest: an independent implementation the
integration tests check the gateway's verifier against.

Reads one JSON object on stdin:
  {"method", "url", "headers": {..}, "body": "<text>", "keyid", "secret_b64",
   "components": [..], "nonce": "..."|null, "created": <unix>|null, "digest": "sha-256"|"sha-512"|null}
Prints the headers to add, as JSON.
"""
import base64
import datetime
import json
import sys

import requests
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms
from http_message_signatures.digests import ContentDigest


class Keys(HTTPSignatureKeyResolver):
    def __init__(self, keys):
        self.keys = keys

    def resolve_private_key(self, key_id):
        return self.keys[key_id]

    def resolve_public_key(self, key_id):
        return self.keys[key_id]


def main():
    spec = json.load(sys.stdin)
    body = spec.get("body", "").encode()
    req = requests.Request(
        spec["method"], spec["url"], headers=spec.get("headers", {}), data=body or None
    ).prepare()
    out = {}
    digest = spec.get("digest")
    if digest:

        class Digest(ContentDigest):
            algorithm = digest

        value = Digest.create(body)
        req.headers["Content-Digest"] = value
        out["content-digest"] = value
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=Keys({spec["keyid"]: base64.b64decode(spec["secret_b64"])}),
    )
    created = spec.get("created")
    signer.sign(
        req,
        key_id=spec["keyid"],
        created=datetime.datetime.fromtimestamp(created, datetime.timezone.utc) if created else None,
        nonce=spec.get("nonce"),
        covered_component_ids=spec["components"],
        use_existing_digest=bool(digest),
    )
    out["signature-input"] = req.headers["Signature-Input"]
    out["signature"] = req.headers["Signature"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
