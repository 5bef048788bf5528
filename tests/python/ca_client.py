#!/usr/bin/env python3
"""Istio's CreateCertificate through grpcio (gRPC's C core), for meshca's end-to-end tests.

Istio ships no Python stubs for its CA service, so the call goes through grpcio's generic
unary stub on the method path istio-agent uses, and the request (csr = 1, validity_duration =
2) is encoded by hand: two protobuf fields, no meshca code. It makes CALLS calls one after the
other with the same bearer token and CSR and reports each answer, including the trailing
metadata a rate-limited answer carries. With --client-cert and --client-key it renews over mTLS
instead, presenting that chain (and no token), as istio-agent does with its workload certificate.

Usage:
    ca_client.py --addr HOST:PORT --ca-cert PEM --csr-file FILE [--calls N]
                 (--token-file FILE | --client-cert PEM --client-key PEM)

Output, one JSON object per call on stdout:
    {"event":"call","code":STATUS_NAME,"details":...,"pushback_ms":STRING_OR_NULL}
"""

import argparse
import json
import sys

import grpc

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def request_bytes(csr, validity_seconds):
    """IstioCertificateRequest{csr = 1 (string), validity_duration = 2 (int64)}."""
    encoded = csr.encode()
    return b"\x0a" + varint(len(encoded)) + encoded + b"\x10" + varint(validity_seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--token-file")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    parser.add_argument("--csr-file", required=True)
    parser.add_argument("--calls", type=int, default=1)
    args = parser.parse_args()
    with open(args.ca_cert, "rb") as f:
        roots = f.read()
    metadata = ()
    if args.token_file:
        with open(args.token_file) as f:
            metadata = (("authorization", "Bearer " + f.read().strip()),)
    with open(args.csr_file) as f:
        csr = f.read()
    chain = key = None
    if args.client_cert:
        with open(args.client_cert, "rb") as f:
            chain = f.read()
        with open(args.client_key, "rb") as f:
            key = f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )
    with grpc.secure_channel(args.addr, credentials) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for _ in range(args.calls):
            try:
                call(
                    request_bytes(csr, 3600),
                    metadata=metadata,
                    timeout=10,
                )
                event = {"code": "OK", "details": "", "pushback_ms": None}
            except grpc.RpcError as error:
                trailers = dict(error.trailing_metadata() or ())
                event = {
                    "code": error.code().name,
                    "details": error.details(),
                    "pushback_ms": trailers.get("grpc-retry-pushback-ms"),
                }
            print(json.dumps({"event": "call", **event}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
