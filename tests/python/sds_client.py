#!/usr/bin/env python3
"""An Envoy-like SDS v3 client for meshca's end-to-end tests.

It talks to `meshca agent`'s SDS socket the way Envoy does: one
SecretDiscoveryService.StreamSecrets stream asking for `default` (the workload
certificate) and `ROOTCA` (the trust bundle), an ACK and a NACK of the first
response, then an ACK of the next push (a certificate rotation).

It is built only from third-party stacks on purpose: Envoy's generated xDS
messages (`xds-protos`) and gRPC's C core (`grpcio`), with no meshca code.
Our own Rust clients shared the server's HTTP/2 stack and so hid an interop
bug: grpc-core sends a percent-encoded `:authority` for `unix:` targets.

Usage:
    sds_client.py --socket PATH [--authority MODE] [--timeout SECONDS]

--authority chooses the HTTP/2 `:authority` the channel sends:
    default    set nothing: grpc-core's own default for a `unix:` target
               (the socket path without its leading '/', percent-encoded)
    localhost  the channel option grpc.default_authority = "localhost"
    raw-path   grpc.default_authority = the socket path exactly as given
    percent    grpc.default_authority = the path percent-encoded, as
               grpc-core's default spells it, but set explicitly
    any other value is used verbatim as grpc.default_authority

Output, one JSON object per line on stdout, flushed as it is printed:
    {"event":"response","seq":N,"version_info":...,"nonce":...,"type_url":...,
     "secrets":{"default":{"certificate_chain":PEM,"private_key":PEM},
                "ROOTCA":{"trusted_ca":PEM}},"elapsed":SECONDS}
    {"event":"ack","seq":N,"version_info":...,"nonce":...,"elapsed":SECONDS}
    {"event":"nack","seq":N,"version_info":...,"nonce":...,"elapsed":SECONDS}
    {"event":"done","elapsed":SECONDS}                       exit status 0
    {"event":"error","code":STATUS_NAME,"details":...,"elapsed":SECONDS}
                                                             exit status 1
"""

import argparse
import queue
import sys
import urllib.parse

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from events import emit

NODE_ID = "sidecar~10.0.0.7~web-0.default~default.svc.cluster.local"
RESOURCE_NAMES = ["default", "ROOTCA"]
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NACK_CODE = 13  # google.rpc.Code.INTERNAL, what Envoy puts in a NACK
NACK_MESSAGE = "rejected by the test"

def channel_options(authority, socket_path):
    """The channel options that give the chosen `:authority` (none for `default`)."""
    if authority == "default":
        return []
    if authority == "localhost":
        value = "localhost"
    elif authority == "raw-path":
        value = socket_path
    elif authority == "percent":
        value = urllib.parse.quote(socket_path.lstrip("/"), safe="")
    else:
        value = authority
    return [("grpc.default_authority", value)]


def data_source_text(source):
    """The text of an envoy.config.core.v3.DataSource given inline (bytes or string)."""
    kind = source.WhichOneof("specifier")
    if kind == "inline_bytes":
        return source.inline_bytes.decode()
    if kind == "inline_string":
        return source.inline_string
    return {kind: getattr(source, kind)} if kind else None


def secret_summary(secret):
    """The PEM material of one Secret, keyed as Envoy's config names it."""
    kind = secret.WhichOneof("type")
    if kind == "tls_certificate":
        return {
            "certificate_chain": data_source_text(secret.tls_certificate.certificate_chain),
            "private_key": data_source_text(secret.tls_certificate.private_key),
        }
    if kind == "validation_context":
        return {"trusted_ca": data_source_text(secret.validation_context.trusted_ca)}
    return {"type": kind}


def decode_secrets(response):
    secrets = {}
    for resource in response.resources:
        secret = secret_pb2.Secret()
        if not resource.Unpack(secret):
            raise ValueError(f"resource of type {resource.type_url}, not a Secret")
        secrets[secret.name] = secret_summary(secret)
    return secrets


class RequestStream:
    """The request side of the bidi stream: requests are queued, None half-closes it."""

    def __init__(self):
        self._queue = queue.Queue()

    def send(self, request):
        self._queue.put(request)

    def close(self):
        self._queue.put(None)

    def __iter__(self):
        while True:
            request = self._queue.get()
            if request is None:
                return
            yield request


def request(response=None, error_detail=None):
    """A DiscoveryRequest: the initial one (with the node), or an ACK/NACK of `response`."""
    message = discovery_pb2.DiscoveryRequest(
        resource_names=RESOURCE_NAMES,
        type_url=SECRET_TYPE_URL,
    )
    if response is None:
        message.node.CopyFrom(base_pb2.Node(id=NODE_ID))
    else:
        message.version_info = response.version_info
        message.response_nonce = response.nonce
    if error_detail is not None:
        message.error_detail.CopyFrom(error_detail)
    return message


def run(args):
    options = channel_options(args.authority, args.socket)
    with grpc.insecure_channel("unix:" + args.socket, options) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        requests = RequestStream()
        requests.send(request())
        responses = stub.StreamSecrets(iter(requests), timeout=args.timeout)
        try:
            for seq, response in enumerate(responses, start=1):
                emit(
                    "response",
                    seq=seq,
                    version_info=response.version_info,
                    nonce=response.nonce,
                    type_url=response.type_url,
                    secrets=decode_secrets(response),
                )
                ids = {"seq": seq, "version_info": response.version_info, "nonce": response.nonce}
                requests.send(request(response))
                emit("ack", **ids)
                if seq == 1:
                    nack = status_pb2.Status(code=NACK_CODE, message=NACK_MESSAGE)
                    requests.send(request(response, error_detail=nack))
                    emit("nack", **ids)
                else:
                    break
            else:
                emit("error", code="OK", details="the server ended the stream before a rotation")
                return 1
        finally:
            requests.close()
            responses.cancel()
    emit("done")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the agent's SDS Unix socket")
    parser.add_argument(
        "--authority",
        default="default",
        help="default | localhost | raw-path | percent | a literal authority",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="overall deadline in seconds"
    )
    args = parser.parse_args()
    try:
        return run(args)
    except grpc.RpcError as error:
        emit("error", code=error.code().name, details=error.details())
        return 1
    except Exception as error:  # a malformed response, say: still one JSON line
        emit("error", code="CLIENT", details=f"{type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
