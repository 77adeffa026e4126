"""Secrets stay out of what we print, log and track; servers stay on loopback unless a login guards them.

demonlab writes no authentication of its own: MLflow's basic-auth app and Prefect's auth string guard the servers
(docs/orchestration.md, deploy/), and clients take their credentials from the environment (or MLflow's
`~/.mlflow/credentials`). This module holds what the rest of the project needs around them:

- `redact(text)`: the one helper every printed or logged URL and error text goes through;
- `holds_secret(value)`: a parameter that would carry a credential into params.yaml, dvc.lock or MLflow;
- `check_exposure(...)`: the `--host` rule of `demonlab server | ui | demo`;
- `credential_error(...)`, `check_prefect_login(...)`: a refused login as one line naming the server and the
  setting to fix (a `UserError`: exit 2, never retried).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import sys
import urllib.error
import urllib.request

from components.errors import UserError

# scheme://user:password@host -> scheme://user:***@host (the user name stays: it tells which login was used)
_URL_PASSWORD = re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")
# ?api_key=...&X-Amz-Signature=...: presigned and token-carrying URLs
_SECRET_QUERY = re.compile(r"(?P<keep>[?&][^=&\s]*(?:key|token|secret|password|signature|credential)[^=&\s]*=)[^&\s#]+",
                           re.IGNORECASE)  # fmt: skip
# OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, PREFECT_API_AUTH_STRING, HF_TOKEN, ...
_SECRET_ENV = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|AUTH_STRING|CREDENTIAL", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values ("1", "true", moto's "test") would blank ordinary words out of every message
MASK = "***"


def _secret_values() -> list[str]:
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)  # a longer secret first, in case one contains another


def redact(text: str) -> str:
    """`text` with URL passwords, secret query values and the values of secret environment variables masked.

    Third-party errors quote URLs and sometimes request details, so anything we print or log that did not
    come from a literal in our code goes through here."""
    text = _URL_PASSWORD.sub(rf"\g<keep>{MASK}@", text)
    text = _SECRET_QUERY.sub(rf"\g<keep>{MASK}", text)
    for value in _secret_values():
        text = text.replace(value, MASK)
    return text


def holds_secret(value: str) -> bool:
    """Whether `value` carries a credential (a URL password, a secret query value, a secret variable's value)."""
    return redact(value) != value


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost resolves to an address others can reach
        return False


def check_exposure(host: str, auth_configured: bool, insecure: bool, service: str, how: str) -> None:
    """Refuse to serve `service` on a non-loopback `host` without authentication; `insecure` (the user's explicit
    `--insecure`) overrides it with a warning. `how`: what configures authentication, named in the error."""
    if is_loopback(host) or auth_configured:
        return
    if not insecure:
        raise UserError(
            f"--host {host} would let anyone who can reach this machine use {service} without logging in: {how}, "
            "or pass --insecure if a firewall or an authenticating proxy already guards it"
        )
    print(
        f"warning: {service} on {host} has no authentication (--insecure): anyone who can reach it can use it",
        file=sys.stderr,
    )


def credential_error(server: str, status: int, fix: str) -> UserError:
    """One line for a login the server rejected (401) or an action it denied (403)."""
    problem = "rejected the credentials" if status == 401 else "denied the request"
    return UserError(f"{redact(server)} {problem} (HTTP {status}): {fix}")


PREFECT_LOGIN = "set PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password)"


def check_prefect_login(api_url: str, auth_string: str | None) -> None:
    """Stop with one line when the Prefect API at `api_url` rejects `auth_string` (or its absence).

    Prefect's own clients fail with a traceback deep in httpx; an unreachable server is left to the command
    that follows, which says so in its own words."""
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version")
    if auth_string:  # what Prefect's clients send
        request.add_header("Authorization", "Basic " + base64.b64encode(auth_string.encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise credential_error(f"Prefect server {api_url}", 401, PREFECT_LOGIN) from None
    except OSError:
        pass
