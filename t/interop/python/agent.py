"""A test agent on the OpenTelemetry Python OpAMP client
(opentelemetry-opamp-client on PyPI, plain HTTP; version pinned in
requirements.txt), for t/92-interop-python.t.  It reports its description,
applies the remote configs it gets (JSON files become its effective
config) and acknowledges them, as the client's documentation shows.  The
test finds it in Redis by its service.name (the client makes its instance
uid itself) and reads what happened on stdout, one event per line:

    connected                 the first exchange succeeded
    config <hash hex> <name> <body as JSON string>
    applied <hash hex>
    error <message>           a ServerErrorResponse
    exchange <seq> <flags> <fields>   every exchange: the sequence_num
                              and status fields the client sent (d:
                              description, e: effective config, r: remote
                              config status, x: disconnect) and the flags of
                              the reply (1: ReportFullState)

and stops it with "stop" on stdin (the client sends AgentDisconnect).

    python agent.py <endpoint> <service.name> <heartbeat seconds>
"""

import json
import sys
import threading

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2

lock = threading.Lock()


def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Callbacks(OpAMPCallbacks):
    def __init__(self):
        self.connected = False

    def on_connect(self, agent, client):
        if not self.connected:
            self.connected = True
            say("connected")

    def on_error(self, agent, client, error_response):
        say("error " + error_response.error_message)

    def on_message(self, agent, client, message):
        rc = message.remote_config
        if rc is None:
            return
        h = rc.config_hash.hex()
        effective = {}
        for name, f in sorted(rc.config.config_map.items()):
            body = f.body.decode("utf-8")
            say("config %s %s %s" % (h, name, json.dumps(body)))
            effective[name] = json.loads(body)
        client.update_effective_config(effective, "application/json")
        status = client.update_remote_config_status(
            remote_config_hash=rc.config_hash,
            status=opamp_pb2.RemoteConfigStatuses_APPLIED,
        )
        if status is not None:
            agent.send(client.build_remote_config_status_response_message(
                status))
        say("applied " + h)


def main():
    endpoint, name, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = OpAMPClient(
        endpoint=endpoint,
        agent_identifying_attributes={"service.name": name,
                                      "service.version": "2.0.0"},
        agent_non_identifying_attributes={"host.name": "python-host"},
    )
    # every exchange as the client makes it, seen from outside the client
    send = client.send

    def traced_send(data):
        sent = opamp_pb2.AgentToServer.FromString(data)
        reply = send(data)
        fields = "".join(c for c, f in (("d", "agent_description"),
                                        ("e", "effective_config"),
                                        ("r", "remote_config_status"),
                                        ("x", "agent_disconnect"))
                         if sent.HasField(f)) or "-"
        say("exchange %d %d %s" % (sent.sequence_num, reply.flags, fields))
        return reply

    client.send = traced_send
    agent = OpAMPAgent(interval=interval, callbacks=Callbacks(),
                       client=client)
    agent.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    agent.stop(timeout=5)
    say("stopped")


if __name__ == "__main__":
    main()
