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
    dynamic_weight     in proportion to weights computed from what the
                       balancer observes (seed 004, 4.3):
                       C{base * max(0.1, 1 - rt / 1 s) / (active + 1)},
                       C{rt} the moving average of the endpoint's response
                       time, C{active} its calls in flight, C{base} from
                       C{weights} (1 by default)

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


@implementer(IPicker)
class DynamicWeight:
    """
    Candidates in proportion to weights from their observed response time
    and calls in flight (seed 004's dynamic weights), spread by smooth
    weighted round robin::

        weight = base * max(0.1, 1 - rt / scale) / (active + 1)

    C{rt} is an exponentially weighted moving average of the endpoint's
    response times, which the balancer reports through L{observe} (an
    endpoint not yet observed counts as instant); C{active} is its
    C{outstanding} calls.

    @ivar latency: endpoint key to its moving average, in seconds.
    """

    def __init__(self, weights: Mapping[Any, float] | None = None, *, alpha: float = 0.3,
                 scale: float = 1.0) -> None:
        """
        @param weights: endpoint to its base weight (positive); others weigh 1.
        @param alpha: the moving average's weight of each new sample
            (0 < alpha <= 1).
        @param scale: the response time, in seconds, at which an endpoint
            is down to the floor of a tenth of its base weight (the seed's
            1000 ms).
        @raise ValueError: a weight, C{alpha} or C{scale} out of range.
        """
        for key, weight in (weights or {}).items():
            if not weight > 0:
                raise ValueError(f"the weight of {key} must be positive, not {weight}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, not {scale}")
        self.weights = dict(weights or {})
        self.alpha = alpha
        self.scale = scale
        self.latency: dict[Any, float] = {}
        self._current: dict[Any, float] = {}

    def observe(self, key: Any, seconds: float) -> None:
        """
        A call to an endpoint was answered.

        @param key: the endpoint's key.
        @param seconds: how long the answer took.
        """
        previous = self.latency.get(key)
        self.latency[key] = seconds if previous is None else \
            previous + self.alpha * (seconds - previous)

    def weight(self, candidate: Any) -> float:
        """
        @param candidate: an endpoint (with C{key} and C{outstanding}).
        @return: its weight now.
        """
        rt = self.latency.get(candidate.key, 0.0)
        return (self.weights.get(candidate.key, 1) * max(0.1, 1 - rt / self.scale)
                / (candidate.outstanding + 1))

    def pick(self, candidates: Sequence[Any]) -> Any:
        total = 0.0
        best = candidates[0]
        current = self._current
        for c in candidates:
            weight = self.weight(c)
            total += weight
            current[c.key] = current.get(c.key, 0.0) + weight
            if current[c.key] > current[best.key]:
                best = c
        current[best.key] -= total
        return best


POLICIES = ("round_robin", "random", "least_outstanding", "weighted", "dynamic_weight")


def make_picker(policy: str | Any, *, weights: Mapping[Any, float] | Sequence[float] | None = None,
                endpoints: Sequence[Any] = (), rng: random.Random | None = None) -> Any:
    """
    @param policy: one of L{POLICIES}, or an L{IPicker}.
    @param weights: for C{weighted} (and, as base weights, for
        C{dynamic_weight}): endpoint to weight, or weights in the order of
        C{endpoints}.
    @param endpoints: the endpoints, when C{weights} is a sequence.
    @param rng: for C{random}.
    @return: the L{IPicker}.
    @raise ValueError: an unknown policy, or weights that do not fit.
    """
    if IPicker.providedBy(policy):
        return policy
    if weights is not None and policy not in ("weighted", "dynamic_weight"):
        raise ValueError(f"weights are for the weighted and dynamic_weight policies, "
                         f"not {policy!r}")
    if weights is not None and not isinstance(weights, Mapping):
        weights = list(weights)
        if len(weights) != len(endpoints):
            raise ValueError(f"{len(weights)} weights for {len(endpoints)} endpoints")
        weights = dict(zip(endpoints, weights))
    if policy == "round_robin":
        return RoundRobin()
    if policy == "random":
        return RandomPick(rng)
    if policy == "least_outstanding":
        return LeastOutstanding()
    if policy == "weighted":
        if weights is None:
            raise ValueError("the weighted policy needs weights")
        return Weighted(weights)
    if policy == "dynamic_weight":
        return DynamicWeight(weights)
    raise ValueError(f"unknown balancing policy {policy!r}; choose from {', '.join(POLICIES)}")
