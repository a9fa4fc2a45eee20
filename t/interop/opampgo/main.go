// A test agent on opamp-go's own client (the library the OpAMP supervisor
// is built on), for t/91-interop-opampgo.t.  It is an ordinary agent of
// the released library: it reports a description, health, its effective
// config and available components, applies the remote configs it gets,
// and obeys the restart command.  The test drives it over stdin and reads
// what happened on stdout, one event per line.
//
//	opampgo-agent -url ws://127.0.0.1:PORT/v1/opamp -uid HEX32 [flags]
//
// stdout:
//
//	started <uid hex>             the client started
//	connected                     OnConnect
//	config <hash hex> <n> <name> <body %q> ...   a remote config, then
//	applied <hash hex>            or
//	failed <hash hex>             what the agent reported for it
//	new_uid <uid hex>             the server gave it another instance uid
//	command <type>                a ServerToAgentCommand
//	error <type> <message %q>     a ServerErrorResponse
//	stopped                       after "stop"
//
// stdin: "stop" (the client says goodbye with AgentDisconnect and the
// process exits), "unhealthy <status>" (reports health false), "exit"
// (exits at once, like a killed process).
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
)

var (
	out   = bufio.NewWriter(os.Stdout)
	outMu sync.Mutex
)

func say(format string, a ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(out, format+"\n", a...)
	out.Flush()
}

type logger struct{ verbose bool }

func (l logger) Debugf(_ context.Context, f string, a ...any) {
	if l.verbose {
		fmt.Fprintf(os.Stderr, "debug: "+f+"\n", a...)
	}
}

func (l logger) Errorf(_ context.Context, f string, a ...any) {
	fmt.Fprintf(os.Stderr, "error: "+f+"\n", a...)
}

func str(k, v string) *protobufs.KeyValue {
	return &protobufs.KeyValue{Key: k, Value: &protobufs.AnyValue{
		Value: &protobufs.AnyValue_StringValue{StringValue: v}}}
}

type agent struct {
	c         client.OpAMPClient
	mu        sync.Mutex
	effective *protobufs.AgentConfigMap
	fail      bool
	started   uint64
}

func main() {
	url := flag.String("url", "", "OpAMP endpoint, ws:// or http://")
	uidHex := flag.String("uid", "", "instance uid, 32 hex digits")
	name := flag.String("name", "opamp-go-interop", "service.name")
	hb := flag.Duration("heartbeat", 30*time.Second,
		"the agent's own heartbeat (HTTP: polling) interval")
	status := flag.String("applied", "",
		"a config hash (hex) the agent says it applied before it started")
	fail := flag.Bool("fail", false, "report FAILED for every remote config")
	verbose := flag.Bool("v", false, "the client's debug log on stderr")
	flag.Parse()

	var uid types.InstanceUid
	b, err := hex.DecodeString(*uidHex)
	if err != nil || len(b) != 16 || *url == "" {
		fmt.Fprintln(os.Stderr, "usage: opampgo-agent -url URL -uid HEX32")
		os.Exit(2)
	}
	copy(uid[:], b)

	a := &agent{fail: *fail, started: uint64(time.Now().UnixNano())}
	a.effective = &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
		"agent.yaml": {Body: []byte("receivers: {}\n"), ContentType: "text/yaml"},
	}}

	if strings.HasPrefix(*url, "ws") {
		a.c = client.NewWebSocket(logger{*verbose})
	} else {
		a.c = client.NewHTTP(logger{*verbose})
	}

	host, _ := os.Hostname()
	must(a.c.SetAgentDescription(&protobufs.AgentDescription{
		IdentifyingAttributes: []*protobufs.KeyValue{
			str("service.name", *name),
			str("service.version", "1.2.3"),
			str("service.instance.id", hex.EncodeToString(uid[:])),
		},
		NonIdentifyingAttributes: []*protobufs.KeyValue{
			str("host.name", host),
			str("os.type", "linux"),
		},
	}))
	caps := protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsRestartCommand |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsAvailableComponents
	// health and components first: SetCapabilities checks that they are
	// there for the capabilities that report them
	must(a.c.SetHealth(a.health(true, "ok")))
	must(a.c.SetAvailableComponents(components()))
	must(a.c.SetCapabilities(&caps))

	settings := types.StartSettings{
		OpAMPServerURL:    *url,
		InstanceUid:       uid,
		HeartbeatInterval: hb,
		Callbacks: types.Callbacks{
			OnConnect: func(context.Context) { say("connected") },
			OnConnectFailed: func(_ context.Context, err error) {
				fmt.Fprintf(os.Stderr, "connect failed: %v\n", err)
			},
			OnError: func(_ context.Context, e *protobufs.ServerErrorResponse) {
				say("error %s %q", e.GetType(), e.GetErrorMessage())
			},
			OnMessage:          a.onMessage,
			OnCommand:          a.onCommand,
			GetEffectiveConfig: a.getEffective,
		},
	}
	if *status != "" {
		h, err := hex.DecodeString(*status)
		must(err)
		settings.RemoteConfigStatus = &protobufs.RemoteConfigStatus{
			LastRemoteConfigHash: h,
			Status:               protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED,
		}
	}
	must(a.c.Start(context.Background(), settings))
	say("started %s", hex.EncodeToString(uid[:]))

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "stop":
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := a.c.Stop(ctx)
			cancel()
			if err != nil {
				fmt.Fprintf(os.Stderr, "stop: %v\n", err)
			}
			say("stopped")
			os.Exit(0)
		case "exit":
			os.Exit(0)
		case "unhealthy":
			must(a.c.SetHealth(a.health(false, strings.Join(f[1:], " "))))
		}
	}
	// stdin closed: the test is gone
	os.Exit(0)
}

func must(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "fatal: %v\n", err)
		os.Exit(1)
	}
}

func (a *agent) health(ok bool, status string) *protobufs.ComponentHealth {
	now := uint64(time.Now().UnixNano())
	return &protobufs.ComponentHealth{
		Healthy: ok, Status: status,
		StartTimeUnixNano: a.started, StatusTimeUnixNano: now,
		ComponentHealthMap: map[string]*protobufs.ComponentHealth{
			"pipeline:traces": {Healthy: ok, Status: status,
				StartTimeUnixNano: a.started, StatusTimeUnixNano: now},
		},
	}
}

// a small component list, with its hash as the spec asks
func components() *protobufs.AvailableComponents {
	c := &protobufs.AvailableComponents{Components: map[string]*protobufs.ComponentDetails{
		"receivers": {SubComponentMap: map[string]*protobufs.ComponentDetails{
			"otlp": {Metadata: []*protobufs.KeyValue{str("code.namespace", "otlpreceiver")}},
		}},
		"exporters": {SubComponentMap: map[string]*protobufs.ComponentDetails{
			"debug": {Metadata: []*protobufs.KeyValue{str("code.namespace", "debugexporter")}},
		}},
	}}
	h := sha256.Sum256([]byte("receivers/otlp exporters/debug"))
	c.Hash = h[:]
	return c
}

func (a *agent) getEffective(context.Context) (*protobufs.EffectiveConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return &protobufs.EffectiveConfig{ConfigMap: a.effective}, nil
}

func (a *agent) onMessage(ctx context.Context, m *types.MessageData) {
	if m.AgentIdentification != nil {
		say("new_uid %s", hex.EncodeToString(m.AgentIdentification.NewInstanceUid))
	}
	rc := m.RemoteConfig
	if rc == nil {
		return
	}
	files := rc.GetConfig().GetConfigMap()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	line := fmt.Sprintf("config %s %d", hex.EncodeToString(rc.ConfigHash), len(names))
	for _, n := range names {
		line += fmt.Sprintf(" %s %q", n, files[n].Body)
	}
	say("%s", line)

	st := &protobufs.RemoteConfigStatus{LastRemoteConfigHash: rc.ConfigHash}
	if a.fail {
		st.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED
		st.ErrorMessage = "refused by the test agent"
	} else {
		st.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED
		a.mu.Lock()
		a.effective = rc.Config
		a.mu.Unlock()
	}
	if err := a.c.SetRemoteConfigStatus(st); err != nil {
		fmt.Fprintf(os.Stderr, "SetRemoteConfigStatus: %v\n", err)
	}
	if !a.fail {
		if err := a.c.UpdateEffectiveConfig(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "UpdateEffectiveConfig: %v\n", err)
		}
		say("applied %s", hex.EncodeToString(rc.ConfigHash))
	} else {
		say("failed %s", hex.EncodeToString(rc.ConfigHash))
	}
}

// restart: the agent's own work starts again (new health start time);
// its OpAMP connection goes on
func (a *agent) onCommand(_ context.Context, c *protobufs.ServerToAgentCommand) error {
	say("command %s", c.GetType())
	if c.GetType() == protobufs.CommandType_CommandType_Restart {
		a.mu.Lock()
		a.started = uint64(time.Now().UnixNano())
		a.mu.Unlock()
		return a.c.SetHealth(a.health(true, "restarted"))
	}
	return nil
}
