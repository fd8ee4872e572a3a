"""The stack's ceiling: a bare starlette app that verifies a Tito signature and answers.

``POST /hooks/tito`` reads the body, checks ``Tito-Signature`` (base64 HMAC-SHA256 of
the body, as relay/sources/tito.py does) and answers ``200 {"status": "accepted"}``,
or 401. Nothing is parsed, stored or delivered. It runs under uvicorn exactly as
``relay serve`` does: uvloop, httptools, one worker, no access log.

    python bench/ceiling.py --port 9200 --secret bench-tito
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def make_app(secret: str) -> Starlette:
    key = secret.encode()

    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        expected = base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, request.headers.get("tito-signature", "")):
            return JSONResponse({"error": "signature"}, status_code=401)
        return JSONResponse({"status": "accepted"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/hooks/{source}", hook, methods=["POST"]),
                             Route("/healthz", healthz)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--secret", default="bench-tito")
    args = parser.parse_args()
    uvicorn.run(make_app(args.secret), host=args.host, port=args.port, loop="uvloop", http="httptools",
                workers=1, access_log=False, log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
