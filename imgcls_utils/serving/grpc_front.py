"""nginx's gRPC front door: the server block passing TensorFlow Serving's gRPC API to the
replicas, and the retry policy the clients of that API need behind it.

nginx streams a gRPC request to a replica as it reads it (``grpc_pass`` keeps no copy of the
request body), so ``grpc_next_upstream`` can only move a call that no replica has received yet:
a call in flight on a replica that dies fails. nginx answers it with gRPC's UNAVAILABLE, the
code a client derives from an HTTP 502-504 anyway, but as a gRPC status, which gRPC's own retry
policy (gRFC A6) resends, where a bare HTTP error commits the call as failed. ``imgcls deploy``
writes that policy next to nginx.conf for the clients to load.
"""

from __future__ import annotations

import json

# The replicas' gRPC ports, over HTTP/2 without TLS as they speak it.
NGINX_GRPC_TEMPLATE = """
    upstream imgcls_grpc_replicas {{
        zone imgcls_grpc_replicas 64k;
{servers}
        keepalive {keepalive};
    }}

    server {{
        listen {listen} http2;
        client_max_body_size {max_request_bytes};

        location = /grpc-unavailable {{
            internal;
            default_type application/grpc;
            add_header grpc-status 14 always;  # UNAVAILABLE
            add_header grpc-message "no replica answered" always;
            return 204;
        }}

        location / {{
            grpc_pass grpc://imgcls_grpc_replicas;
            error_page 502 503 504 = /grpc-unavailable;
            grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            grpc_next_upstream_tries {retry_tries};
            grpc_connect_timeout {connect_timeout_s}s;
            grpc_send_timeout {read_timeout_s}s;
            grpc_read_timeout {read_timeout_s}s;
        }}
    }}
"""


# The clients' retry policy: a call answered UNAVAILABLE (by nginx, above, or by the connection
# to a replica that died, without nginx) is sent again, up to 3 attempts in all.
GRPC_SERVICE_CONFIG = "grpc_service_config.json"
GRPC_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def grpc_service_config() -> str:
    """The service config a gRPC client passes as its channel's ``grpc.service_config``."""
    return json.dumps({"methodConfig": [{
        "name": [{"service": service} for service in GRPC_SERVICES],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]},
        indent=2) + "\n"
