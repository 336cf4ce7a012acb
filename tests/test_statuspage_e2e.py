"""
End-to-end test of the live status page (C{GET /debug/rpc}): a real
C{twistd -n rpcd} with figures kept, some calls, then headless Chromium
(Debian's C{chromium}) loads the page, runs its script (which fetches
C{/debug/rpc.json} and redraws), and the test reads the rendered DOM.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import RPCError
from tests.daemon import Daemon, run, temp_dir
from tests.test_metrics_e2e import CONFIG, start_daemon
from tests.tools import require_tool

#: Flags that keep Chromium from reaching anything but the page.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


async def render(test: TestCase, url: str, *extra: str) -> str:
    """
    Load a page in headless Chromium and let its scripts run (up to 5 s of
    the page's virtual time).

    @return: the DOM after the scripts ran, as HTML (C{--dump-dom}).
    """
    chromium = require_tool("chromium", "to render the status page (apt-get install chromium)")
    profile = Path(temp_dir(test)) / "chromium-profile"
    code, out, err = await run(test, [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--virtual-time-budget=5000", *extra, "--dump-dom", url])
    test.assertEqual(code, 0, err[-3000:])
    return out


def cell(dom: str, method: str, column: str) -> str:
    """
    @return: the text of a method row's cell of this class.
    """
    row = re.search(rf'<tr data-method="{re.escape(method)}">(.*?)</tr>', dom)
    assert row is not None, f"no row for {method} in {dom[:3000]}"
    found = re.search(rf'<td class="n {column}[^"]*">([^<]*)</td>', row.group(1))
    assert found is not None, row.group(1)
    return found.group(1)


class StatusPageE2ETests(TestCase):
    """The status page as a browser renders it."""

    timeout = 120

    async def test_rendered_after_calls(self) -> None:
        """After 4 good calls and 1 failing one, Chromium shows the counts, errors, percentiles, the open native connection, and the script's refresh."""
        daemon = await start_daemon(self, CONFIG + "[services.Who]\nclass = \"tests.whoservice:Who\"\n")
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        for n in range(4):
            await client.call("Arith.Multiply", {"A": n, "B": n})
        with self.assertRaises(RPCError):
            await client.call("Who.Down", None)
        dom = await render(self, f"http://127.0.0.1:{daemon.port}/debug/rpc")
        self.assertRegex(dom, r'<p id="updated">live: updated [^<]+</p>')  # the script fetched the JSON
        self.assertIn('<tr data-protocol="native"><td>native</td><td class="n">1</td></tr>', dom)
        multiply = re.search(r'<tr data-method="Arith.Multiply">.*?</tr>', dom)
        assert multiply is not None
        self.assertIn('<td class="n">4</td>', multiply.group(0))
        self.assertEqual(cell(dom, "Arith.Multiply", "errors"), "0")
        self.assertRegex(cell(dom, "Arith.Multiply", "p50"), r"^\d+\.\d+ ms$")
        self.assertEqual(cell(dom, "Who.Down", "errors"), "1")
        self.assertEqual(cell(dom, "Who.Name", "p99"), "-")

    async def test_switched_off(self) -> None:
        """With debug_page = false, Chromium gets the 404 text, not the page."""
        daemon: Daemon = await start_daemon(self, CONFIG.replace("[http]\n", "[http]\ndebug_page = false\n"))
        dom = await render(self, f"http://127.0.0.1:{daemon.port}/debug/rpc")
        self.assertIn("404 page not found", dom)
        self.assertNotIn("Services", dom)
