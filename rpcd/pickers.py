"""
Load-balancing policies: each picks one endpoint for a call among those that
can take it now (connected, healthy, circuit not open).

    round_robin        each in turn
    random             uniformly at random
    least_outstanding  the one with the fewest calls pending on its
                       connection (ties in turn)
    weighted           in proportion to C{weights} (smooth weighted round
                       robin, as nginx does: weights 5, 1, 1 give
                       A A B A C A A, never five A in a row)

A policy sees objects with a C{key} (the endpoint as the user gave it) and
an C{outstanding} count.  Write your own by implementing L{IPicker}.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from zope.interface import Interface, implementer


class IPicker(Interface):
    """
    A load-balancing policy.
    """

    def pick(candidates: Sequence[Any]) -> Any:
        """
        @param candidates: the endpoints that can take a call, never empty,
            in a stable order.
        @return: one of them.
        """


@implementer(IPicker)
class RoundRobin:
    """Each candidate in turn."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Any]) -> Any:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


@implementer(IPicker)
class RandomPick:
    """A candidate chosen uniformly at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        """
        @param rng: the source of randomness.
        """
        self.rng = rng or random.Random()

    def pick(self, candidates: Sequence[Any]) -> Any:
        return self.rng.choice(candidates)


@implementer(IPicker)
class LeastOutstanding:
    """The candidate with the fewest calls pending; ties in turn."""

    def __init__(self) -> None:
        self._ties = RoundRobin()

    def pick(self, candidates: Sequence[Any]) -> Any:
        fewest = min(c.outstanding for c in candidates)
        return self._ties.pick([c for c in candidates if c.outstanding == fewest])


@implementer(IPicker)
class Weighted:
    """Candidates in proportion to their weights (smooth weighted round robin)."""

    def __init__(self, weights: Mapping[Any, float]) -> None:
        """
        @param weights: endpoint (as given to the balancer) to a positive
            weight; endpoints not named weigh 1.
        @raise ValueError: a weight is not positive.
        """
        for key, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"the weight of {key} must be positive, not {weight}")
        self.weights = dict(weights)
        self._current: dict[Any, float] = {}

    def pick(self, candidates: Sequence[Any]) -> Any:
        total = 0.0
        best = candidates[0]
        for c in candidates:
            weight = self.weights.get(c.key, 1)
            total += weight
            self._current[c.key] = self._current.get(c.key, 0) + weight
            if self._current[c.key] > self._current[best.key]:
                best = c
        self._current[best.key] -= total
        return best


POLICIES = ("round_robin", "random", "least_outstanding", "weighted")


def make_picker(policy: str | Any, *, weights: Mapping[Any, float] | Sequence[float] | None = None,
                endpoints: Sequence[Any] = (), rng: random.Random | None = None) -> Any:
    """
    @param policy: one of L{POLICIES}, or an L{IPicker}.
    @param weights: for C{weighted}: endpoint to weight, or weights in the
        order of C{endpoints}.
    @param endpoints: the endpoints, when C{weights} is a sequence.
    @param rng: for C{random}.
    @return: the L{IPicker}.
    @raise ValueError: an unknown policy, or weights that do not fit.
    """
    if IPicker.providedBy(policy):
        return policy
    if weights is not None and policy != "weighted":
        raise ValueError(f"weights are for the weighted policy, not {policy!r}")
    if policy == "round_robin":
        return RoundRobin()
    if policy == "random":
        return RandomPick(rng)
    if policy == "least_outstanding":
        return LeastOutstanding()
    if policy == "weighted":
        if weights is None:
            raise ValueError("the weighted policy needs weights")
        if not isinstance(weights, Mapping):
            weights = list(weights)
            if len(weights) != len(endpoints):
                raise ValueError(f"{len(weights)} weights for {len(endpoints)} endpoints")
            weights = dict(zip(endpoints, weights))
        return Weighted(weights)
    raise ValueError(f"unknown balancing policy {policy!r}; choose from {', '.join(POLICIES)}")
