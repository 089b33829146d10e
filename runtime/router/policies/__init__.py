"""Load-balancing policies by flag name: `make_policy(args)`."""
from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.policies import cache_aware, round_robin, shortest_queue  # noqa: F401
from sgl.runtime.router.policies.base import POLICIES, Policy


def make_policy(args: RouterArgs, name: str | None = None) -> Policy:
    """The policy called `name` (default: --policy)."""
    return POLICIES[name or args.load_balance_method](args)


__all__ = ["POLICIES", "Policy", "make_policy"]
