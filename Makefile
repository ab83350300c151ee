# bitrix24: build, install, test and demo.
#
#   make                      build the C core for LUA_VERSION (default 5.4)
#   make install PREFIX=DIR   Lua files, core.so and the commands under DIR
#   make test                 install missing Debian packages, build, run the specs
#   make demo                 crm.lead.contact.items.get against the fake portal,
#                             or the portal in BITRIX24_WEBHOOK_URL when set

LUA_VERSION ?= 5.4
PREFIX ?= /usr/local

ifeq ($(LUA_VERSION),luajit)
LUA_PC := luajit
LUA_ABI := 5.1
LUA := luajit
LUA_DEB := luajit2 libluajit2-5.1-dev
else
LUA_PC := lua$(LUA_VERSION)
LUA_ABI := $(LUA_VERSION)
LUA := lua$(LUA_VERSION)
LUA_DEB := lua$(LUA_VERSION) liblua$(LUA_VERSION)-dev
endif

BUILD := build/$(LUA_VERSION)
CORE := $(BUILD)/bitrix24/core.so
SRC := $(wildcard src/*.c)
HDR := $(wildcard src/*.h)

CC ?= cc
CFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Wshadow
LUA_CFLAGS = $(shell pkg-config --cflags $(LUA_PC))
CURL_CFLAGS = $(shell pkg-config --cflags libcurl)
CURL_LIBS = $(shell pkg-config --libs libcurl)

# Debian packages the build, the specs and the demo need.
DEB_PACKAGES := make gcc libc6-dev pkg-config libcurl4-openssl-dev lua-cjson lua-socket luarocks procps \
	lua-busted nginx-light libnginx-mod-http-lua openssl curl $(LUA_DEB)

.PHONY: all build install test demo deps clean

all: build

build: $(CORE)

$(CORE): $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARNINGS) -fPIC -shared $(LUA_CFLAGS) $(CURL_CFLAGS) \
		$(SRC) -o $@ $(CURL_LIBS) -lpthread

install: build
	install -d $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/fake \
		$(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)/bitrix24 $(DESTDIR)$(PREFIX)/bin
	install -m 644 lua/bitrix24.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/
	install -m 644 lua/bitrix24/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/
	install -m 644 lua/bitrix24/fake/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_ABI)/bitrix24/fake/
	install -m 755 $(CORE) $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)/bitrix24/
	sed -e '1s|.*|#!/usr/bin/env $(LUA)|' \
	    -e 's|^local INSTALLED = nil$$|local INSTALLED = { prefix = "$(PREFIX)", abi = "$(LUA_ABI)" }|' \
	    bin/b24 > $(DESTDIR)$(PREFIX)/bin/b24
	chmod 755 $(DESTDIR)$(PREFIX)/bin/b24
	install -m 755 bin/b24-fake-portal $(DESTDIR)$(PREFIX)/bin/

# Installs what is missing, with sudo when not root; nothing when all is there.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: deps build
	LUA="$(LUA)" LUA_VERSION="$(LUA_VERSION)" sh spec/run

demo: deps build
	@LUA="$(LUA)" LUA_VERSION="$(LUA_VERSION)" sh bin/demo

clean:
	rm -rf build
