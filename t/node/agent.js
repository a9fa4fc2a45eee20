// A third-party OpAMP agent for t/40-interop-node.t: Elastic's Node.js
// client, @elastic/opamp-client-node (plain HTTP transport), against the
// module.
//
//   node agent.js <endpoint> [exchanges] [seconds]
//
// Runs until the client has had at least <exchanges> (default 3, at least
// 2) successful exchanges with the server, or gives up after <seconds>
// (default 20) and exits 1.  Prints:
//
//   config <name> <JSON body>   each file of a remote config it receives
//                               (it then reports APPLIED)
//   exchanges <n>               how many exchanges it had
//   uid <32 hex digits>         its instance uid at the end
//   done
//
// The client (0.5.0) has no API for ComponentHealth, so the health this
// agent reports (healthy, status "ok") is added to the AgentToServer the
// client itself encoded, with the client's own protobuf schema: whenever
// the client sends its full state (first message, or the server asked for
// it with ReportFullState), health goes with it, and the ReportsHealth
// capability is declared in every message.  Everything else on the wire
// is the client's.

'use strict';

const path = require('path');
const {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
    DIAG_CH_SEND_SUCCESS,
    DIAG_CH_SEND_FAIL,
} = require('@elastic/opamp-client-node');
const diagnostics = require('diagnostics_channel');

// the client's own copies of its protobuf runtime and generated schema
const clientMain = require.resolve('@elastic/opamp-client-node');
const pbRuntime = require(require.resolve('@bufbuild/protobuf',
                                          {paths: [path.dirname(clientMain)]}));
const pb = require(path.join(path.dirname(clientMain), 'generated',
                             'opamp_pb.js'));

const endpoint = process.argv[2];
const wantExchanges = Math.max(2, Number(process.argv[3] || 3));
const seconds = Number(process.argv[4] || 20);

if (!endpoint) {
    console.error('usage: node agent.js <endpoint> [exchanges] [seconds]');
    process.exit(2);
}

const REPORTS_HEALTH = BigInt(AgentCapabilities.AgentCapabilities_ReportsHealth);
const startNanos = BigInt(Date.now()) * 1000000n;

let exchanges = 0;
let failures = 0;
let finishing = false;

const client = createOpAMPClient({
    endpoint,
    heartbeatIntervalSeconds: 0.3,
    diagEnabled: true,
    capabilities:
        BigInt(AgentCapabilities.AgentCapabilities_AcceptsRemoteConfig) |
        BigInt(AgentCapabilities.AgentCapabilities_ReportsRemoteConfig),
    onMessage: ({remoteConfig}) => {
        if (!remoteConfig) {
            return;
        }
        const map = (remoteConfig.config && remoteConfig.config.configMap) || {};
        for (const name of Object.keys(map).sort()) {
            const body = Buffer.from(map[name].body).toString('utf8');
            console.log(`config ${name} ${JSON.stringify(body)}`);
        }
        client.setRemoteConfigStatus({
            status: RemoteConfigStatuses.RemoteConfigStatuses_APPLIED,
            lastRemoteConfigHash: remoteConfig.configHash,
        });
    },
});

// the health shim (see the top of this file)
const http = client._httpClient;
const request = http.request.bind(http);
http.request = (opts) => {
    const a2s = pbRuntime.fromBinary(pb.AgentToServerSchema, opts.body);
    a2s.capabilities = BigInt(a2s.capabilities) | REPORTS_HEALTH;
    if (a2s.agentDescription) {
        a2s.health = pbRuntime.create(pb.ComponentHealthSchema, {
            healthy: true,
            status: 'ok',
            startTimeUnixNano: startNanos,
            statusTimeUnixNano: BigInt(Date.now()) * 1000000n,
        });
    }
    return request({
        ...opts,
        body: pbRuntime.toBinary(pb.AgentToServerSchema, a2s),
    });
};

function finish(code, why) {
    if (finishing) {
        return;
    }
    finishing = true;
    if (why) {
        console.log(why);
    }
    console.log(`exchanges ${exchanges}`);
    console.log(`uid ${Buffer.from(client.getInstanceUid()).toString('hex')}`);
    client.shutdown().finally(() => {
        console.log('done');
        process.exit(code);
    });
}

diagnostics.subscribe(DIAG_CH_SEND_SUCCESS, () => {
    exchanges++;
    if (exchanges >= wantExchanges) {
        setImmediate(() => finish(0));
    }
});

diagnostics.subscribe(DIAG_CH_SEND_FAIL, (ev) => {
    failures++;
    console.log(`send failed: ${ev && ev.err}`);
});

client.setAgentDescription({
    identifyingAttributes: {
        'service.name': 'opamp-node-interop',
        'service.version': '1.0.0',
    },
    nonIdentifyingAttributes: {'host.name': 'interop-host'},
});

client.start();

setTimeout(() => {
    finish(1, `gave up after ${seconds}s: ${exchanges} exchanges, ` +
              `${failures} failures`);
}, seconds * 1000).unref();

// keep the process alive while the client's timers are unref()ed
const keepAlive = setInterval(() => {}, 1000);
process.on('exit', () => clearInterval(keepAlive));
