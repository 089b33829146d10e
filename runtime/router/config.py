"""Router arguments: one frozen dataclass with SGLang router's flag names. The CLI is generated
from it: each field's `help` metadata becomes the flag's help text."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

POLICY_NAMES = ("round_robin", "shortest_queue", "cache_aware")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RouterArgs:
    worker_urls: list[str] = _f(  # noqa: RUF009 (a field() with help, as in ServerArgs)
        [], "sgl servers to balance over, e.g. http://127.0.0.1:30001.", nargs="*")
    host: str = _f("127.0.0.1", "HTTP host of the router.")
    port: int = _f(30000, "HTTP port of the router.")
    load_balance_method: str = _f("cache_aware", "How a request picks its worker.",
                                  choices=POLICY_NAMES, aliases=("--policy",))
    # cache_aware
    cache_threshold: float = _f(0.5, "cache_aware: route to the worker holding the longest "
                                "prefix when the matched share of the request text exceeds this.")
    balance_abs_threshold: int = _f(32, "cache_aware: load is unbalanced when max - min "
                                    "in-flight requests exceeds this ...")
    balance_rel_threshold: float = _f(1.0001, "... and max exceeds min times this; then route "
                                      "by shortest queue.")
    eviction_interval_secs: float = _f(60.0, "cache_aware: trim the prefix tree this often.")
    max_tree_size: int = _f(2 ** 24, "cache_aware: most characters the tree keeps per worker "
                            "(least recently used go first).")
    # Failures and health
    max_retries: int = _f(3, "Resend a request this many times to other workers when its "
                          "worker fails before answering.")
    health_check_interval_secs: float = _f(10.0, "Probe every worker's /health this often.")
    health_check_timeout_secs: float = _f(5.0, "A /health probe slower than this fails.")
    health_failure_threshold: int = _f(3, "Consecutive failed probes that take a worker out.")
    health_success_threshold: int = _f(2, "Consecutive good probes that bring it back.")
    worker_startup_timeout_secs: float = _f(300.0, "At start and on /add_worker, wait this long "
                                            "for a worker's /health.")
    request_timeout_secs: float = _f(1800.0, "Longest wait for a worker's answer to a request.")
    log_level: str = _f("info", "Logging level.")
    # Prefill-decode disaggregation (runtime/router/pd.py)
    pd_disaggregation: bool = _f(False, "Send each request to a prefill server (--prefill) and a "
                                 "decode server (--decode) at once; the decode's answer comes back.")
    prefill: list = _f([], "A prefill server and its bootstrap port (default 8998): --prefill URL "
                       "[PORT]; repeat for more.", action="append", nargs="+")
    decode: list = _f([], "A decode server: --decode URL; repeat for more.", action="append")
    prefill_policy: Optional[str] = _f(None, "How a request picks its prefill server "
                                       "(default: --policy).", choices=POLICY_NAMES)
    decode_policy: Optional[str] = _f(None, "How a request picks its decode server "
                                      "(default: --policy).", choices=POLICY_NAMES)

    def __post_init__(self) -> None:
        if self.load_balance_method not in POLICY_NAMES:
            raise ValueError(f"load_balance_method must be one of {POLICY_NAMES}, "
                             f"got {self.load_balance_method!r}")
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError("cache_threshold must be in [0, 1]")
        if self.max_retries < 0 or self.max_tree_size < 0:
            raise ValueError("max_retries and max_tree_size must be >= 0")
        if min(self.health_failure_threshold, self.health_success_threshold) < 1:
            raise ValueError("health thresholds must be >= 1")
        object.__setattr__(self, "worker_urls", [normalize_url(u) for u in self.worker_urls])
        self._check_pd()

    def _check_pd(self) -> None:
        """Normalize --prefill entries to (url, bootstrap port) and --decode to urls."""
        for name in ("prefill_policy", "decode_policy"):
            if getattr(self, name) not in (None, *POLICY_NAMES):
                raise ValueError(f"{name} must be one of {POLICY_NAMES}, got {getattr(self, name)!r}")
        object.__setattr__(self, "prefill", [_prefill_entry(e) for e in self.prefill])
        object.__setattr__(self, "decode", [normalize_url(u) for u in self.decode])
        if not self.pd_disaggregation:
            if self.prefill or self.decode:
                raise ValueError("--prefill and --decode need --pd-disaggregation")
            return
        if not self.prefill or not self.decode:
            raise ValueError("--pd-disaggregation needs at least one --prefill and one --decode server")
        if self.worker_urls:
            raise ValueError("--pd-disaggregation takes --prefill and --decode servers, not --worker-urls")
        urls = [u for u, _ in self.prefill] + self.decode
        if len(set(urls)) != len(urls):
            raise ValueError("a server is listed twice among --prefill and --decode")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RouterArgs:
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown router argument(s): {', '.join(unknown)}")
        return cls(**kwargs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(RouterArgs):
            meta = dict(f.metadata)
            help_text, aliases = meta.pop("help", ""), meta.pop("aliases", ())
            flags = ["--" + f.name.replace("_", "-"), *aliases]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if isinstance(default, bool):
                parser.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
                continue
            parser.add_argument(*flags, dest=f.name, default=default, type=_cli_type(default),
                                help=help_text, **meta)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> RouterArgs:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def normalize_url(url: str) -> str:
    """`host:port` -> `http://host:port`; no trailing slash."""
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError("empty worker url")
    return url if "://" in url else "http://" + url


def _prefill_entry(entry: Any) -> tuple[str, int]:
    """`URL`, `(URL,)` or `(URL, PORT)` -> (url, bootstrap port); 8998 is SGLang's default."""
    parts = [entry] if isinstance(entry, str) else list(entry)
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"--prefill takes a URL and an optional bootstrap port, got {parts}")
    port = parts[1] if len(parts) == 2 else 8998
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"--prefill {parts[0]}: bootstrap port must be an integer, got {port!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"--prefill {parts[0]}: bootstrap port must be in [1, 65535], got {port}")
    return normalize_url(parts[0]), port


def _cli_type(default: Any) -> Any:
    if isinstance(default, (int, float)):
        return type(default)
    return str
