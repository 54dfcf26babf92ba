# mini_hypervisor: guests, the three versions, tests and benchmarks.
#
#   make           guests + all three versions; each binary lands in version_X/mini_hypervisor
#   make run-a     version A on the hello guest
#   make run-b     version B: two guests side by side
#   make run-c     version C: the file I/O story (shared file, copy-on-write, private files,
#                  isolation), the same screen every run
#   make test      every test: unit, <linux/kvm.h> layout, real guests under /dev/kvm, the
#                  guest image checks, identical shared files, and `make run-c` twice the same
#   make bench     benchmark table (see docs/BENCHMARKS.md)
#   make beside HV=PATH [VERSION=a|b|c] [TIMEOUT=10] [IGNORE=REGEX] [KEEP=1]
#                  the example guests of a version (default c) on our binary and on another
#                  hypervisor (the course's C solution, your own): one table of what differs;
#                  without HV=, how to use it and how to build the course's C to compare with
#   make diff-ab   what version B adds to A (diff -ru of src/ and tests/)
#   make diff-bc   what version C adds to B
#   make gdb       a short gdb session on a guest (see docs/GDB.md)
#   make lint      rustfmt (the workspace and the Rust guests) and clippy
#   make clean
#   make V=1 ...   show the full command lines
#   make -s ...    build without a word (errors and warnings still show)

CARGO ?= cargo
RELEASE := target/release

# What a build says (scripts/progress). With nothing to build, nothing: once built, `make
# run-c` shows its screen alone. With something to build, one line saying what and about how
# long, then a sign of life every few seconds (on a terminal, one status line rewritten every
# second; in a file, a plain line after every 5 s without output), and "built in N s"; not the
# compiler's lines, only its warnings and errors. V=1 shows every command and cargo's lines as
# well; make -s shows nothing but warnings and errors.
# The first build measured (make run-c from a fresh clone, 2 cores): guests 3.2 s (the five
# Rust guests 1.4 s of it); cargo build --release (three hypervisors, bench and beside, each a
# single LTO unit) 47 s, of which up to 18 s pass without a line from cargo while it links;
# after an edit of one version 17 s, of a file all three share 42 s. cargo test's debug build:
# 60 s.
SILENT := $(findstring s,$(firstword -$(MAKEFLAGS)))
quote = '$(subst ','\'',$(1))'
ifneq ($(SILENT),)
  Q := @
  CARGO_QUIET := -q
  progress =
else ifeq ($(V),1)
  Q :=
  CARGO_QUIET :=
  progress = scripts/progress -v $(call quote,$(1))
else
  Q := @
  CARGO_QUIET :=
  progress = scripts/progress $(call quote,$(1))
endif
SAY_GUESTS := Building the guest images in guest/ (a few seconds)
SAY_BUILD  := Building the three hypervisors with cargo: about 1 to 2 minutes the first time
SAY_TESTS  := Building the tests with cargo: about 1 to 2 minutes the first time

.PHONY: all guests build run-a run-b run-c demo-check test lint bench beside diff-ab diff-bc gdb clean

all: guests build

# A DEBUG=1 image of yours is kept as you built it (guest/Makefile, "The flags of each image").
guests:
	$(Q)$(call progress,$(SAY_GUESTS)) $(MAKE) --no-print-directory -C guest

build:
	$(Q)$(call progress,$(SAY_BUILD)) $(CARGO) build $(CARGO_QUIET) --release --workspace
	$(Q)cp $(RELEASE)/mini_hypervisor_a version_a/mini_hypervisor
	$(Q)cp $(RELEASE)/mini_hypervisor_b version_b/mini_hypervisor
	$(Q)cp $(RELEASE)/mini_hypervisor_c version_c/mini_hypervisor

run-a: all
	cd version_a && ./mini_hypervisor -m 4 -p 2 -g ../guest/guest.img

run-b: all
	cd version_b && ./mini_hypervisor -m 4 -p 2 -g ../guest/counter.img ../guest/counter.img

# The version C story, on one screen and the same every run: once built, the build says nothing
# (the first one says what it builds, on stderr); the two VMs run at the same time, and their
# output is then shown grouped by VM (neither depends on the other's timing: vm1 sees the
# original shared file and is refused vm0's private file whenever it runs); then the files
# they left.
DEMO_RUN := ./mini_hypervisor -q -m 4 -p 2 -g ../guest/cow.img ../guest/snoop.img \
            -f ../guest/shared.txt --files-dir demo_files
run-c:
	@$(MAKE) --no-print-directory all
	@rm -rf version_c/demo_files
	@echo "Version C: two VMs at once, sharing one host file, guest/shared.txt."
	@echo "  vm0 = cow.img    prints shared.txt, appends a line to it (so the hypervisor gives vm0"
	@echo "                   a private copy first: copy-on-write), creates a private notes.txt"
	@echo "  vm1 = snoop.img  prints shared.txt, then tries to open vm0's notes.txt: refused"
	@echo
	@echo '$$ cd version_c && $(DEMO_RUN)'
	@out=$$(mktemp); cd version_c && { $(DEMO_RUN) > $$out; status=$$?; }; \
	 echo "(its stdout, grouped by VM here: as they ran, the two VMs' lines interleaved)"; \
	 grep '^\[vm0\] ' $$out; grep '^\[vm1\] ' $$out; rm -f $$out; echo "exit status $$status"
	@echo
	@echo "Private files, under version_c/demo_files/ (vm1 wrote nothing, so it has no directory):"
	@cd version_c && for f in $$(find demo_files -type f | sort); do \
	   case $$f in */shared.txt) note="  (vm0's copy)";; *) note="  (new, vm0's alone)";; esac; \
	   echo "--- $$f$$note"; cat "$$f"; done
	@echo "--- guest/shared.txt  (the shared original: unchanged)"
	@cat guest/shared.txt

# `make run-c` must tell the same story every time: run it twice and compare.
# Skipped, as the KVM tests are, where /dev/kvm cannot be used.
demo-check: all
	@if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then echo "demo-check: SKIP: /dev/kvm is not usable here"; exit 0; fi; \
	out=$$(mktemp -d); \
	$(MAKE) -s --no-print-directory run-c > $$out/1 2>&1 && \
	$(MAKE) -s --no-print-directory run-c > $$out/2 2>&1 && \
	if cmp -s $$out/1 $$out/2; then echo "demo-check: make run-c printed the same $$(wc -l < $$out/1) lines twice"; \
	else diff $$out/1 $$out/2; echo "demo-check: make run-c differs between two runs"; rm -rf $$out; exit 1; fi; \
	rm -rf $$out

test: guests
	$(Q)$(call progress,$(SAY_TESTS)) $(CARGO) test $(CARGO_QUIET) --workspace --no-run
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory -C guest check
	scripts/check-same-files
	scripts/check-guest-flags
	scripts/check-build-progress
	$(MAKE) --no-print-directory demo-check
	scripts/check-readme

# The Rust guests are no cargo project (guest/README.md): cargo fmt --all does not see them.
RUSTFMT ?= rustfmt
lint:
	$(CARGO) fmt --all -- --check
	$(RUSTFMT) --check --edition 2024 guest/rust/hv/*.rs guest/rs_*.rs
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# make bench OTHER="path/to/another/hypervisor ..." sets other binaries beside ours.
bench: all
	$(CARGO) run -q --release -p bench -- $(foreach o,$(OTHER),--other $(o))

# make beside HV=PATH: see the header, and `make beside` alone. The pattern comes to the recipe
# through the environment (make exports command-line variables), so that no quote in it can
# break the shell line; as everywhere in make, a `$` in it is written `$$`. The table's exit
# status 1 (some row differs) is its answer, not a failure of make; 2 (trouble) still fails.
VERSION ?= c
TIMEOUT ?= 10
beside: all
	$(Q)if [ -z "$(HV)" ]; then $(RELEASE)/beside --help; exit 0; fi; \
	set -- --timeout "$(TIMEOUT)"; \
	if [ -n "$$IGNORE" ]; then set -- "$$@" --ignore "$$IGNORE"; fi; \
	if [ "$(KEEP)" = 1 ]; then set -- "$$@" --keep; fi; \
	$(RELEASE)/beside "$$@" -- "$(VERSION)" "$(HV)"; status=$$?; [ $$status -le 1 ]

# What each version adds to the one before, as a patch (build outputs left out; a new file shows
# as added lines). diff exits 1 when it finds differences, which is the point here; 2 (trouble)
# still fails.
DIFF := diff -ruN -x mini_hypervisor -x '*_files' -x '*.out'
diff-ab:
	@$(DIFF) version_a/src version_b/src; s=$$?; \
	 $(DIFF) version_a/tests version_b/tests; t=$$?; [ $$s -le 1 ] && [ $$t -le 1 ]

diff-bc:
	@$(DIFF) version_b/src version_c/src; s=$$?; \
	 $(DIFF) version_b/tests version_c/tests; t=$$?; [ $$s -le 1 ] && [ $$t -le 1 ]

gdb: all
	scripts/gdb-demo

clean:
	$(CARGO) clean
	$(MAKE) -C guest clean
	rm -f version_a/mini_hypervisor version_b/mini_hypervisor version_c/mini_hypervisor
	rm -rf version_c/demo_files
