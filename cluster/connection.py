"""Which Ray cluster a command talks to, and the authenticated Jobs API client for it.

Resolution order: an explicit `--address`, then `RAY_ADDRESS`, then the embedded local head in
`RAYTRON_HOME` (started on demand when the caller allows it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from raytron.cluster.errors import ConnectionFailed, HeadError
from raytron.cluster.head import HeadInfo, LocalHeadConfig, find_local_head, start_local_head
from raytron.cluster.settings import Settings

__all__ = ["Cluster", "connect", "normalize_address"]


@dataclass(frozen=True)
class Cluster:
    """A resolved cluster address and how to authenticate to it."""

    address: str
    """The Jobs API (dashboard) address."""
    head: HeadInfo | None = None
    """The embedded head, when that is what we are talking to."""
    headers: dict[str, str] = field(default_factory=dict)
    """HTTP headers for its dashboard (the embedded head's bearer token)."""

    @property
    def embedded(self) -> bool:
        return self.head is not None

    def job_client(self):
        """A connected `ray.job_submission.JobSubmissionClient`.

        Raises:
            ConnectionFailed: nothing answers at the address, or it is not a Ray Jobs API.
        """
        import logging

        from ray.job_submission import JobSubmissionClient

        # Ray logs every package upload at INFO on the submitter's terminal; raytron says what matters.
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
        logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
        from ray.exceptions import AuthenticationError

        try:
            return JobSubmissionClient(self.address, headers=dict(self.headers) or None)
        except AuthenticationError as exc:
            raise ConnectionFailed(
                f"the Ray cluster at {self.address} refused the request: it requires an auth token ({_first_line(exc)}). "
                "Set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the token file (for a head started by `raytron up`: "
                "auth_token in its RAYTRON_HOME), or RAY_AUTH_TOKEN to the token itself"
            ) from None
        except Exception as exc:  # Ray raises ConnectionError, ValueError or RuntimeError here
            hint = (
                "start one with `raytron up`"
                if self.embedded
                else "check --address / RAY_ADDRESS (the dashboard address, e.g. http://127.0.0.1:8265), or omit both to use the embedded local head"
            )
            raise ConnectionFailed(f"could not reach a Ray Jobs API at {self.address}: {_first_line(exc)}; {hint}") from None


def normalize_address(address: str) -> str:
    """`host:port` becomes `http://host:port`; URLs and Ray's own forms (`auto`, `ray://`) pass through."""
    address = address.strip()
    if address == "auto" or "://" in address:
        return address.rstrip("/")
    return f"http://{address}".rstrip("/")


def connect(
    address: str | None = None,
    *,
    settings: Settings | None = None,
    start: bool = True,
    head_config: LocalHeadConfig | None = None,
    on_start: Callable[[], None] | None = None,
) -> Cluster:
    """Resolve which cluster to use.

    Args:
        address: An explicit address (the CLI's `--address`); wins over `RAY_ADDRESS`.
        settings: Environment settings (default: read now).
        start: Start the embedded head if it is the one to use and is not running.
        head_config: How to start it (default: defaults in `settings.home`).
        on_start: Called just before a head is started, so a CLI can say why it waits.

    Raises:
        ConnectionFailed: the embedded head is needed, not running, and `start` is False.
        HeadError: starting it failed.
    """
    settings = settings or Settings.from_env()
    chosen = address or settings.address
    head = find_local_head(settings.home)
    if chosen:
        url = normalize_address(chosen)
        if head is not None and url == head.dashboard_url:  # the embedded head, named by its address
            return Cluster(address=url, head=head, headers=head.auth_header())
        return Cluster(address=url)
    if head is None:
        if not start:
            raise ConnectionFailed(f"no local Ray head is running (RAYTRON_HOME={settings.home}); start one with `raytron up`, or pass --address")
        if on_start is not None:
            on_start()
        head, _ = start_local_head(head_config or LocalHeadConfig(home=settings.home))
    try:
        headers = head.auth_header()
    except OSError as exc:
        raise HeadError(f"cannot read the local head's token {head.token_path}: {exc}") from None
    return Cluster(address=head.dashboard_url, head=head, headers=headers)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
