"""Where the OpenMetadata server is, and the errors talking to it can raise. No SDK import here,
so asking "is a server configured?" costs nothing.

Environment: SYNAPSE_OM_HOST (e.g. http://localhost:8585), SYNAPSE_OM_TOKEN (a bot's JWT),
SYNAPSE_OM_WEBHOOK_SECRET (the shared secret of `webhook` and `om subscribe`). The page passes
`st.secrets` to config_from_secrets; .streamlit/secrets.toml is the user's and never committed.
The token and the secret never appear in a repr, a log line, a result or an exception message.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..common.errors import BadInput, SynapseError

HOST_ENV = "SYNAPSE_OM_HOST"
TOKEN_ENV = "SYNAPSE_OM_TOKEN"
SECRET_ENV = "SYNAPSE_OM_WEBHOOK_SECRET"


class OMError(SynapseError):
    """Talking to OpenMetadata failed; the message says what to do. Local state is never lost."""


class OMUnavailable(OMError):
    """The server cannot be reached (down, wrong host, network)."""


class OMAuthError(OMError):
    """The server rejected the token (HTTP 401/403)."""


class OMVersionMismatch(OMError):
    """The server's major.minor version differs from the SDK's; the SDK refuses to talk to it."""


class OMRejected(OMError):
    """The server answered but refused or failed a request (a failed patch, a lineage error, ...)."""


def _api_url(host: str) -> str:
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise BadInput(f"OpenMetadata host {host!r} is not a URL: write e.g. http://localhost:8585")
    return host if host.endswith("/api") else host + "/api"


@dataclass(frozen=True)
class OMConfig:
    """How to reach OpenMetadata. The token is kept out of repr and comparisons' output."""

    host: str  # the server's URL, e.g. http://localhost:8585 (".../api" also accepted)
    token: str = field(repr=False)  # a bot's JWT; never printed
    webhook_secret: str | None = field(default=None, repr=False)  # HMAC key of the change-event webhook

    def __post_init__(self):
        object.__setattr__(self, "host", _api_url(self.host))
        if not self.token or not self.token.strip():
            raise BadInput(f"no token for OpenMetadata at {self.host}: set {TOKEN_ENV} to a bot's JWT")

    @property
    def api_url(self) -> str:
        """The SDK's hostPort: the server URL ending in /api."""
        return self.host

    @property
    def server(self) -> str:
        """The server URL without /api, for messages."""
        return self.host[: -len("/api")]

    def __repr__(self) -> str:  # dataclass repr already skips the token; say so explicitly
        return f"OMConfig(host={self.server!r}, token='***')"


def config_from_env(env: Mapping[str, str] | None = None) -> OMConfig | None:
    """The configuration in SYNAPSE_OM_HOST / SYNAPSE_OM_TOKEN; None (embedded mode) without a host."""
    env = os.environ if env is None else env
    host = (env.get(HOST_ENV) or "").strip()
    if not host:
        return None
    return OMConfig(host, env.get(TOKEN_ENV) or "", env.get(SECRET_ENV) or None)


def config_from_secrets(secrets: Mapping | None) -> OMConfig | None:
    """The configuration in a secrets mapping (Streamlit's st.secrets), else the environment's.

    Accepted layouts of .streamlit/secrets.toml:

        [openmetadata]
        host = "http://localhost:8585"
        token = "eyJ..."
        webhook_secret = "..."      # optional

    or top-level SYNAPSE_OM_HOST / SYNAPSE_OM_TOKEN / SYNAPSE_OM_WEBHOOK_SECRET keys.
    """
    try:
        section = secrets.get("openmetadata") if secrets is not None else None
    except Exception:  # st.secrets raises when no secrets.toml exists at all
        section = None
    if section:
        host = (section.get("host") or "").strip()
        if host:
            return OMConfig(host, section.get("token") or "", section.get("webhook_secret") or None)
    try:
        if secrets is not None and secrets.get(HOST_ENV):
            return config_from_env({k: str(secrets.get(k) or "") for k in (HOST_ENV, TOKEN_ENV, SECRET_ENV)})
    except Exception:
        pass
    return config_from_env()
