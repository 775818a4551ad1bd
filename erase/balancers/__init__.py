"""Balancers: how the unlearning and retain losses become one update (see base.py).

Add one by writing a module with a ``Balancer`` subclass decorated ``@register_balancer`` and
importing it here.
"""

from erase.balancers import explicit, implicit, simple  # noqa: F401  (registration)
from erase.balancers.base import BALANCERS, Balancer, BalancerSettings, LagrangeMultiplier, build_balancer

__all__ = ["BALANCERS", "Balancer", "BalancerSettings", "LagrangeMultiplier", "build_balancer"]
