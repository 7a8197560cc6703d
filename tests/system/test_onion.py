"""``--listen onion:…`` without the Tor network: the string becomes txtorcon's onion endpoint,
and tor's control protocol is driven as txtorcon's own tests drive it (``FakeControlProtocol``):
the onion service is added with ADD_ONION, pointed at a loopback port that sandboxd's own
protocol serves, and ``listen()`` completes once tor reports the descriptor uploaded."""

from __future__ import annotations

import json

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest
from txtorcon import TorConfig
from txtorcon.endpoints import TCPHiddenServiceEndpoint
from txtorcon.testutil import FakeControlProtocol

from sandboxd.jobs.submit import Requests
from sandboxd.limits import LimitPolicy
from sandboxd.service.listeners import endpoint_for
from sandboxd.wire.connection import ConnectionFactory


class OnionStringTests(unittest.TestCase):
    def test_onion_string_becomes_an_onion_endpoint_on_a_running_tor(self):
        fake = MemoryReactor()  # the control-port connection is only recorded, never made
        ep = endpoint_for(fake, "onion:80:controlPort=9051:version=3")
        self.assertIsInstance(ep, TCPHiddenServiceEndpoint)
        self.assertEqual(ep.public_port, 80)
        self.assertEqual(ep.version, 3)
        host, port = fake.tcpClients[0][:2]
        self.assertEqual((host, port), ("127.0.0.1", 9051))

    def test_onion_string_with_a_control_socket_and_a_local_port(self):
        fake = MemoryReactor()
        ep = endpoint_for(fake, "onion:443:controlPort=/run/tor/control:localPort=8443")
        self.assertEqual((ep.public_port, ep.local_port), (443, 8443))
        self.assertEqual(fake.unixClients[0][0], "/run/tor/control")


class _Lines(protocol.Protocol):
    def connectionMade(self) -> None:
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.transport.write(b"{not json\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\n" in self.received and not self.done.called:
            self.done.callback(self.received)


class OnionServiceTests(unittest.TestCase):
    """As txtorcon's test/test_endpoints.py sets up a fake bootstrapped tor."""

    def setUp(self) -> defer.Deferred:
        self.tor = FakeControlProtocol([])
        self.tor.answers.append(
            "config/names=\nHiddenServiceOptions Virtual\nControlPort LineList\n"
            "SOCKSPort LineList")
        self.tor.answers.append("config/defaults=")
        self.tor.answers.append("HiddenServiceOptions")
        self.tor.answers.append({"ControlPort": "37337"})
        self.tor.answers.append({"SOCKSPort": "9050"})
        self.tor.answers.append({"onions/detached": ""})
        self.tor.answers.append({"onions/current": ""})
        self.config = TorConfig(self.tor)
        return self.config.post_bootstrap

    @defer.inlineCallbacks
    def test_onion_service_is_added_and_served_by_sandboxd(self):
        factory = ConnectionFactory(requests=Requests(None), policy=LimitPolicy(),  # type: ignore[arg-type]
                                    idle_timeout=None)
        ep = TCPHiddenServiceEndpoint(reactor, self.config, 80, ephemeral=True, version=3,
                                      private_key="f" * 32)
        listening = ep.listen(factory)

        command, answer = self.tor.commands[0]
        self.assertTrue(command.startswith("ADD_ONION ED25519-V3:"), command)
        mapping = next(p for p in command.split() if p.startswith("Port="))
        public, target = mapping[len("Port="):].split(",")
        self.assertEqual(public, "80")
        host, local_port = target.split(":")
        self.assertEqual(host, "127.0.0.1")  # the local side is never reachable off the host
        answer.callback("ServiceID=sandboxdtest\nPrivateKey=deadbeef")
        self.tor.events["HS_DESC"]("UPLOAD sandboxdtest basic somedirauth REASON=testing")
        self.tor.events["HS_DESC"]("UPLOADED sandboxdtest basic somedirauth REASON=testing")
        port = yield listening
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().onion_uri, "sandboxdtest.onion")
        self.assertEqual(port.getHost().onion_port, 80)

        # What tor would forward arrives at sandboxd's protocol: a bad line, a bad_request.
        client = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(local_port)), _Lines())
        line = yield client.done
        client.transport.loseConnection()
        for _ in range(200):  # the server's side of it closes too, then the test is clean
            if not factory.connections:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        event = json.loads(line.split(b"\n")[0])
        self.assertEqual(event["status"], "bad_request")
        self.assertTrue(event["done"])


def test_daemon_with_an_unreachable_tor_stops_with_status_1():
    """The whole way: twistd sandboxd --listen onion:…; the control port refuses, so the
    onion listener fails; the daemon says so, removes its boxes and exits 1 (systemd's
    Restart=on-failure then retries)."""
    import subprocess

    from tests.harness import HANG, Daemon
    from tests.system.test_listeners import first_driver, free_port
    from tests.system.test_operations import leftovers

    d = Daemon(first_driver(), listen=[f"onion:80:controlPort={free_port()}"])
    try:
        done = subprocess.run(d.argv, cwd=d.dir, capture_output=True, timeout=HANG)
        log = d.log()
        assert done.returncode == 1, log[-2000:]
        # One line says which listener and why; no traceback.
        assert "cannot listen on onion:80:controlPort=" in log and "; stopping" in log
        assert "Connection refused" in log and "Traceback" not in log
        assert "every box removed" in log
        assert leftovers(d) == {"processes": [], "mounts": [], "cgroups": []}
    finally:
        d.cleanup()
