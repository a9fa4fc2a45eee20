# ngx_http_opamp_module: build, run and test on Debian bookworm.
#
#   make run    install what is missing, build, start Redis and nginx with
#               examples/nginx.conf (OpAMP on 127.0.0.1:4320/v1/opamp)
#   make stop   stop what make run started
#   make test   install, build and run every test
#   make test-interop   only the tests with real OpAMP clients
#   make bench  run the benchmarks (bench/)
#   make mutate break documented behaviours on purpose, one at a time, and
#               report which ones the tests catch (t/mutate/, not in CI)
#   make fuzz   run every libFuzzer target of t/fuzz/ for FUZZ_TIME seconds
#   make test-asan  the integration tests against an ASan + UBSan build
#   make test-debug the integration tests with error_log ... debug (CI)

SHELL      := /bin/bash
TOP        := $(CURDIR)
BUILD      := $(TOP)/build
NGX_SRC    := $(BUILD)/nginx-src
MODULE     := $(BUILD)/ngx_http_opamp_module.so
RUN        := $(BUILD)/run
NGINX      ?= /usr/sbin/nginx
REDIS_PORT ?= 6379

DEBS := nginx nginx-dev redis-server redis-tools libhiredis-dev \
        libprotobuf-c-dev protobuf-c-compiler protobuf-compiler zlib1g-dev \
        libjansson-dev libssl-dev openssl \
        libprotocol-websocket-perl libnginx-mod-nchan gcc make python3-venv \
        prometheus chromium

SOURCES := config ngx_http_opamp_module.c $(wildcard src/*.c src/*.h) \
           $(wildcard src/admin/*.c src/admin/*.h) \
           $(wildcard src/redis/*.c src/redis/*.h) \
           $(wildcard proto/opamp/v1/*.c proto/opamp/v1/*.h)

.PHONY: all deps build build-static proto run stop test test-valgrind unit \
        bench mutate clean fuzz fuzz-build fuzz-regress fuzz-short fuzz-deps \
        test-asan test-debug interop-tools interop-go interop-python \
        test-interop

all: build

deps: $(BUILD)/.deps

$(BUILD)/.deps: Makefile
	@missing=""; for p in $(DEBS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(BUILD) && touch $@

# protoc-c output is committed; this target makes it again from the .proto
proto:
	cd proto && protoc-c --c_out=. -I. opamp/v1/anyvalue.proto \
	    opamp/v1/opamp.proto

src/ngx_http_opamp_lua.h: $(wildcard src/lua/*.lua src/lua/lib/*.lua) src/lua/embed.sh src/lua/expand.sh
	sh src/lua/embed.sh src/lua/*.lua > $@.tmp && mv $@.tmp $@

src/ngx_http_opamp_dashboard.h: src/dashboard/index.html \
        src/dashboard/dashboard.css src/dashboard/dashboard.js \
        src/dashboard/embed.sh
	sh src/dashboard/embed.sh > $@.tmp && mv $@.tmp $@

$(NGX_SRC)/objs/Makefile: $(BUILD)/.deps config
	rm -rf $(NGX_SRC) && mkdir -p $(BUILD)
	cp -r /usr/share/nginx/src $(NGX_SRC)
	cd $(NGX_SRC) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --add-dynamic-module=$(TOP) >$(BUILD)/configure.log 2>&1 \
	    || { tail -30 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(NGX_SRC)/objs/Makefile src/ngx_http_opamp_lua.h \
        src/ngx_http_opamp_dashboard.h $(SOURCES)
	$(MAKE) -C $(NGX_SRC) -f objs/Makefile modules
	@# a new file, then rename: a running nginx still maps the old one
	cp $(NGX_SRC)/objs/ngx_http_opamp_module.so $@.tmp && mv -f $@.tmp $@

build: $(MODULE)

# nginx with the module compiled in, from a full nginx source tree:
#   make build-static NGINX_SRC=/path/to/nginx-1.x.y
build-static: $(BUILD)/.deps
	@test -n "$(NGINX_SRC)" || { echo "set NGINX_SRC=/path/to/nginx"; exit 1; }
	rm -rf $(BUILD)/static && mkdir -p $(BUILD)/static
	cp -r $(NGINX_SRC)/. $(BUILD)/static/
	cd $(BUILD)/static && \
	    if [ -x auto/configure ] && [ ! -x configure ]; then \
	        ln -s auto/configure configure; fi && \
	    ./configure --with-compat --add-module=$(TOP) \
	        >$(BUILD)/static/configure.log 2>&1 \
	    || { tail -30 $(BUILD)/static/configure.log; exit 1; }
	$(MAKE) -C $(BUILD)/static -f objs/Makefile
	@echo "nginx with the module built in: $(BUILD)/static/objs/nginx"

run: build
	@mkdir -p $(RUN)/logs $(RUN)/tmp
	@if redis-cli -h 127.0.0.1 -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	    echo "using the Redis already on 127.0.0.1:$(REDIS_PORT)"; \
	else \
	    redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --daemonize yes \
	        --pidfile $(RUN)/redis.pid --logfile $(RUN)/logs/redis.log \
	        --dir $(RUN) --save "" --appendonly yes \
	        --appendfsync everysec; \
	    for i in $$(seq 50); do redis-cli -p $(REDIS_PORT) ping \
	        >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi
	@# operator data (configs, groups, offers) lives only in Redis
	@c="redis-cli -p $(REDIS_PORT) config get"; \
	echo "Redis persistence: appendonly $$($$c appendonly | tail -1)," \
	    "appendfsync $$($$c appendfsync | tail -1)," \
	    "save '$$($$c save | tail -1)', in $$($$c dir | tail -1)" \
	    "(docs/operations.md, Running Redis in production)"
	@if [ -f $(RUN)/logs/nginx.pid ] && kill -0 $$(cat $(RUN)/logs/nginx.pid) 2>/dev/null; then \
	    $(NGINX) -p $(RUN)/ -c $(TOP)/examples/nginx.conf \
	        -g "load_module $(MODULE);" -s reload; \
	else \
	    $(NGINX) -p $(RUN)/ -c $(TOP)/examples/nginx.conf \
	        -g "load_module $(MODULE);"; \
	fi
	@echo
	@echo "OpAMP server: ws://127.0.0.1:4320/v1/opamp (WebSocket)"
	@echo "              http://127.0.0.1:4320/v1/opamp (plain HTTP POST)"
	@echo "Admin API:    curl -s http://127.0.0.1:4320/opamp-admin/agents"
	@echo "Dashboard:    http://127.0.0.1:4320/opamp-dashboard/"
	@echo "Metrics:      curl -s http://127.0.0.1:4320/metrics"
	@echo "Agent state:  redis-cli -p $(REDIS_PORT) --scan --pattern 'opamp:agent:*'"
	@echo "Logs:         $(RUN)/logs/error.log"
	@echo "Stop:         make stop"

stop:
	-@[ -f $(RUN)/logs/nginx.pid ] && kill $$(cat $(RUN)/logs/nginx.pid) 2>/dev/null; true
	-@[ -f $(RUN)/redis.pid ] && kill $$(cat $(RUN)/redis.pid) 2>/dev/null; true
	@echo stopped

$(BUILD)/unit_tests: t/unit/*.c src/ngx_http_opamp_wsframe.c \
        src/ngx_http_opamp_uid.c src/*.h
	@mkdir -p $(BUILD)
	cc -O1 -g -Wall -Wextra -Werror -Isrc -o $@ t/unit/*.c \
	    src/ngx_http_opamp_wsframe.c src/ngx_http_opamp_uid.c

unit: $(BUILD)/unit_tests
	$(BUILD)/unit_tests

t/node/node_modules: t/node/package.json
	cd t/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# --- real OpAMP clients for t/9x-interop-*.t, pinned, under build/interop --
#
# Go modules come from the Go module proxy into the default GOMODCACHE;
# each program is rebuilt only when its pins (go.mod, go.sum, manifest)
# or sources change.  Without Go $(GO_MIN) or newer, or without access to
# the proxy (or PyPI), the step says what it skipped and leaves a note in
# build/interop/skip-go (skip-python) that the tests print when they skip.

INTEROP     := $(BUILD)/interop
INTEROP_BIN := $(INTEROP)/bin
GO          ?= go
GO_MIN_MINOR := 25
GO_MIN      := 1.$(GO_MIN_MINOR)
PYTHON      ?= python3
SUPERVISOR_PKG := github.com/open-telemetry/opentelemetry-collector-contrib/cmd/opampsupervisor

interop-tools: interop-go interop-python

interop-go:
	@mkdir -p $(INTEROP_BIN); rm -f $(INTEROP)/skip-go; \
	v=$$($(GO) version 2>/dev/null | sed -n 's/.*go\([0-9]*\)\.\([0-9]*\).*/\1 \2/p'); \
	set -- $$v; \
	if [ -z "$$v" ] || { [ "$$1" -eq 1 ] && [ "$$2" -lt $(GO_MIN_MINOR) ]; }; then \
	    echo "Go $(GO_MIN) or newer is needed (found: $${v:-none})" \
	        > $(INTEROP)/skip-go; \
	    echo "SKIPPED interop Go clients: $$(cat $(INTEROP)/skip-go);" \
	        "install Go and run make test-interop"; exit 0; fi; \
	for d in opampgo supervisor collector; do \
	    (cd t/interop/$$d && $(GO) mod download) >$(INTEROP)/download.log 2>&1 \
	    || { echo "no access to the Go module proxy (go mod download in" \
	            "t/interop/$$d failed: $$(tail -1 $(INTEROP)/download.log))" \
	            > $(INTEROP)/skip-go; \
	         echo "SKIPPED interop Go clients: $$(cat $(INTEROP)/skip-go)"; \
	         exit 0; }; done; \
	$(MAKE) --no-print-directory $(INTEROP_BIN)/opampgo-agent \
	    $(INTEROP_BIN)/opampsupervisor $(INTEROP_BIN)/otelcol

$(INTEROP_BIN)/opampgo-agent: t/interop/opampgo/go.mod \
        t/interop/opampgo/go.sum t/interop/opampgo/main.go
	cd t/interop/opampgo && $(GO) build -o $@ .

# `go install path@version` refuses contrib's supervisor (its go.mod has
# replace directives): built as a tool of a pinned module of ours instead
$(INTEROP_BIN)/opampsupervisor: t/interop/supervisor/go.mod \
        t/interop/supervisor/go.sum
	cd t/interop/supervisor && $(GO) build -o $@ $(SUPERVISOR_PKG)

$(INTEROP_BIN)/builder: t/interop/collector/go.mod t/interop/collector/go.sum
	cd t/interop/collector && \
	    $(GO) build -o $@ go.opentelemetry.io/collector/cmd/builder

$(INTEROP_BIN)/otelcol: t/interop/collector/manifest.yaml \
        $(INTEROP_BIN)/builder
	$(INTEROP_BIN)/builder --config t/interop/collector/manifest.yaml \
	    --output-path $(INTEROP)/otelcol-src >$(INTEROP)/builder.log 2>&1 \
	    || { tail -30 $(INTEROP)/builder.log; exit 1; }
	cp $(INTEROP)/otelcol-src/otelcol-opamp-interop $@.tmp && mv $@.tmp $@

interop-python:
	@mkdir -p $(INTEROP); rm -f $(INTEROP)/skip-python; \
	if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	    echo "python3 with venv and ensurepip is needed (python3-venv)" \
	        > $(INTEROP)/skip-python; \
	    echo "SKIPPED interop Python client: $$(cat $(INTEROP)/skip-python)"; \
	    exit 0; fi; \
	$(MAKE) --no-print-directory $(INTEROP)/venv/.installed \
	    || { echo "no access to PyPI (pip install failed, see" \
	              "$(INTEROP)/pip.log)" > $(INTEROP)/skip-python; \
	         echo "SKIPPED interop Python client: $$(cat $(INTEROP)/skip-python)"; }

$(INTEROP)/venv/.installed: t/interop/python/requirements.txt
	rm -rf $(INTEROP)/venv
	$(PYTHON) -m venv $(INTEROP)/venv
	$(INTEROP)/venv/bin/pip install -q --disable-pip-version-check \
	    -r t/interop/python/requirements.txt >$(INTEROP)/pip.log 2>&1
	touch $@

INTEROP_TESTS := t/40-interop-node.t t/69-supervisor-sequence.t \
                 $(wildcard t/9*-interop-*.t)

test: build unit fuzz-short t/node/node_modules interop-tools
	NGINX_MODULE=$(MODULE) prove -I t/lib t/*.t

test-interop: build t/node/node_modules interop-tools
	NGINX_MODULE=$(MODULE) prove -I t/lib $(INTEROP_TESTS)

# the same tests with error_log ... debug: every debug line the module and
# nginx write about the module's events and connections is exercised
test-debug: build t/node/node_modules interop-tools
	TEST_NGINX_DEBUG=1 NGINX_MODULE=$(MODULE) prove -I t/lib t/*.t

# the same tests with every nginx process under valgrind's memcheck
test-valgrind: build unit t/node/node_modules interop-tools
	@command -v valgrind >/dev/null || apt-get install -y -qq valgrind
	TEST_NGINX_VALGRIND=1 NGINX_MODULE=$(MODULE) prove -I t/lib t/*.t

# --- the integration tests against an AddressSanitizer build -----------
#
# The module (not nginx) is built with gcc's -fsanitize=address,undefined
# and the fault injection hooks (-DNGX_HTTP_OPAMP_FAULTS=1), in its own
# configured nginx source tree; the harness preloads libasan into nginx
# (TEST_NGINX_ASAN=1) and fails a test file on any sanitizer report.

ASAN_DIR    := $(BUILD)/asan
ASAN_SRC    := $(ASAN_DIR)/nginx-src
ASAN_MODULE := $(ASAN_DIR)/ngx_http_opamp_module.so
ASAN_FLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_TESTS  ?= t/*.t

$(ASAN_SRC)/objs/Makefile: $(BUILD)/.deps config
	rm -rf $(ASAN_SRC) && mkdir -p $(ASAN_DIR)
	cp -r /usr/share/nginx/src $(ASAN_SRC)
	cd $(ASAN_SRC) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --with-cc-opt="$(ASAN_FLAGS) -DNGX_HTTP_OPAMP_FAULTS=1" \
	    --with-ld-opt="$(ASAN_FLAGS)" \
	    --add-dynamic-module=$(TOP) >$(ASAN_DIR)/configure.log 2>&1 \
	    || { tail -30 $(ASAN_DIR)/configure.log; exit 1; }

$(ASAN_MODULE): $(ASAN_SRC)/objs/Makefile src/ngx_http_opamp_lua.h \
        src/ngx_http_opamp_dashboard.h $(SOURCES)
	$(MAKE) -C $(ASAN_SRC) -f objs/Makefile modules
	cp $(ASAN_SRC)/objs/ngx_http_opamp_module.so $@.tmp && mv -f $@.tmp $@

test-asan: $(ASAN_MODULE) unit t/node/node_modules interop-tools
	TEST_NGINX_ASAN=1 NGINX_MODULE=$(ASAN_MODULE) prove -I t/lib $(ASAN_TESTS)

# --- fuzzing (t/fuzz/README.md) ----------------------------------------
#
# Each target compiles the module's own parser files with clang's
# libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer, against
# nginx's headers as configured by `make build` and t/fuzz/shim.c for the
# few nginx core functions they call (nginx itself is not linked).

FUZZ_TARGETS := wsframe a2s unpack json gzip selector
FUZZ_TIME    ?= 60
FUZZ_SHORT   ?= 10
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_CC      ?= clang
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer \
                -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=all -Wall -Wno-unused-parameter \
                -Werror -Isrc -Iproto -It/fuzz \
                -I$(NGX_SRC)/src/core -I$(NGX_SRC)/src/event \
                -I$(NGX_SRC)/src/event/modules -I$(NGX_SRC)/src/os/unix \
                -I$(NGX_SRC)/objs -I$(NGX_SRC)/src/http \
                -I$(NGX_SRC)/src/http/modules -I$(NGX_SRC)/src/http/v2

FUZZ_PROTO := src/ngx_http_opamp_proto.c src/ngx_http_opamp_utf8.c \
              src/ngx_http_opamp_json.c proto/opamp/v1/anyvalue.pb-c.c \
              proto/opamp/v1/opamp.pb-c.c
FUZZ_SRCS_wsframe  := src/ngx_http_opamp_wsframe.c src/ngx_http_opamp_utf8.c
FUZZ_SRCS_a2s      := $(FUZZ_PROTO)
FUZZ_SRCS_unpack   := $(FUZZ_PROTO)
FUZZ_SRCS_json     := $(FUZZ_PROTO)
FUZZ_SRCS_gzip     := src/ngx_http_opamp_gzip.c
FUZZ_SRCS_selector := src/ngx_http_opamp_selector.c
FUZZ_LIBS := -ljansson -lprotobuf-c -lz

fuzz-deps: $(FUZZ_DIR)/.deps

$(FUZZ_DIR)/.deps: $(BUILD)/.deps
	@missing=""; for p in clang libclang-rt-14-dev; do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(FUZZ_DIR) && touch $@

$(FUZZ_DIR)/fuzz_%: t/fuzz/fuzz_%.c t/fuzz/shim.c t/fuzz/shim.h \
        $(FUZZ_DIR)/.deps $(NGX_SRC)/objs/Makefile $(wildcard src/*.[ch]) \
        $(wildcard proto/opamp/v1/*.[ch])
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< t/fuzz/shim.c $(FUZZ_SRCS_$*) \
	    $(FUZZ_LIBS)

fuzz-build: $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS))

# every committed input once (seeds and the inputs of crashes fixed)
fuzz-regress: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	    t/fuzz/run.sh $(FUZZ_DIR) $$t 0 || exit 1; done

# each target briefly, as `make test` does
fuzz-short: fuzz-regress
	@for t in $(FUZZ_TARGETS); do \
	    t/fuzz/run.sh $(FUZZ_DIR) $$t $(FUZZ_SHORT) || exit 1; done

fuzz: fuzz-regress
	@for t in $(FUZZ_TARGETS); do \
	    t/fuzz/run.sh $(FUZZ_DIR) $$t $(FUZZ_TIME) || exit 1; done

bench: build
	$(MAKE) -C bench
	NGINX_MODULE=$(MODULE) bench/run.sh

# every mutation of t/mutate/catalogue on a copy of the tree under
# build/mutate; MUTATE="name ..." runs only those
mutate: build t/node/node_modules interop-tools
	t/mutate/run $(MUTATE)

clean:
	rm -rf $(BUILD)
