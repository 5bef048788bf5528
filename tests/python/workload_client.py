#!/usr/bin/env python3
"""A SPIFFE Workload API client for meshca's end-to-end tests, built on py-spiffe.

It drives `meshca agent`'s Workload API socket through py-spiffe's public
WorkloadApiClient (which validates every X.509-SVID it is handed), waits for a
rotation on the X.509 stream, and finally makes one raw FetchX509SVID call
without the `workload.spiffe.io: true` header, with the stubs that py-spiffe
ships, to see the server refuse it.

It uses only third-party stacks on purpose: py-spiffe over grpcio (gRPC's C
core), with no meshca code. Our own Rust clients shared the server's HTTP/2
stack and so hid an interop bug: grpc-core sends a percent-encoded
`:authority` for `unix:` targets.

Usage:
    workload_client.py --socket PATH [--timeout SECONDS] [--svid-only]

With --svid-only it stops after the SVID and bundles (a workload that only
wants its identity, as in the attestation tests).

Output, one JSON object per line on stdout, flushed as it is printed; serials
are lowercase hex strings (a 128-bit serial does not fit a JSON integer that
every reader accepts):
    {"event":"svid","spiffe_id":...,"leaf_pem":PEM,"serial":HEX,"elapsed":S}
    {"event":"bundles","trust_domains":{"cluster.local":N_AUTHORITIES},"elapsed":S}
    {"event":"rotated","spiffe_id":...,"serial":HEX,"elapsed":S}
    {"event":"no_header","code":STATUS_NAME,"details":...,"elapsed":S}
                                                             exit status 0
    {"event":"error","step":STEP,"code":STATUS_NAME,"details":...,"elapsed":S}
                                                             exit status 1
STEP is svid, bundles, rotation or no_header; code is DEADLINE_EXCEEDED when
no rotation came in time, and "CLIENT" when the failure was not a gRPC status
(an SVID py-spiffe rejected, a missing socket, ...).
"""

import argparse
import os
import queue
import re
import sys
import time

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from events import emit

class StepFailed(Exception):
    def __init__(self, step, code, details):
        super().__init__(details)
        self.step, self.code, self.details = step, code, details


def failure(step, error):
    """A StepFailed naming the gRPC status behind a py-spiffe error, where there is one."""
    cause = error
    while cause is not None and not isinstance(cause, grpc.Call):
        cause = cause.__cause__
    if cause is not None:
        return StepFailed(step, cause.code().name, f"{error} | {cause.details()}")
    # The streaming watcher reports only "gRPC error: StatusCode.X".
    match = re.search(r"StatusCode\.([A-Z_]+)", str(error))
    return StepFailed(step, match.group(1) if match else "CLIENT", str(error))


def hex_serial(certificate):
    return format(certificate.serial_number, "x")


class Deadline:
    def __init__(self, seconds):
        self._end = time.monotonic() + seconds

    def remaining(self):
        return max(self._end - time.monotonic(), 0.001)


def fetch_svid(client, deadline):
    try:
        svid = client.fetch_x509_svid(timeout=deadline.remaining())
    except Exception as error:
        raise failure("svid", error)
    emit(
        "svid",
        spiffe_id=str(svid.spiffe_id),
        leaf_pem=svid.leaf.public_bytes(Encoding.PEM).decode(),
        serial=hex_serial(svid.leaf),
    )
    return svid


def fetch_bundles(client, deadline):
    try:
        bundle_set = client.fetch_x509_bundles(timeout=deadline.remaining())
    except Exception as error:
        raise failure("bundles", error)
    emit(
        "bundles",
        trust_domains={
            bundle.trust_domain.name: len(bundle.x509_authorities)
            for bundle in bundle_set.bundles
        },
    )


def wait_for_rotation(client, first_serial, deadline):
    """Watches the X.509 context stream until its default SVID has another serial."""
    updates = queue.Queue()
    watch = client.stream_x509_contexts(
        on_success=lambda context: updates.put(("context", context)),
        on_error=lambda error: updates.put(("error", error)),
        retry_connect=False,  # a broken stream is the failure under test, not something to hide
    )
    try:
        seen = 0
        while True:
            try:
                kind, item = updates.get(timeout=deadline.remaining())
            except queue.Empty:
                raise StepFailed(
                    "rotation",
                    "DEADLINE_EXCEEDED",
                    f"no SVID with a serial other than {first_serial} before the deadline"
                    f" ({seen} updates seen)",
                )
            if kind == "error":
                raise failure("rotation", item)
            seen += 1
            svid = item.default_svid
            if hex_serial(svid.leaf) != first_serial:
                emit("rotated", spiffe_id=str(svid.spiffe_id), serial=hex_serial(svid.leaf))
                return
    finally:
        watch.cancel()


def fetch_without_header(socket_path, deadline):
    """FetchX509SVID through py-spiffe's generated stub, without the security header."""
    with grpc.insecure_channel("unix:" + socket_path) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        responses = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), timeout=deadline.remaining()
        )
        try:
            next(responses)
        except grpc.RpcError as error:
            emit("no_header", code=error.code().name, details=error.details())
            return
        except StopIteration:
            emit("no_header", code="OK", details="the stream ended without a response")
            return
        finally:
            responses.cancel()
    emit("no_header", code="OK", details="the server sent an X.509-SVID without the header")


def run(args):
    socket_path = os.path.abspath(args.socket)
    deadline = Deadline(args.timeout)
    try:
        client = WorkloadApiClient(socket_path="unix:" + socket_path)
    except Exception as error:
        raise failure("svid", error)
    with client:
        svid = fetch_svid(client, deadline)
        fetch_bundles(client, deadline)
        if args.svid_only:
            return
        wait_for_rotation(client, hex_serial(svid.leaf), deadline)
    try:
        fetch_without_header(socket_path, deadline)
    except Exception as error:
        raise failure("no_header", error)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the agent's Workload API Unix socket")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="overall deadline in seconds"
    )
    parser.add_argument(
        "--svid-only", action="store_true", help="stop after the SVID and bundles"
    )
    args = parser.parse_args()
    try:
        run(args)
    except StepFailed as error:
        emit("error", step=error.step, code=error.code, details=error.details)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
