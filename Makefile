# bitrix24: build, install, test and demo.
#
#   make                      build the C core for LUA_VERSION (default 5.4)
#   make LUA_VERSION=V        V is 5.1, 5.2, 5.3, 5.4 or luajit: build/V/bitrix24/core.so
#   make install PREFIX=DIR   Lua files, core.so and the commands under DIR
#                             (LuaJIT installs into the 5.1 paths): the client
#                             (make install-client) and the fake portal
#                             (make install-fake; needs luasocket and nginx
#                             with the Lua module at run time)
#   make test                 install missing Debian packages, then for every Lua
#                             of LUA_VERSIONS that is installed: build, run the specs;
#                             ends with one line "N passed, N failed", the sum
#   make test LUA_VERSION=V   the same for V alone (also when LUA_VERSION is set
#                             in the environment)
#   make test PARALLEL=0      the versions one after the other (the default
#                             runs them at the same time; see spec/run-all)
#   make test EXCLUDE=T,...   leaves out the specs tagged T (busted tags):
#                             slow (left out by default; make test-slow runs
#                             them), nginx (an nginx with the client inside),
#                             npm (node clients from the npm registry; run
#                             under Lua 5.4 only); EXCLUDE= runs every spec
#   make test-slow            the slow specs, once, under LUA_VERSION (CI: 5.4)
#   make demo                 crm.lead.contact.items.get against the fake portal,
#                             or the portal in BITRIX24_WEBHOOK_URL when set
#   make luarocks-test        luarocks test (the rockspec's test section) under
#                             LUA_VERSION, with Debian's busted made a rock first
#   make doc                  the API reference (LDoc, config.ld) in build/doc/
#   make doc-check            fails when a public function has no doc comment or
#                             LDoc warns; ends with "doc: N passed, N failed"

# Every Lua the core supports; make test runs those installed.
LUA_VERSIONS := 5.1 5.2 5.3 5.4 luajit
# Whether LUA_VERSION was chosen (command line or environment), before the
# default below makes it defined.
LUA_VERSION_GIVEN := $(filter-out undefined default,$(origin LUA_VERSION))
LUA_VERSION ?= 5.4
PREFIX ?= /usr/local

ifeq ($(filter $(LUA_VERSION),$(LUA_VERSIONS)),)
$(error LUA_VERSION must be one of $(LUA_VERSIONS), not '$(LUA_VERSION)')
endif

# LuaJIT speaks the 5.1 API and ABI: its modules live in the 5.1 paths.
ifeq ($(LUA_VERSION),luajit)
LUA_PC := luajit
LUA_ABI := 5.1
LUA := luajit
else
LUA_PC := lua$(LUA_VERSION)
LUA_ABI := $(LUA_VERSION)
LUA := lua$(LUA_VERSION)
endif

# Every interpreter and its headers, so make test can run them all.
# LuaJIT is OpenResty's luajit2, the one libnginx-mod-http-lua is built
# against; Debian's plain luajit/libluajit-5.1-dev conflict with it and
# would remove the nginx Lua module.
LUA_DEBS := lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev \
	lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev

BUILD := build/$(LUA_VERSION)
CORE := $(BUILD)/bitrix24/core.so
SRC := $(wildcard src/*.c)
HDR := $(wildcard src/*.h)

CC ?= cc
CFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Wshadow -Wconversion
LUA_CFLAGS = $(shell pkg-config --cflags $(LUA_PC))
CURL_CFLAGS = $(shell pkg-config --cflags libcurl)
CURL_LIBS = $(shell pkg-config --libs libcurl)

# Debian packages the build, the specs and the demo need.
DEB_PACKAGES := make gcc libc6-dev pkg-config libcurl4-openssl-dev lua-cjson lua-socket luarocks procps \
	lua-busted nginx-light libnginx-mod-http-lua openssl curl \
	redis-server lua-redis lua-nginx-redis faketime $(LUA_DEBS)

.PHONY: all build install install-client install-fake rock test test-one test-slow have-lua demo deps clean

all: build

build: $(CORE)

$(CORE): $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARNINGS) -fPIC -shared $(LUA_CFLAGS) $(CURL_CFLAGS) \
		$(SRC) -o $@ $(CURL_LIBS) -lpthread

install: install-client install-fake

install-client: build
	install -d $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/events \
		$(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/transport \
		$(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)/bitrix24 $(DESTDIR)$(PREFIX)/bin
	install -m 644 lua/bitrix24.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/
	install -m 644 lua/bitrix24/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/
	install -m 644 lua/bitrix24/transport/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/transport/
	install -m 644 lua/bitrix24/events/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/events/
	install -m 755 $(CORE) $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)/bitrix24/
	sed -e '1s|.*|#!/usr/bin/env $(LUA)|' \
	    -e 's|^local INSTALLED = nil$$|local INSTALLED = { prefix = "$(PREFIX)", abi = "$(LUA_ABI)" }|' \
	    bin/b24 > $(DESTDIR)$(PREFIX)/bin/b24
	chmod 755 $(DESTDIR)$(PREFIX)/bin/b24

install-fake:
	install -d $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/fake $(DESTDIR)$(PREFIX)/bin
	install -m 644 lua/bitrix24/fake/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/fake/
	install -m 755 bin/b24-fake-portal $(DESTDIR)$(PREFIX)/bin/

# The core for the bitrix24 rock (rockspecs/): luarocks passes its own
# compiler flags and where Lua's and libcurl's headers are. Always rebuilt:
# the rock may be for another Lua than the last one.
LIBFLAG ?= -shared
rock:
	@mkdir -p build/rock/bitrix24
	$(CC) $(CFLAGS) $(WARNINGS) -fPIC $(LIBFLAG) $(LUA_CFLAGS) $(CURL_CFLAGS) \
		$(SRC) -o build/rock/bitrix24/core.so $(CURL_LIBS) -lpthread

# Installs the Debian packages of $(1) that are missing, with sudo when not
# root; does nothing when all are there.
define apt_install
	@missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

# The npm spec needs node >= 20 and npm. An existing node (NodeSource's,
# nvm's, ...) is never replaced: Debian's nodejs and npm are installed only
# when there is no node at all (Debian 12's is 18: the spec then says so).
deps:
	$(call apt_install,$(DEB_PACKAGES))
	$(if $(shell command -v node),,$(call apt_install,nodejs npm))

# Every installed Lua of LUA_VERSIONS, or LUA_VERSION alone when it was
# given; spec/run-all prints each version's count, then the sum. The
# versions run at the same time: most of a version's time is spent
# waiting (rate limits, timeouts), so five take little longer than one.
PARALLEL ?= 1
# Busted tags left out. slow: the end-to-end cases at the portal's real
# rate, which CI runs once (make test-slow), not under every version.
EXCLUDE ?= slow
test: deps
	@MAKE="$(MAKE)" PARALLEL="$(PARALLEL)" EXCLUDE="$(EXCLUDE)" \
		sh spec/run-all $(if $(LUA_VERSION_GIVEN),$(LUA_VERSION),--installed $(LUA_VERSIONS))

# The npm spec tests the fake portal, which runs in nginx's own LuaJIT
# whatever Lua runs busted, against node clients: the same under every
# version, so it runs under NPM_UNDER only.
NPM_UNDER := 5.4
comma := ,
TEST_EXCLUDE = $(EXCLUDE)$(if $(filter-out $(NPM_UNDER),$(LUA_VERSION)),$(if $(EXCLUDE),$(comma))npm)

# One version: build, then the specs; the count is labelled with the
# interpreter ("lua5.3: N passed, N failed"). Used by spec/run-all.
test-one: build
	@LUA="$(LUA)" LUA_VERSION="$(LUA_VERSION)" SUMMARY_LABEL="$(LUA)" \
		sh spec/run $(if $(TEST_EXCLUDE),--exclude-tags=$(TEST_EXCLUDE))

# The slow specs alone, under LUA_VERSION; ends with "slow: N passed, N failed".
test-slow: deps build
	@LUA="$(LUA)" LUA_VERSION="$(LUA_VERSION)" SUMMARY_LABEL=slow sh spec/run --tags=slow

# Succeeds when the interpreter and the headers of LUA_VERSION are there.
have-lua:
	@command -v $(LUA) >/dev/null 2>&1 && pkg-config --exists $(LUA_PC) 2>/dev/null \
		&& printf '#include <lua.h>\n#include <lauxlib.h>\n' \
		| $(CC) $$(pkg-config --cflags $(LUA_PC)) -E -x c - >/dev/null 2>&1

demo: deps build
	@LUA="$(LUA)" LUA_VERSION="$(LUA_VERSION)" sh bin/demo

# luarocks test looks for busted among the rocks; Debian's is not one, so
# spec/luarocks-busted makes it one in a tree of build/.
LUAROCKS_TREE := build/luarocks-$(LUA_VERSION)
.PHONY: luarocks-test
luarocks-test: deps build
	@sh spec/luarocks-busted $(LUA_VERSION) $(LUAROCKS_TREE)
	LUA_VERSION=$(LUA_VERSION) luarocks --lua-version=$(LUA_VERSION) --project-tree=$(LUAROCKS_TREE) \
		test rockspecs/bitrix24-scm-1.rockspec

# LDoc runs under Lua 5.1: Debian's lua-markdown, which renders the doc
# comments' Markdown, is a 5.1 module.
DOC_DEBS := lua5.1 lua-ldoc lua-markdown
LDOC := lua5.1 /usr/bin/ldoc

.PHONY: doc doc-check doc-deps

doc-deps:
	$(call apt_install,$(DOC_DEBS))

doc: doc-deps
	$(LDOC) --fatalwarnings .

doc-check: doc-deps
	@$(LUA) spec/doc-check.lua "$(LDOC)"

clean:
	rm -rf build

# Benchmarks (not part of make test; see bench/run.lua and bench/RESULTS.md)
#
#   make bench                this client side by side with libcurl in C, wrk,
#                             luasocket, Python requests, curl, its previous
#                             commit (BENCH_BASE) and two npm clients; one table,
#                             also written to bench/RESULTS.md (committed;
#                             under 10 minutes)
#   make bench-smoke          every row with small counts (about a minute) for CI;
#                             fails only when a benchmark fails to run
#   make bench-deps           make deps, plus wrk, python3-requests, lua-socket
# Targets are reported in the table, never asserted.

BENCH_DEBS := wrk python3-requests lua-socket
BENCH_LOOP := build/bench/curl_loop

.PHONY: bench bench-smoke bench-deps bench-build

bench-deps: deps
	$(call apt_install,$(BENCH_DEBS))

$(BENCH_LOOP): bench/curl_loop.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARNINGS) $(CURL_CFLAGS) $< -o $@ $(CURL_LIBS)

# The core for LUA_VERSION (the client measured) and for LuaJIT (nginx's).
bench-build: build $(BENCH_LOOP)
	@$(MAKE) -s --no-print-directory build LUA_VERSION=luajit

bench: bench-deps bench-build
	@LUA_VERSION="$(LUA_VERSION)" LUA="$(LUA)" $(LUA) bench/run.lua

bench-smoke: bench-deps bench-build
	@LUA_VERSION="$(LUA_VERSION)" LUA="$(LUA)" $(LUA) bench/run.lua --smoke

# Robustness: lint, sanitizers, valgrind, fuzzing
#
#   make lint                 the core with -Werror under gcc and clang for every
#                             installed Lua, then cppcheck and clang-tidy (.clang-tidy)
#   make test-asan            the whole suite under Lua 5.4 with the core built with
#                             AddressSanitizer + UBSan (build/asan-5.4); fails on any report
#   make test-valgrind        a spec subset and spec/leakcheck.lua (10,000 calls, every
#                             failure kind) under valgrind; fails on any leak from our code
#   SPECS="spec/a_spec.lua"   with test-asan or test-valgrind: only those files
#   make fuzz FUZZ_SECONDS=N  builds the libFuzzer targets of fuzz/ and runs each N s
#                             (default 60); fails on any crash (see fuzz/README.md)
# Each ends with one line "<target>: N passed, N failed" (see spec/run-robust).

# clang with its sanitizer and libFuzzer runtimes, the analyzers, valgrind.
ROBUST_DEBS := clang libclang-rt-14-dev cppcheck clang-tidy valgrind

LINT_CCS := gcc clang
LINT_WARNINGS := $(WARNINGS) -Werror
CPPCHECK_FLAGS := --enable=warning,style,performance,portability --std=c99 --force \
	--error-exitcode=1 --quiet --inline-suppr --suppress=missingIncludeSystem
FUZZ_SECONDS ?= 60
ASAN_BUILD := build/asan-5.4
ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: robust-deps lint lint-cc lint-cppcheck lint-tidy test-asan build-asan test-valgrind fuzz

robust-deps: deps
	$(call apt_install,$(ROBUST_DEBS))

lint: robust-deps lint-cc lint-cppcheck lint-tidy
	@echo "lint: 3 passed, 0 failed"

lint-cc:
	@for v in $(LUA_VERSIONS); do \
		$(MAKE) -s --no-print-directory have-lua LUA_VERSION=$$v 2>/dev/null || { echo "lint: Lua $$v not installed, skipped"; continue; }; \
		pc=lua$$v; [ $$v = luajit ] && pc=luajit; \
		for cc in $(LINT_CCS); do \
			command -v $$cc >/dev/null || { echo "lint: $$cc not installed"; exit 1; }; \
			mkdir -p build/lint/$$cc-$$v; \
			echo "lint: $$cc, Lua $$v"; \
			$$cc -O2 -g $(LINT_WARNINGS) -fPIC -shared $$(pkg-config --cflags $$pc libcurl) \
				$(SRC) -o build/lint/$$cc-$$v/core.so $(CURL_LIBS) -lpthread || exit 1; \
		done; \
	done

# Both the 5.4 and the 5.1 headers: compat.h takes other paths under 5.1.
lint-cppcheck:
	cppcheck $(CPPCHECK_FLAGS) $$(pkg-config --cflags-only-I lua5.4 libcurl) src/
	cppcheck $(CPPCHECK_FLAGS) -ULUA_USER_H $$(pkg-config --cflags-only-I lua5.1 libcurl) src/

# (clang-tidy counts the warnings it hid in system headers on stderr: dropped.)
lint-tidy:
	@for v in 5.4 5.1; do \
		echo "clang-tidy $(SRC) (Lua $$v headers)"; \
		out=$$(clang-tidy --quiet $(SRC) -- $$(pkg-config --cflags lua$$v libcurl) -std=c99 2>&1); rc=$$?; \
		printf '%s\n' "$$out" | grep -v -E '^[0-9]+ warnings? generated\.$$'; \
		[ $$rc -eq 0 ] || exit $$rc; \
	done

$(ASAN_BUILD)/bitrix24/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) $(WARNINGS) -fPIC -shared $$(pkg-config --cflags lua5.4 libcurl) \
		$(SRC) -o $@ $(CURL_LIBS) -lpthread

# The interpreter that runs the suite: Lua 5.4 with the sanitizer runtime
# linked in (see spec/lua_host.c).
$(ASAN_BUILD)/lua: spec/lua_host.c
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) $(WARNINGS) $$(pkg-config --cflags lua5.4) $< -o $@ $$(pkg-config --libs lua5.4)

build-asan: $(ASAN_BUILD)/bitrix24/core.so $(ASAN_BUILD)/lua

# build/5.4 too: specs that start the CLI in a child process use it.
test-asan: robust-deps build-asan
	@$(MAKE) -s --no-print-directory build LUA_VERSION=5.4
	@ASAN_BUILD="$(ASAN_BUILD)" sh spec/run-robust asan

test-valgrind: robust-deps
	@$(MAKE) -s --no-print-directory build LUA_VERSION=5.4
	@sh spec/run-robust valgrind

fuzz: robust-deps
	@FUZZ_SECONDS="$(FUZZ_SECONDS)" sh fuzz/run
