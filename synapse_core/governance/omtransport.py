"""One overall deadline for everything a command asks OpenMetadata, however the server misbehaves.

The SDK's own transport retries a read that timed out (urllib3 Retry, with back-off) and its
timeouts bound each socket read, not a request: a server that accepts and never answers held a
command for minutes, and one that trickles a byte every few seconds resets the read timeout
forever. A DeadlineAdapter replaces that transport on the SDK's session: no retries, each
request's timeouts clipped to the time left, no request started after the deadline, and at the
deadline a timer shuts down every socket the client opened, which ends a read in progress however
slowly the bytes come. Each command builds one client, so each command has one deadline.
"""
from __future__ import annotations

import socket
import threading
import time

import requests
from metadata.ingestion.ometa.client import APIError, HtmlResponseError, RestTransportError
from metadata.ingestion.ometa.mixins.server_mixin import VersionNotFoundException
from metadata.ingestion.ometa.ometa_api import EmptyPayloadException
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .omconfig import TOKEN_ENV, OMAuthError, OMError, OMRejected, OMUnavailable

DEADLINE_S = 10.0  # one command's total time with OpenMetadata: the page and the CLI never wait longer


class Deadline:
    """A point in time after which no request starts, and at which open sockets are shut down."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _pool(base_pool, base_conn, deadline: Deadline):
    class Connection(base_conn):
        def _new_conn(self):
            sock = super()._new_conn()
            deadline.track(sock)
            return sock

    return type(f"Deadline{base_pool.__name__}", (base_pool,), {"ConnectionCls": Connection})


class DeadlineAdapter(HTTPAdapter):
    """requests transport with no retries whose every request ends by the deadline."""

    def __init__(self, deadline: Deadline, timeout: tuple[float, float]):
        self.deadline, self.timeout = deadline, timeout
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _pool(HTTPConnectionPool, HTTPConnection, self.deadline),
            "https": _pool(HTTPSConnectionPool, HTTPSConnection, self.deadline),
        }

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        left = self.deadline.remaining()
        if left <= 0 or self.deadline.expired:
            raise requests.exceptions.Timeout(f"the deadline of {self.deadline.seconds:g} s has passed")
        clipped = (min(self.timeout[0], left), min(self.timeout[1], left))
        try:
            return super().send(request, stream=stream, timeout=clipped, verify=verify, cert=cert, proxies=proxies)
        except requests.exceptions.RequestException as exc:
            if self.deadline.expired or self.deadline.remaining() <= 0:
                raise requests.exceptions.Timeout(
                    f"no answer within the deadline of {self.deadline.seconds:g} s") from exc
            raise


def bound(session: requests.Session, seconds: float, timeout: tuple[float, float]) -> Deadline:
    """Give `session` one deadline `seconds` from now (cancel() it when done)."""
    deadline = Deadline(seconds)
    adapter = DeadlineAdapter(deadline, timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return deadline


def raise_translated(exc: Exception, server: str, what: str) -> None:
    """Raise the OMError subclass that says what to do about one of the SDK's many failure types
    (or `exc` itself when it is none of them)."""
    try:
        raise exc
    except OMError:
        raise
    except (RestTransportError, requests.exceptions.RequestException) as err:
        cause = type(getattr(err, "cause", err)).__name__
        raise OMUnavailable(f"OpenMetadata at {server} is unreachable ({cause}) while trying to {what}; "
                            "check that the server runs and the host is right") from err
    except HtmlResponseError as err:
        raise OMUnavailable(f"{server} answered a web page instead of the API while trying to {what}: "
                            "check the host (the server's URL, e.g. http://localhost:8585)") from err
    except APIError as err:
        status = err.status_code or err.code
        if status in (401, 403):
            raise OMAuthError(f"OpenMetadata at {server} rejected the token (HTTP {status}) while trying "
                              f"to {what}: set {TOKEN_ENV} to a valid bot JWT") from err
        raise OMRejected(f"OpenMetadata at {server} refused to {what}: HTTP {status}: {err}") from err
    except VersionNotFoundException as err:
        text = str(err)
        if "Not authorized" in text:
            raise OMAuthError(f"OpenMetadata at {server} rejected the token: set {TOKEN_ENV} to a valid "
                              "bot JWT") from err
        raise OMUnavailable(f"cannot read the version of OpenMetadata at {server}: {text}") from err
    except EmptyPayloadException as err:
        raise OMRejected(f"OpenMetadata at {server} answered nothing while trying to {what}") from err
