# isboot — see README.md. Every target that needs system packages runs `make deps` first.
SHELL   := /bin/bash
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BUILD   := build
export ISBOOT_CACHE ?= $(HOME)/.cache/isboot
export CGO_ENABLED := 0
LDFLAGS := -s -w -X main.Version=$(VERSION)
# Test timeout for the whole suite (CI allows 90 minutes in all).
TEST_TIMEOUT ?= 75m

.PHONY: all isboot deps initramfs deb demo test test-quick test-unit bench clean

all: isboot

isboot:
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BUILD)/isboot ./cmd/isboot

deps:
	@bash internal/deps/deps.sh
	@$(GO) mod download

initramfs: deps isboot
	$(GO) run ./initramfs/cmd/mkinitramfs -isboot $(BUILD)/isboot -o $(BUILD)/isboot-initramfs.img

# Debian package: the binary, the initramfs-tools hook and boot script, the dracut
# module and the docs (docs/distro.md). Its version sorts by commit count.
DEB_VERSION ?= 0.0~git$(shell git rev-list --count HEAD 2>/dev/null || echo 0).$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)$(if $(findstring dirty,$(VERSION)),+dirty)
deb: isboot
	@bash initramfs/distro/debian/mkdeb.sh $(BUILD)/isboot '$(DEB_VERSION)' $(BUILD)

demo: deps isboot
	$(GO) run ./cmd/demo

# Unit tier only: no root, no packages, seconds.
test-unit:
	$(GO) test -short -count=1 ./...

# All tiers: unit, integration (root: tgtd, istgt, libnbd, netns) and VM (QEMU/TCG).
# CI=1 turns a missing tool or root (a skip elsewhere) into a failure.
# ISBOOT_LONG=1 adds the slow fault tests (60 s target freeze, 5 min at 256 MiB,
# iBFT target failover): about 15 more minutes. CI runs them all.
# The pure stages must stay portable (Linux-only code lives in _linux.go files).
PURE := ./ibft ./iscsi ./internal/blockdev ./internal/nbd ./internal/cmdline ./internal/status ./internal/bootplan

test: deps
	$(GO) vet ./...
	GOOS=darwin $(GO) vet $(PURE)
	$(GO) mod tidy -diff
	CI=1 ISBOOT_LONG=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Everything but the slow fault tests (about 8 minutes).
test-quick: deps
	CI=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./...

clean:
	rm -rf $(BUILD)
