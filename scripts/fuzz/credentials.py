#!/usr/bin/env python3
"""Prints the credentials the API fuzzer uses, as shell assignments, by calling the API as
a widget would (GET /v1/config -> POST /v1/sessions) and signing an agent JWT (HS256) with
the fuzz tenant's agent secret. Standard library only.

usage: credentials.py BASE_URL PUBLIC_KEY TENANT_ID AGENT_SECRET
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.request


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def agent_jwt(secret, tenant, sub, ttl_secs=3600):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "tenant": tenant, "name": "Fuzz Agent", "exp": int(time.time()) + ttl_secs}
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{sig}"


def main():
    base, pk, tenant, secret = sys.argv[1:5]
    config = call("GET", f"{base}/v1/config?pk={pk}")
    session = call(
        "POST",
        f"{base}/v1/sessions",
        {
            "publicKey": pk,
            "initChallenge": config["initChallenge"]["token"],
            "botSignals": {"elapsedMs": 1500},
        },
    )
    print(f"VISITOR_TOKEN={session['sessionToken']}")
    print(f"CONVERSATION_ID={session['conversationId']}")
    print(f"AGENT_JWT={agent_jwt(secret, tenant, 'fuzz-agent')}")


if __name__ == "__main__":
    main()
