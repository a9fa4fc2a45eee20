// A third-party OpAMP agent for t/40-interop-node.t: Elastic's Node.js
// client (plain HTTP transport) against the module.
//
//   node agent.js <endpoint> <seconds>
//
// Prints "uid <hex>" once known, "config <name> <body>" for each file of a
// remote config it receives (and reports APPLIED), then "done".

'use strict';

const {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
} = require('@elastic/opamp-client-node');

const endpoint = process.argv[2];
const seconds = Number(process.argv[3] || 5);

const client = createOpAMPClient({
    endpoint,
    heartbeatIntervalSeconds: 0.3,
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

client.setAgentDescription({
    identifyingAttributes: {
        'service.name': 'opamp-node-interop',
        'service.version': '1.0.0',
    },
    nonIdentifyingAttributes: {'host.name': 'interop-host'},
});

client.start();
console.log(`uid ${Buffer.from(client.getInstanceUid()).toString('hex')}`);

setTimeout(async () => {
    await client.shutdown();
    console.log('done');
    process.exit(0);
}, seconds * 1000);
