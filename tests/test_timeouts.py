"""
Tests for L{rpcd.core.timeouts}: many deadlines on one timer.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rpcd.core.timeouts import Timeouts


class TimeoutsTests(SynchronousTestCase):
    """Items expire at their own deadlines, with one timer for all of them."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.live: dict[str, None] = {}
        self.expired: list[tuple[str, float]] = []
        self.timeouts = Timeouts(self.clock, self.live, self.expire)

    def expire(self, item: str) -> None:
        del self.live[item]
        self.expired.append((item, self.clock.seconds()))

    def add(self, delay: float, item: str) -> None:
        self.live[item] = None
        self.timeouts.add(delay, item)

    def test_each_at_its_deadline(self) -> None:
        """Items added in any order expire each at its own deadline, in deadline order, on one timer."""
        self.add(5, "five")
        self.add(2, "two")
        self.add(8, "eight")
        self.add(2, "two again")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.5)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.5)
        self.assertEqual(self.expired, [("two", 2.0), ("two again", 2.0)])
        self.clock.advance(2.9)
        self.assertEqual(len(self.expired), 2)
        self.clock.advance(0.1)
        self.clock.advance(3)
        self.assertEqual(self.expired, [("two", 2.0), ("two again", 2.0), ("five", 5.0), ("eight", 8.0)])
        self.assertEqual((len(self.timeouts), self.clock.getDelayedCalls()), (0, []))

    def test_exact_deadline_after_float_arithmetic(self) -> None:
        """An item expires when the clock reaches its deadline, though the timer was set at a time from which float rounding overshoots it."""
        self.clock.advance(0.1)
        self.add(0.6, "first")
        self.add(3, "second")  # due at 0.1 + 3 == 3.1
        self.clock.advance(0.6)  # "first" expires; the timer is set from 0.7, and 0.7 + (3.1 - 0.7) > 3.1
        self.assertGreater(0.7 + (3.1 - 0.7), 3.1)
        self.clock.advance(0.3)
        self.clock.advance(2.1)
        self.assertEqual(self.clock.seconds(), 0.1 + 3)
        self.assertEqual(self.expired, [("first", 0.7), ("second", 0.1 + 3)])

    def test_zero_delay(self) -> None:
        """A delay of 0 expires the item on the clock's next turn, not at once."""
        self.add(0, "now")
        self.assertEqual(self.expired, [])
        self.clock.advance(0)
        self.assertEqual(self.expired, [("now", 0.0)])

    def test_earlier_item_moves_the_timer(self) -> None:
        """An item due before all the others sets the one timer earlier."""
        self.add(60, "late")
        self.add(1, "early")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [1.0])
        self.clock.advance(1)
        self.assertEqual(self.expired, [("early", 1.0)])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [60.0])

    def test_item_let_go_does_not_expire(self) -> None:
        """An item no longer live is skipped at its deadline; the others still expire."""
        self.add(1, "kept")
        self.add(1, "dropped")
        del self.live["dropped"]
        self.timeouts.prune()
        self.clock.advance(1)
        self.assertEqual(self.expired, [("kept", 1.0)])

    def test_nothing_kept_once_none_is_live(self) -> None:
        """Once no item is live, prune forgets every entry and stops the timer."""
        for i in range(10):
            self.add(30, f"i{i}")
        self.live.clear()
        self.timeouts.prune()
        self.assertEqual((len(self.timeouts), self.clock.getDelayedCalls()), (0, []))

    def test_stale_entries_bounded(self) -> None:
        """Items added and let go over and over leave the heap within twice the live items plus slack."""
        self.add(3600, "stays")
        for i in range(10_000):
            self.add(3600, f"i{i}")
            del self.live[f"i{i}"]
            self.timeouts.prune()
            self.assertLessEqual(len(self.timeouts), 2 * len(self.live) + 64 + 1)
        self.clock.advance(3600)
        self.assertEqual(self.expired, [("stays", 3600.0)])
        self.assertEqual((len(self.timeouts), self.clock.getDelayedCalls()), (0, []))

    def test_only_stale_left_after_expiry(self) -> None:
        """When the last live item expires, the stale entries after it go too, with no timer left."""
        self.add(1, "first")
        self.add(50, "dropped")
        del self.live["dropped"]
        self.timeouts.prune()
        self.assertEqual(len(self.timeouts), 2)
        self.clock.advance(1)
        self.assertEqual((len(self.timeouts), self.clock.getDelayedCalls()), (0, []))

    def test_clear(self) -> None:
        """clear forgets every entry and stops the timer."""
        self.add(5, "a")
        self.timeouts.clear()
        self.assertEqual((len(self.timeouts), self.clock.getDelayedCalls()), (0, []))
        self.clock.advance(10)
        self.assertEqual(self.expired, [])

    def test_added_while_expiring(self) -> None:
        """An item added by the expiry callback waits for its own deadline."""
        def expire(item: str) -> None:
            self.expire(item)
            if item == "a":
                self.add(5, "b")
        self.timeouts = Timeouts(self.clock, self.live, expire)
        self.add(1, "a")
        self.clock.advance(1)
        self.assertEqual(self.expired, [("a", 1.0)])
        self.clock.advance(4.9)
        self.assertEqual(len(self.expired), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [("a", 1.0), ("b", 6.0)])

    def test_failing_expiry(self) -> None:
        """An expiry callback that raises is logged, and the other items still expire, at the same deadline and later ones."""
        def expire(item: str) -> None:
            self.expire(item)
            if item == "bad":
                raise ZeroDivisionError("the owner's bug")
        self.timeouts = Timeouts(self.clock, self.live, expire)
        self.add(1, "bad")
        self.add(1, "same deadline")
        self.add(3, "later")
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.expired, [("bad", 1.0), ("same deadline", 1.0)])
        self.clock.advance(2)
        self.assertEqual(self.expired, [("bad", 1.0), ("same deadline", 1.0), ("later", 3.0)])
