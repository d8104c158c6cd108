"""TLS at the front door: nginx terminates HTTPS for the replicas, which stay on the private
network (compose's own network, or loopback) and speak plain HTTP to nginx only.

``deployment.yaml`` names a certificate (chain) and its key, PEM files; nginx accepts TLS 1.2 and
1.3 only, with the ciphers of Mozilla's "intermediate" configuration (every client of the last
five years, none of the broken suites), and tells browsers to keep to HTTPS (HSTS). Plain HTTP
on its own port is either redirected to HTTPS (308, which keeps a POST's method and body) or
refused (403 with a JSON error saying where to go): an API key never travels in clear text to a
server that would accept it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config_rules import Rule, choice, either, integer, text

CONTAINER_TLS_DIR = "/etc/nginx/tls"
CONTAINER_HTTPS_PORT = 443
PLAIN_HTTP_MODES = ("redirect", "refuse")
# Mozilla's intermediate configuration (ssl-config.mozilla.org, version 5.7) for TLS 1.2; TLS 1.3
# suites are all modern and not configured by ssl_ciphers.
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")
HSTS_SECONDS = 63072000  # two years, as Mozilla's configuration

TLS_RULES: dict[str, Rule] = {
    "nginx.tls_certificate": either("none", text(), "a file"),
    "nginx.tls_key": either("none", text(), "a file"),
    "nginx.plain_http": choice(*PLAIN_HTTP_MODES),
    "nginx.plain_http_port": integer(1, maximum=65535),
}


@dataclass(frozen=True)
class TlsFront:
    """How nginx's front door is set up for TLS: the certificate and key as nginx opens them,
    where plain HTTP is answered and how, and the HTTPS port clients use (for the redirect)."""

    certificate: str
    key: str
    plain_listen: str
    plain_http: str
    https_port: int


def tls_problems(nginx: dict, folder: Path, source: str) -> list[str]:
    """The certificate and key named together, each an existing file (relative to ``folder``)."""
    named = {key: nginx[key] for key in ("tls_certificate", "tls_key") if nginx[key] != "none"}
    if len(named) == 1:
        (given, _), = named.items()
        missing = "tls_key" if given == "tls_certificate" else "tls_certificate"
        return [f"nginx.{given} is set but nginx.{missing} is none (in {source}): name both "
                "PEM files to serve HTTPS, or set both to none"]
    return [f"nginx.{key} = {value!r}: no such file (relative to {folder}); make the "
            "certificate and key first (e.g. with openssl or your CA) or set both to none"
            for key, value in named.items() if not (folder / value).is_file()]


def server_tls_lines(front: TlsFront) -> str:
    """The HTTPS server's TLS directives."""
    return "".join(f"        {line}\n" for line in (
        f"ssl_certificate {front.certificate};",
        f"ssl_certificate_key {front.key};",
        "ssl_protocols TLSv1.2 TLSv1.3;  # modern protocols only",
        f"ssl_ciphers {CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:imgcls_tls:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;"))


def hsts_line(front: TlsFront | None) -> str:
    """The location's HSTS header (add_header there: a location's own headers replace the
    server's)."""
    if front is None:
        return ""
    return (f'            add_header Strict-Transport-Security "max-age={HSTS_SECONDS}" '
            "always;\n")


def plain_http_server(front: TlsFront | None) -> str:
    """The plain-HTTP server next to the HTTPS one: every request redirected or refused."""
    if front is None:
        return ""
    port = "" if front.https_port == CONTAINER_HTTPS_PORT else f":{front.https_port}"
    target = f"https://$host{port}$request_uri"
    answer = (f"return 308 {target};" if front.plain_http == "redirect" else
              f"default_type application/json;\n            return 403 '{{\"error\": \"plain "
              f"HTTP is refused: use {target}\"}}';")
    return (f"\n    server {{  # plain HTTP: nginx.plain_http = {front.plain_http}\n"
            f"        listen {front.plain_listen};\n"
            f"        location / {{\n            {answer}\n        }}\n    }}\n")


def container_front(nginx: dict, https_port: int) -> TlsFront | None:
    """The TLS front of compose's nginx container (None without a certificate): the files
    mounted in ``CONTAINER_TLS_DIR``, HTTPS on 443 and plain HTTP on 80."""
    if nginx["tls_certificate"] == "none":
        return None
    return TlsFront(f"{CONTAINER_TLS_DIR}/certificate.pem", f"{CONTAINER_TLS_DIR}/key.pem",
                    "80", nginx["plain_http"], https_port)


def container_mounts(nginx: dict) -> list[str]:
    """compose's read-only mounts of the certificate and key into the nginx container."""
    if nginx["tls_certificate"] == "none":
        return []
    return [f"{nginx['tls_certificate']}:{CONTAINER_TLS_DIR}/certificate.pem:ro",
            f"{nginx['tls_key']}:{CONTAINER_TLS_DIR}/key.pem:ro"]
